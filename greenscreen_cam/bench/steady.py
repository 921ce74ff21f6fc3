"""What the steady-state step changes, measured in a tracker benchmark run.

- :func:`steady_figures`: the steady-state frames' median against the official predictor's
  steady-state frames in the same run (``ratio_steady_vs_official``).
- :func:`count_frame_ops`: aten ops and host synchronisations per steady-state frame
  (:mod:`greenscreen_cam.track.opcount`), of the tracker under test and of the eager step.
- :func:`deviation`: mean / minimum mask IoU and the largest logit difference of the
  tracker under test (captured, bf16) against the eager float32 tracker on the same frames.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from greenscreen_cam.bench.common import median_ms


def steady_figures(totals: list[float], official_times: list[float] | None, full_at: int) -> dict[str, Any]:
    """Medians over the frames whose bank is full (frame index ``>= full_at``; both lists start at frame 1).

    Returns:
        ``steady_ms`` (greencam), ``steady_frames``, and with ``official_times``:
        ``official_steady_ms`` and ``ratio_steady_vs_official``.
    """
    ours = totals[full_at - 1 :]
    out: dict[str, Any] = {"steady_ms": median_ms(ours) if ours else None, "steady_frames": len(ours)}
    if official_times is not None:
        theirs = official_times[full_at - 1 :]
        out["official_steady_ms"] = median_ms(theirs) if theirs else None
        if ours and theirs and out["official_steady_ms"]:
            out["ratio_steady_vs_official"] = out["steady_ms"] / out["official_steady_ms"]
    return out


def count_frame_ops(tracker: Any, imgs: list[np.ndarray], prompt: Any, frames: int = 2) -> dict[str, Any]:
    """Ops and host syncs per frame once the bank is full: the tracker under test and the eager step.

    A frame is what the pipeline asks of the tracker: ``track`` (preprocess, image encoder, step)
    and reading the mask and visibility back. The tracker is re-prompted on ``imgs[0]`` and
    filled from ``imgs`` (looped) first; afterwards it holds that stream.
    """
    from greenscreen_cam.track.opcount import count_step
    from greenscreen_cam.track.segmenter import StreamingTracker
    from greenscreen_cam.track.steady import bank_full_at

    full_at = bank_full_at(tracker.model)
    eager = StreamingTracker(tracker.model, autocast=tracker.autocast, steady=False)
    out: dict[str, Any] = {}
    for name, t in (("", tracker), ("eager_", eager)):
        t.prompt(imgs[0], prompt)
        for i in range(1, full_at):
            t.track(imgs[i % len(imgs)])
        frame = imgs[full_at % len(imgs)]

        def one(t: Any = t, frame: np.ndarray = frame) -> None:
            result = t.track(frame)
            result.low_res_numpy()
            _ = result.visible

        counts = count_step(one, frames)
        out[f"{name}ops_per_frame"] = counts["ops_per_frame"]
        out[f"{name}host_syncs_per_frame"] = counts["host_syncs_per_frame"]
        out[f"{name}sync_ops"] = counts["sync_ops"]
    out["steady_active"] = bool(getattr(tracker, "steady_active", False))
    out["captured"] = bool(getattr(tracker, "captured", False))
    return out


def deviation(tracker: Any, imgs: list[np.ndarray], prompt: Any, logits: list[Any]) -> dict[str, Any] | None:
    """The tracker's masks against the eager float32 tracker's on the same frames; None when they are the same path.

    Args:
        logits: The tracker's low-resolution logits per frame of ``imgs`` (frame 0 prompted).

    Returns:
        ``mean_iou``, ``min_iou`` (masks ``logits > 0``), ``max_logit_diff``, ``path`` (what was compared).
    """
    import torch

    from greenscreen_cam.track.segmenter import StreamingTracker

    captured = bool(getattr(tracker, "captured", False))
    engine = getattr(tracker, "engine", None)
    if not captured and tracker.autocast is None and engine is None:
        return None  # eager float32 itself (the steady step is bit-exact there: tests/test_steady.py)
    reference = StreamingTracker(tracker.model, steady=False)
    ious, diffs = [], []
    for i, (img, ours) in enumerate(zip(imgs, logits, strict=True)):
        ref = (reference.prompt(img, prompt) if i == 0 else reference.track(img)).low_res_logits.float()
        a, b = ours.float().to(ref.device) > 0, ref > 0
        union = (a | b).sum().item()
        ious.append(1.0 if union == 0 else (a & b).sum().item() / union)
        diffs.append((ours.float().to(ref.device) - ref).abs().max().item())
    path = ("captured " if captured else "") + ("bf16" if tracker.autocast is not None else "float32")
    if engine is not None:
        path = f"openvino {engine.config.get('INFERENCE_PRECISION_HINT', 'f32')}"
    return {
        "path": path,
        "mean_iou": float(np.mean(ious)),
        "min_iou": float(np.min(ious)),
        "max_logit_diff": float(max(diffs)),
        "frames": len(ious),
        "torch": torch.__version__,
    }
