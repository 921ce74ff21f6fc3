"""Core types every room shares: a captured frame, a tracker's answer, a newest-item slot, percentiles.

Only the standard library and numpy here, so the wire format, the scheduler, the sources and the
server can all import it without pulling in OpenCV, torch or aiortc.

Frames inside greencam are ``(H, W, 3)`` uint8 **RGB**; conversion happens only at the edges.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass
class Frame:
    """One captured frame.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        index: Position in the source (counts dropped frames too).
        timestamp: ``time.perf_counter()`` when it was captured.
    """

    image: np.ndarray
    index: int
    timestamp: float = field(default_factory=time.perf_counter)


@dataclass
class MaskResult:
    """The tracker's answer for one frame.

    Attributes:
        frame_index: :attr:`Frame.index` of the tracked frame.
        timestamp: :attr:`Frame.timestamp` of the tracked frame.
        logits: ``(h, w)`` float32 mask logits at the tracker's (low) resolution, ``> 0`` = subject
            (``(n, h, w)`` for ``n`` subjects, one plane each: the key upsamples each before they
            meet); None when the frame has no mask (no subject selected yet, or none found).
        visible: The tracker's verdict that the subject is in the frame.
        object_score: The tracker's visibility logit (``> 0`` = visible).
        selected: False when the frame was not tracked at all because no subject is selected yet:
            it says nothing about the subject's visibility.
    """

    frame_index: int
    timestamp: float
    logits: np.ndarray | None
    visible: bool = True
    object_score: float = 0.0
    selected: bool = True


class LatestSlot(Generic[T]):
    """A one-item, thread-safe mailbox that keeps only the newest item.

    :meth:`put` replaces an item nobody took (counted in :attr:`dropped`); :meth:`take` waits for an
    item not taken before. This is the "never queue" rule in one place: a slow consumer sees the
    newest item, never a backlog.

    Example:
        >>> slot: LatestSlot[int] = LatestSlot()
        >>> slot.put(1); slot.put(2)
        False
        True
        >>> slot.take(timeout=0), slot.dropped
        (2, 1)
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._full = False
        self._closed = False
        self.dropped = 0
        self.put_count = 0

    def put(self, item: T) -> bool:
        """Store ``item``; True when it replaced one that was never taken (that one is dropped)."""
        with self._cond:
            replaced = self._full
            if replaced:
                self.dropped += 1
            self._item = item
            self._full = True
            self.put_count += 1
            self._cond.notify_all()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item not taken before; None on timeout or once closed and empty."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._full and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def take_nowait(self) -> T | None:
        """The pending item, or None at once."""
        return self.take(timeout=0)

    def peek(self) -> T | None:
        """The pending item without taking it (None when empty)."""
        with self._cond:
            return self._item if self._full else None

    @property
    def pending(self) -> bool:
        with self._cond:
            return self._full

    def clear(self) -> T | None:
        """Drop the pending item without counting it; returns it."""
        with self._cond:
            item, self._item, self._full = self._item, None, False
            return item if item is not None else None

    def close(self) -> None:
        """Wake every waiter; :meth:`take` returns what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` by linear interpolation (numpy's default); 0.0 when empty.

    The one definition behind every p50/p95 greencam prints: the status line, the summary, the
    scheduler and the benchmarks.

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
        2.5
    """
    data = np.asarray(list(values), dtype=np.float64)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return 0.0
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    return float(np.percentile(data, q))
