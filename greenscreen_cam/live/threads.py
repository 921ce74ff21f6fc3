"""Thread policy per run mode: how torch's OpenMP pool and OpenCV share the CPU.

SAM 2 on a CPU runs on torch's OpenMP pool (libgomp in the Linux wheels), while
decoding, compositing and encoding run on OpenCV and plain Python threads. What
is best differs by mode (measured on a 2-core CPU, see docs/profile.md):

- ``offline`` (a file rendered as fast as possible): libgomp's own default (spin
  briefly after each parallel region, then sleep) and torch's and OpenCV's own
  thread counts. ``PASSIVE`` (workers sleep at once) cost 8-11 % here; ``ACTIVE``
  (workers spin for ever) is as fast on an idle machine but 1.5-3.6x slower as
  soon as anything else runs on the CPU (measured on the shared 2-core VM: 17.7
  and 43.9 s instead of 12 s for 40 frames), so nothing is forced.
- ``live`` (a camera, or a file paced like one): capture and compositing run at
  the camera's rate beside the tracker thread. torch keeps one core free for
  them (intra-op threads = cores - 1): an OpenMP team whose every parallel region
  waits for a worker preempted by compositing runs at the speed of its slowest
  core. Workers sleep as soon as an op ends (``PASSIVE``) and OpenCV keeps to one
  thread. Measured on 2 cores (docs/profile.md): tracker 2.97 fps in the loop with
  1 torch thread, the same as that tracker alone, against 2.87 fps in the loop with
  2 threads (4.4 fps alone).

libgomp reads its environment once, when torch is first imported: call
:func:`configure_threads` before anything imports torch (for ``greencam start``:
once the source is known, before the model is loaded). Values the user set in
the environment are kept.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

Mode = Literal["offline", "live"]

_OMP_WAIT: dict[str, str | None] = {"offline": None, "live": "PASSIVE"}
_CV2_THREADS: dict[str, int | None] = {"offline": None, "live": 1}


def live_torch_threads(cores: int | None = None) -> int:
    """torch intra-op threads for the live mode: every core but one (at least one)."""
    return max(1, (cores or os.cpu_count() or 1) - 1)


def configure_threads(
    mode: Mode,
    *,
    torch_threads: int | None = None,
    environ: MutableMapping[str, str] | None = None,
) -> dict[str, Any]:
    """Apply the thread policy for ``mode`` and return what was applied.

    Args:
        mode: ``"offline"`` (render a file as fast as possible) or ``"live"``
            (a camera or a paced file: capture and output run beside the tracker).
        torch_threads: torch intra-op threads; None = one per core offline,
            :func:`live_torch_threads` live (a user's ``OMP_NUM_THREADS`` is kept).
        environ: The environment to change (``os.environ`` by default; tests pass a dict).

    Returns:
        ``{"mode", "omp_wait_policy", "omp_policy_effective", "opencv_threads", "torch_threads"}``
        (``omp_wait_policy`` None = libgomp's default);
        ``omp_policy_effective`` is False when torch was imported before this call, so the
        OpenMP pool had already read its settings (the policy then applies from the next run).

    Raises:
        ValueError: ``mode`` is neither ``"offline"`` nor ``"live"``.
    """
    if mode not in _OMP_WAIT:
        raise ValueError(f"thread mode must be 'offline' or 'live', got {mode!r}")
    env = os.environ if environ is None else environ
    torch_loaded = "torch" in sys.modules
    wanted = _OMP_WAIT[mode]
    policy = env.setdefault("OMP_WAIT_POLICY", wanted) if wanted is not None else env.get("OMP_WAIT_POLICY")
    if torch_threads is None and mode == "live" and "OMP_NUM_THREADS" not in env:
        torch_threads = live_torch_threads()
    if torch_threads is not None and not torch_loaded:
        env["OMP_NUM_THREADS"] = str(max(1, int(torch_threads)))

    import cv2

    cv2_threads = _CV2_THREADS[mode]
    if cv2_threads is not None:
        cv2.setNumThreads(cv2_threads)
    else:
        cv2_threads = cv2.getNumThreads()
    applied_torch: int | None = None
    if torch_threads is not None and torch_loaded:
        torch = sys.modules["torch"]
        torch.set_num_threads(max(1, int(torch_threads)))
        applied_torch = torch.get_num_threads()
    elif torch_loaded:
        applied_torch = sys.modules["torch"].get_num_threads()
    elif torch_threads is not None:
        applied_torch = max(1, int(torch_threads))
    return {
        "mode": mode,
        "omp_wait_policy": policy,
        "omp_policy_effective": not torch_loaded,
        "opencv_threads": cv2_threads,
        "torch_threads": applied_torch,
    }
