"""Benchmarks behind ``greencam bench`` (medians, never single timings).

- :mod:`.common`: frames to measure on, the tracker under test, machine facts.
- :mod:`.tracker`: the tracker against the official predictor, the whole pipeline, the live loop, a soak run.
- :mod:`.compositor`: the compositor's paths alone.
- :mod:`.process`: whole ``greencam start`` processes against the official predictor's script.
- :mod:`.idle`: a camera left on all day: CPU with and without a viewer, resume latency, cost per subject.
- :mod:`.serve`: ``greencam serve`` with N camera clients, its worker step alone, sessions per frame rate.
- :mod:`.suite`: everything ``make bench-gpu`` records, in one go.
- :mod:`.report`: Rich tables and markdown.

``greencam bench`` is the one entry point; ``python -m greenscreen_cam.bench suite|process|serve|capacity``
is a thin alias of it (:mod:`.__main__`).
"""

from greenscreen_cam.bench.common import load_frames, synthetic_frames
from greenscreen_cam.bench.compositor import bench_compositor, compositor_overlap
from greenscreen_cam.bench.idle import bench_idle, bench_subjects
from greenscreen_cam.bench.process import bench_process
from greenscreen_cam.bench.report import print_result, suite_markdown
from greenscreen_cam.bench.serve import bench_capacity, bench_link, bench_serve_step, bench_step, sessions_at_fps
from greenscreen_cam.bench.suite import SUITE_MODELS, bench_suite
from greenscreen_cam.bench.tracker import bench_live, bench_official, bench_soak, bench_tracker

__all__ = [
    "SUITE_MODELS",
    "bench_capacity",
    "bench_compositor",
    "bench_idle",
    "bench_link",
    "bench_live",
    "bench_official",
    "bench_process",
    "bench_soak",
    "bench_step",
    "bench_subjects",
    "bench_suite",
    "bench_tracker",
    "compositor_overlap",
    "load_frames",
    "print_result",
    "bench_serve_step",
    "sessions_at_fps",
    "suite_markdown",
    "synthetic_frames",
]
