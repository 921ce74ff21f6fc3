"""The SAM 2 tracker backend: one sam2 model per process, one :class:`StreamingTracker` per session.

Registered in :data:`greenscreen_cam.track.tracking._BUILTIN` as ``sam2`` for models of the ``sam2``
family; :func:`greenscreen_cam.track.tracking.load_model` calls :func:`load`.
"""

from __future__ import annotations

import os
from typing import Any

from greenscreen_cam.track.tracking import LoadedModel, LoadOptions, ModelChoice


def load(choice: ModelChoice, options: LoadOptions) -> LoadedModel:
    """Load SAM 2 as ``choice`` says (slow), optionally compiling the image encoder."""
    from greenscreen_cam.track import models

    net = models.load_model(choice.spec, choice.checkpoint, device=choice.device, resolution=choice.resolution)
    if options.compile_mode:
        import torch

        from greenscreen_cam.paths import user_cache_dir

        # Inductor's compiled kernels go to the user's cache folder, so a second start reuses them.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(user_cache_dir() / "inductor"))
        mode = options.compile_mode if isinstance(options.compile_mode, str) else None
        net.image_encoder.forward = torch.compile(net.image_encoder.forward, dynamic=False, mode=mode)
    engine = None
    if choice.engine == "openvino":
        from greenscreen_cam.track.openvino_engine import DEFAULT_CONFIG, OpenVINOEngine

        engine = OpenVINOEngine(
            net,
            name=choice.spec.name,
            checkpoint=choice.checkpoint,
            device=choice.openvino_device,
            notify=options.notify,
            config={**DEFAULT_CONFIG, "INFERENCE_PRECISION_HINT": choice.openvino_precision},
        )
        from greenscreen_cam.track.engines import register_engine

        register_engine(net, engine)
    return wrap(net, choice.spec.name, choice.device, choice.resolution, captured=choice.captured, engine=engine)


def wrap(
    net: Any, name: str, device: str, resolution: int, *, captured: bool = False, engine: Any = None
) -> LoadedModel:
    """A :class:`LoadedModel` over an already loaded sam2 ``SAM2Base`` (tests, a host that loaded it).

    With ``captured`` (``--compile on`` on CUDA) each new tracker captures its steady-state step as a
    CUDA graph when it is made, before the pipeline starts, never on a live frame. With ``engine`` (an
    :class:`~greenscreen_cam.track.openvino_engine.OpenVINOEngine`) every tracker shares its compiled graphs.
    """
    from greenscreen_cam.track import models
    from greenscreen_cam.track.segmenter import StreamingTracker

    autocast = models.autocast_dtype(device)

    def make_tracker(profile: bool) -> StreamingTracker:
        tracker = StreamingTracker(net, autocast=autocast, profile=profile, captured=captured, engine=engine)
        if captured:
            tracker.prepare()
        return tracker

    return LoadedModel("sam2", name, device, resolution, net, resolution // 4, make_tracker, engine)
