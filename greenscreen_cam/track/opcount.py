"""Count what one tracker step dispatches: aten ops and host synchronisations, on any device.

A ``TorchDispatchMode`` sees every aten op that reaches a kernel (after autograd and
autocast), so its count is the number of kernels the eager step asks for. On a GPU
each one is a launch; on the CPU the same count measures dispatcher overhead. Ops
inside a replayed CUDA graph are not dispatched, so a captured step counts only
what runs around the replay.

A host synchronisation is an op that makes the host wait for the device's result:

- ``aten._local_scalar_dense`` (``.item()``, ``float(t)``, ``bool(t)``, ``if t:``);
- a copy from a non-CPU tensor into a CPU tensor (``.cpu()``, ``.to("cpu")``, ``.numpy()`` of it);
- ops whose output shape depends on the values (``nonzero``, ``masked_select``, ``unique`` ...).

On the CPU these are counted all the same (a ``.item()`` on a CPU tensor would wait on a GPU),
except the device-to-host copy, which a CPU run does not make; so the steady-state step counts 0
on the CPU and 1 (its packed mask) on CUDA.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpCounter", "count_step"]

_VALUE_DEPENDENT = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::nonzero_static",
    "aten::masked_select",
    "aten::unique",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_consecutive",
    "aten::unique_dim",
    "aten::repeat_interleave",  # with a tensor of repeats
    "aten::is_nonzero",
    "aten::equal",
}


def _device_of(value: Any) -> torch.device | None:
    return value.device if isinstance(value, torch.Tensor) else None


class OpCounter(TorchDispatchMode):
    """Counts aten ops and host syncs while active (``with OpCounter() as c: ...``).

    Attributes:
        ops: Number of aten ops dispatched.
        syncs: Number of host synchronisations (see the module docstring).
        by_op: Ops per name; ``sync_ops`` the syncs per name.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.syncs = 0
        self.by_op: Counter[str] = Counter()
        self.sync_ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        # torch's OpOverload._schema: the schema name (aten::op.overload) torch dispatch gives no public getter for
        name = func._schema.name
        self.ops += 1
        self.by_op[name] += 1
        sync = False
        if name in _VALUE_DEPENDENT:
            # repeat_interleave with an int repeat count does not look at values
            sync = not (
                name == "aten::repeat_interleave" and not isinstance(args[1] if len(args) > 1 else None, torch.Tensor)
            )
        elif name in ("aten::copy_", "aten::_copy_from"):
            dst, src = (args[0], args[1]) if name == "aten::copy_" else (args[1], args[0])
            sync = _device_of(dst) == torch.device("cpu") and _device_of(src) not in (None, torch.device("cpu"))
        elif name in ("aten::_to_copy", "aten::to"):
            target = kwargs.get("device")
            src = _device_of(args[0]) if args else None
            sync = target is not None and torch.device(target).type == "cpu" and src is not None and src.type != "cpu"
        if sync:
            self.syncs += 1
            self.sync_ops[name] += 1
        return func(*args, **kwargs)


def count_step(step: Callable[[], Any], frames: int = 3) -> dict[str, Any]:
    """Run ``step`` ``frames`` times under an :class:`OpCounter`; per-frame means and the busiest ops.

    Returns:
        ``ops_per_frame``, ``host_syncs_per_frame`` (floats), ``sync_ops`` (name -> count per
        frame) and ``top_ops`` (the ten most dispatched ops, count per frame).
    """
    with OpCounter() as counter:
        for _ in range(frames):
            step()
    return {
        "ops_per_frame": counter.ops / frames,
        "host_syncs_per_frame": counter.syncs / frames,
        "sync_ops": {k: v / frames for k, v in counter.sync_ops.items()},
        "top_ops": {k: v / frames for k, v in counter.by_op.most_common(10)},
    }
