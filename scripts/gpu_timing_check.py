"""Tracker vs official predictor without per-stage synchronisation, and the compositor's stream overlap.

Run on a CUDA machine from the repository root:

    python scripts/gpu_timing_check.py CLIP.mp4 [--frames 60] [--resolutions 512,1024]

``greencam bench`` times the tracker with per-stage CUDA synchronisation (to report stages);
this script times whole frames the way the official ``propagate_in_video`` runs (no stage
syncs; one synchronise per frame), on the same preprocessed frames, and then measures whether
the torch compositor waits for other GPU work (``bench.compositor_overlap``). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import numpy as np
    import torch

    from greenscreen_cam import bench
    from greenscreen_cam.track import models
    from greenscreen_cam.track.prompt import Prompt, default_box
    from greenscreen_cam.track.segmenter import StreamingTracker

    ap = argparse.ArgumentParser()
    ap.add_argument("clip")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--resolutions", default="512,1024")
    args = ap.parse_args()
    frames = bench.load_frames(args.clip, args.frames)
    h, w = frames[0].shape[:2]
    box = default_box(w, h)
    out: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "frames": len(frames)}
    spec = models.get_spec("tiny")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = models.save_random_checkpoint(spec, Path(tmp) / spec.filename)
        for res in (int(r) for r in args.resolutions.split(",")):
            net = models.load_model(spec, ckpt, device="cuda", resolution=res)
            tracker = StreamingTracker(net, autocast=torch.bfloat16)
            images = [tracker.preprocess(f) for f in frames]  # both sides get preprocessed frames
            times = []
            for rep in range(2):  # first pass warms up kernels and the allocator
                torch.cuda.synchronize()
                tracker.step(images[0], (h, w), Prompt(box=box))
                for img in images[1:]:
                    start = time.perf_counter()
                    tracker.step(img, (h, w), None)
                    torch.cuda.synchronize()
                    if rep:
                        times.append((time.perf_counter() - start) * 1000.0)
            folder = Path(tmp) / f"f{res}"
            folder.mkdir()
            import cv2

            for i, f in enumerate(frames):
                cv2.imwrite(str(folder / f"{i:05d}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
            ref = bench.bench_official(spec, ckpt, "cuda", res, folder, box, len(frames))
            ours = float(np.median(times))
            out[f"tiny@{res}"] = {
                "greencam_ms_per_frame": ours,
                "greencam_fps": 1000.0 / ours,
                "official_ms_per_frame": ref["propagate_ms"],
                "ratio_vs_official": ours / ref["propagate_ms"],
            }
            del tracker, net
            torch.cuda.empty_cache()
        yy, xx = np.mgrid[0:64, 0:64]
        out["compositor_overlap"] = bench.compositor_overlap("cuda", frames[0], (yy, xx))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
