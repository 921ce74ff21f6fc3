"""The steady-state figures of a tracker benchmark: medians over full-bank frames and how they are printed."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from greenscreen_cam.bench.report import print_steady, suite_markdown
from greenscreen_cam.bench.steady import steady_figures


def test_steady_figures_take_only_the_frames_with_a_full_bank():
    # frames 1..20; the bank is full from frame 16: the last 5 entries
    ours = [1.0] * 15 + [10.0, 11.0, 12.0, 13.0, 14.0]
    theirs = [100.0] * 15 + [20.0] * 5
    got = steady_figures(ours, theirs, full_at=16)
    assert got["steady_frames"] == 5 and got["steady_ms"] == 12.0
    assert got["official_steady_ms"] == 20.0 and got["ratio_steady_vs_official"] == pytest.approx(0.6)


def test_steady_figures_without_steady_frames_or_reference():
    assert steady_figures([1.0, 2.0], None, full_at=16) == {"steady_ms": None, "steady_frames": 0}
    got = steady_figures([1.0] * 20, None, full_at=16)
    assert got["steady_ms"] == 1.0 and "ratio_steady_vs_official" not in got


def test_print_steady_reports_ops_syncs_vos_and_deviation():
    result = {
        "steady_frames": 8,
        "steady_ms": 150.0,
        "official_steady_ms": 200.0,
        "ratio_steady_vs_official": 0.75,
        "ops_per_frame": 900.0,
        "host_syncs_per_frame": 1.0,
        "eager_ops_per_frame": 1200.0,
        "eager_host_syncs_per_frame": 2.0,
        "official_vos_ms_per_frame": 10.0,
        "ratio_vs_official_vos": 0.8,
        "ratio_steady_vs_official_vos": 0.7,
        "deviation_vs_eager_fp32": {
            "path": "captured bf16",
            "frames": 60,
            "mean_iou": 0.9991,
            "min_iou": 0.98,
            "max_logit_diff": 0.5,
        },
    }
    buf = io.StringIO()
    print_steady(result, Console(file=buf, width=300))
    text = buf.getvalue()
    assert "ratio 0.750" in text and "900 aten ops, 1.0 host syncs" in text and "1200 ops, 2.0 syncs" in text
    assert "VOS-optimized predictor: 10.0 ms/frame -> ratio 0.800 (steady state 0.700)" in text
    assert "captured bf16 vs eager float32 over 60 frames: mean IoU 0.9991, min IoU 0.9800" in text


def test_suite_table_has_the_steady_columns():
    row = {
        "label": "tiny@1024 graph",
        "stages_ms": dict.fromkeys(("image_encoder", "memory_attention", "mask_decoder", "memory_encoder"), 1.0),
        "total_ms": 10.0,
        "steady_ms": 8.0,
        "ratio_steady_vs_official_vos": 0.9,
        "ops_per_frame": 300.0,
        "host_syncs_per_frame": 1.0,
        "deviation_vs_eager_fp32": {"mean_iou": 0.999, "min_iou": 0.99},
    }
    result = {
        "versions": {
            "gpu": "H200",
            "torch": "x",
            "cuda": "y",
            "cudnn": "z",
            "sam2": "1.1.0",
            "opencv": "4",
            "python": "3.11",
        },
        "machine": {},
        "device": "cuda",
        "date_utc": "now",
        "small": False,
        "tracker": [row],
        "live": [],
        "e2e": [],
        "compositor": None,
        "serve_step": [],
        "skipped": [],
        "errors": [],
        "frame_size": "1280x720",
    }
    row["frame_size"] = "1280x720"
    table = suite_markdown(result)
    assert "| tiny@1024 graph | 10.00 |" in table
    assert "| 8.00 | – (0.900) | 300 / 1.0 | 0.9990 / 0.9900 |" in table
