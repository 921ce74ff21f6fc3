"""The SAM 2 tracker backend: one sam2 model per process, one :class:`StreamingTracker` per session.

Registered in :data:`greenscreen_cam.tracking._BUILTIN` as ``sam2`` for models of the ``sam2``
family; :func:`greenscreen_cam.tracking.load_model` calls :func:`load`.
"""

from __future__ import annotations

from typing import Any

from greenscreen_cam.tracking import LoadedModel, LoadOptions, ModelChoice


def load(choice: ModelChoice, options: LoadOptions) -> LoadedModel:
    """Load SAM 2 as ``choice`` says (slow), optionally compiling the image encoder."""
    from greenscreen_cam import models

    net = models.load_model(choice.spec, choice.checkpoint, device=choice.device, resolution=choice.resolution)
    if options.compile_mode:
        import torch

        mode = options.compile_mode if isinstance(options.compile_mode, str) else None
        net.image_encoder.forward = torch.compile(net.image_encoder.forward, dynamic=False, mode=mode)
    return wrap(net, choice.spec.name, choice.device, choice.resolution)


def wrap(net: Any, name: str, device: str, resolution: int) -> LoadedModel:
    """A :class:`LoadedModel` over an already loaded sam2 ``SAM2Base`` (tests, a host that loaded it)."""
    from greenscreen_cam import models
    from greenscreen_cam.segmenter import StreamingTracker

    autocast = models.autocast_dtype(device)

    def make_tracker(profile: bool) -> StreamingTracker:
        return StreamingTracker(net, autocast=autocast, profile=profile)

    return LoadedModel("sam2", name, device, resolution, net, resolution // 4, make_tracker)
