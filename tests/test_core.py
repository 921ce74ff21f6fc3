"""The shared core types: the newest-item slot and the one percentile function."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from greenscreen_cam.core import LatestSlot, percentile


def test_slot_keeps_the_newest_and_counts_what_it_replaced() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert slot.take(timeout=0) is None
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.peek() == 3
    assert slot.take(timeout=0) == 3
    assert slot.take(timeout=0) is None
    assert (slot.dropped, slot.put_count) == (2, 3)


def test_slot_wakes_a_waiter_and_close_releases_it() -> None:
    slot: LatestSlot[str] = LatestSlot()
    got: list[str | None] = []
    waiter = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    waiter.start()
    slot.put("frame")
    waiter.join(5)
    assert got == ["frame"]
    waiter = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    waiter.start()
    slot.close()
    waiter.join(5)
    assert not waiter.is_alive() and got == ["frame", None]


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 95, 0.0),
        ([5.0], 95, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0, float("nan")], 50, 2.5),
        (list(range(101)), 95, 95.0),
    ],
)
def test_percentile_table(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_matches_numpy_and_refuses_bad_q() -> None:
    data = np.random.default_rng(0).normal(size=37)
    assert percentile(data, 95) == pytest.approx(float(np.percentile(data, 95)))
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile([1.0], 101)
