"""Which engine runs the SAM 2 step: torch (exact, every device) or OpenVINO (fast on a CPU).

- ``torch``: sam2's own modules in PyTorch; bit-exact with the official ``SAM2VideoPredictor``.
- ``openvino``: the image encoder and the fixed-shape steady-state step (memory attention, mask
  decoder, memory encoder) converted once by OpenVINO and compiled for ``--openvino-device``
  (see :mod:`greenscreen_cam.track.openvino_engine`); torch device ``cpu`` only.
- ``auto``: OpenVINO when the tracker runs on the CPU and OpenVINO is installed, torch elsewhere
  (CUDA, MPS); ``$GREENCAM_ENGINE`` (``torch`` / ``openvino``) overrides what ``auto`` picks.

Stdlib only: the CLI checks the choice before anything heavy is imported.
"""

from __future__ import annotations

import importlib.util
import os
import weakref
from typing import Any

from greenscreen_cam.config import ENGINES
from greenscreen_cam.errors import ConfigError, EngineError

__all__ = [
    "ENGINES",
    "OPENVINO_INSTALL",
    "engine_for",
    "openvino_installed",
    "register_engine",
    "resolve_engine",
]

ENGINE_ENV = "GREENCAM_ENGINE"
"""``GREENCAM_ENGINE=torch`` (or ``openvino``) decides what ``auto`` means: the test suite pins torch."""
OPENVINO_INSTALL = "python -m pip install openvino"
"""The install command named when OpenVINO is missing (``make install`` installs it too)."""


def openvino_installed() -> bool:
    """True when the ``openvino`` package can be imported (checked without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def resolve_engine(setting: str, device: str, *, installed: bool | None = None) -> str:
    """The engine (``torch`` or ``openvino``) that ``--engine setting`` means on torch ``device``.

    Args:
        setting: ``auto``, ``torch`` or ``openvino``.
        device: The resolved torch device (``cpu``, ``cuda:0``, ``mps``).
        installed: Whether OpenVINO is installed (None: look).

    Raises:
        ConfigError: an unknown setting, or ``openvino`` with a torch device other than the CPU.
        EngineError: ``openvino`` asked for and not installed (the message names the install command).

    Example:
        >>> resolve_engine("auto", "cuda:0")
        'torch'
        >>> resolve_engine("auto", "cpu", installed=False)
        'torch'
    """
    if setting not in ENGINES:
        raise ConfigError(f"--engine {setting!r} is not one of {', '.join(ENGINES)}")
    if setting == "auto" and os.environ.get(ENGINE_ENV, "").strip() in ("torch", "openvino"):
        setting = os.environ[ENGINE_ENV].strip()
    if setting == "torch":
        return "torch"
    on_cpu = device == "cpu"
    if setting == "openvino" and not on_cpu:
        raise ConfigError(
            f"--engine openvino runs the tracker on the CPU (this run uses {device}); use --device cpu or --engine torch"
        )
    have = openvino_installed() if installed is None else installed
    if setting == "openvino" and not have:
        raise EngineError(f"--engine openvino needs OpenVINO, which is not installed: {OPENVINO_INSTALL}")
    return "openvino" if on_cpu and have else "torch"


_ENGINES_BY_NET: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def register_engine(net: Any, engine: Any) -> None:
    """Remember ``engine`` as the compiled engine of the loaded model ``net`` (for hosts given only the net);
    None forgets it (the net steps in torch again)."""
    if engine is None:
        _ENGINES_BY_NET.pop(net, None)
        return
    _ENGINES_BY_NET[net] = engine


def engine_for(net: Any) -> Any:
    """The engine registered for ``net`` (``greencam serve``'s worker gets the net alone), or None: torch."""
    try:
        return _ENGINES_BY_NET.get(net)
    except TypeError:  # not weak-referenceable: never registered
        return None
