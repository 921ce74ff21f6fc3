"""Keep the greencam microphone's delay on the picture's added delay (``--audio-delay``).

:class:`AudioFollower` takes the status snapshots the pipeline publishes about twice a second
(:meth:`~greenscreen_cam.live.pipeline.Stats.snapshot`), and on a thread of its own (``pactl``
calls never stall the picture) re-applies the delay to the
:class:`~greenscreen_cam.media.audio.DelayedMicrophone` when the picture's added delay (its p50,
the figure the status line shows; with ``start --server`` it includes the round trip) has moved
by more than ``threshold_ms``, saying so in one line. It also watches the loopback: an unplugged
microphone is reported (and picked up again when it returns), a sound server that went away is
reported once, and the camera keeps running in both cases.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from greenscreen_cam.errors import AudioError
from greenscreen_cam.media.audio import DelayedMicrophone

Say = Callable[[str], None]

AUTO_MAX_DELAY_MS = 1000.0
"""``--max-delay``'s default with ``--audio-delay auto``: the sound waits as long as the picture does."""
LIP_SYNC_MAX_DELAY_MS = 90.0
"""``--max-delay``'s default while the sound is not delayed (ITU-R BT.1359)."""


def default_max_delay(audio: str | float | None) -> float:
    """``--max-delay`` (ms) when not given: the audio delay in force decides (None: the sound is not delayed)."""
    if audio is None or audio == "off":
        return LIP_SYNC_MAX_DELAY_MS
    if audio == "auto":
        return AUTO_MAX_DELAY_MS
    return float(audio)


class AudioFollower:
    """Applies ``delay`` (``"auto"`` or fixed milliseconds) to ``mic`` and keeps it applied.

    Args:
        mic: An opened delayed microphone; :meth:`close` closes it.
        delay: ``"auto"`` (follow the picture) or a fixed delay in ms.
        say: One-line messages.
        threshold_ms: ``auto`` re-applies only when the picture's delay moved by more than this.
        check_every: Seconds between checks that the loopback and the microphone are still there.
    """

    def __init__(
        self,
        mic: DelayedMicrophone,
        delay: str | float,
        *,
        say: Say,
        threshold_ms: float = 20.0,
        check_every: float = 2.0,
    ) -> None:
        self.mic = mic
        self.delay = delay
        self.auto = delay == "auto"
        self.say = say
        self.threshold_ms = threshold_ms
        self.check_every = check_every
        self.applied_ms: float | None = None
        """The delay in force, None while nothing is delayed (see :meth:`publish`)."""
        self.stats: Any = None
        """An object with an ``audio_delay_ms`` attribute kept up to date (the pipeline's Stats)."""
        self._target: float | None = None if self.auto else float(delay)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._gone = False  # the sound server went away: nothing more to do
        self._unplugged = False
        self._thread = threading.Thread(target=self._run, name="greencam-audio", daemon=True)

    def start(self) -> AudioFollower:
        self._thread.start()
        return self

    def update(self, snapshot: dict[str, Any]) -> None:
        """A status snapshot from the pipeline (any thread); annotates it with ``audio_delay_ms``."""
        recent = snapshot.get("latency_recent_ms", snapshot.get("latency_p50_ms"))
        if self.auto and snapshot.get("frames_out", 0) and recent is not None:
            # what the viewers see: capture to the virtual camera, its output thread included
            self._target = float(recent) + float(snapshot.get("output_lag_ms") or 0.0)
            self._wake.set()
        snapshot["audio_delay_ms"] = self.applied_ms

    def close(self) -> None:
        """Stop following and unload the microphone's modules (never raises)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.mic.close()
        self.publish(None)

    def publish(self, ms: float | None) -> None:
        self.applied_ms = ms
        if self.stats is not None:
            self.stats.audio_delay_ms = ms

    def _run(self) -> None:
        while not self._stop.is_set() and not self._gone:
            self._wake.wait(self.check_every)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._step()
            except AudioError as e:
                self._gone = True
                self.publish(None)
                self.say(f"microphone: not delayed any more ({e}); the camera keeps running")

    def _step(self) -> None:
        target = self._target
        if self.applied_ms is not None and not self.mic.healthy():
            if not self.mic.microphone_present():
                if not self._unplugged:
                    self._unplugged = True
                    self.say(
                        f"microphone: {self.mic.master} is gone (unplugged?); greencam Microphone is silent "
                        "until it comes back"
                    )
                return
            self._unplugged = False
            self.say(f"microphone: {self.mic.master} is back, delayed {self.applied_ms:.0f} ms again")
            self.mic.set_delay(self.applied_ms)
            return
        if target is None:
            return
        if self.applied_ms is None:
            self._apply(target)
            how = "following the picture" if self.auto else "fixed"
            self.say(f"microphone: greencam Microphone carries {self.mic.master} delayed {target:.0f} ms ({how})")
        elif self.auto and abs(target - self.applied_ms) > self.threshold_ms:
            before = self.applied_ms
            self._apply(target)
            self.say(f"microphone: delay {before:.0f} -> {target:.0f} ms (the picture's added delay moved)")

    def _apply(self, ms: float) -> None:
        if not self.mic.microphone_present():
            if not self._unplugged:
                self._unplugged = True
                self.say(f"microphone: {self.mic.master} is not there (unplugged?); greencam Microphone is silent")
            return
        self.mic.set_delay(ms)
        self.publish(ms)


def open_follower(delay: str | float, microphone: str, say: Say, **kwargs: Any) -> AudioFollower | None:
    """The started follower for ``--audio-delay`` / ``--microphone``, or None (and one line why).

    Never raises for a sound server problem: the camera runs without a delayed microphone.
    """
    if delay == "off":
        return None
    mic = DelayedMicrophone(microphone, **kwargs)
    try:
        mic.open()
    except AudioError as e:
        say(
            f"microphone: not delayed ({e}); --sync auto keeps lip sync (--max-delay {LIP_SYNC_MAX_DELAY_MS:g} ms unless given)"
        )
        mic.close()
        return None
    return AudioFollower(mic, delay, say=say).start()
