"""A private PulseAudio server for tests, a click train player and a delay meter (cross-correlation).

Nothing here is product code: greencam itself only drives ``pactl`` (see
:mod:`greenscreen_cam.live.audio`). The server runs in its own ``XDG_RUNTIME_DIR`` and only
that process is ever stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

RATE = 48000
"""Samples per second of every stream the helpers play and record (mono, s16le)."""


def pulseaudio_missing() -> str | None:
    """Why a sound server test cannot run here (None: it can)."""
    for tool in ("pulseaudio", "pactl", "pacat", "parecord"):
        if shutil.which(tool) is None:
            return f"needs PulseAudio's {tool} (apt-get install pulseaudio pulseaudio-utils)"
    return None


class SoundServer:
    """One private ``pulseaudio`` daemon; :attr:`env` points clients (and greencam) at it."""

    def __init__(self, runtime: Path) -> None:
        self.runtime = runtime
        self.env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), PULSE_RUNTIME_PATH=str(runtime / "pulse"))
        self.env.pop("PULSE_SERVER", None)
        self.pid: int | None = None

    def start(self, timeout: float = 10.0) -> SoundServer:
        self.runtime.mkdir(parents=True, exist_ok=True)
        os.chmod(self.runtime, 0o700)
        subprocess.run(
            [
                "pulseaudio",
                "-D",
                "--exit-idle-time=-1",
                "-n",
                "--load=module-native-protocol-unix",
                "--use-pid-file=yes",
                f"--log-target=file:{self.runtime / 'pulse.log'}",
            ],
            env=self.env,
            check=True,
            timeout=timeout,
            capture_output=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pactl("info", check=False).returncode == 0:
                pid_file = self.runtime / "pulse" / "pid"
                if pid_file.is_file():
                    self.pid = int(pid_file.read_text().split()[0])
                return self
            time.sleep(0.1)
        raise RuntimeError("the private pulseaudio did not answer")

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["pactl", *args], env=self.env, check=check, capture_output=True, text=True, timeout=10)

    def stop(self) -> None:
        """Kill this server (by its own pid) and wait for it to go."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def fake_microphone(self, name: str = "testmic") -> str:
        """A null sink standing in for a microphone; returns its monitor source's name."""
        self.pactl("load-module", "module-null-sink", f"sink_name={name}", f"rate={RATE}", "channels=1")
        return f"{name}.monitor"


@contextmanager
def sound_server(runtime: Path) -> Iterator[SoundServer]:
    server = SoundServer(runtime).start()
    try:
        yield server
    finally:
        server.stop()


def click_train(seconds: float, period: float = 1.0, first: float = 0.5, click_ms: float = 2.0) -> np.ndarray:
    """Mono s16 samples: a short full-scale burst every ``period`` seconds from ``first`` on."""
    n = int(seconds * RATE)
    out = np.zeros(n, np.int16)
    width = max(1, int(click_ms * RATE / 1000))
    rng = np.random.default_rng(0)
    burst = (rng.uniform(-1, 1, width) * 30000).astype(np.int16)
    t = first
    while t * RATE + width < n:
        i = int(t * RATE)
        out[i : i + width] = burst
        t += period
    return out


class Recorder:
    """``parecord`` of one source into memory, with the wall time at which each chunk arrived.

    :meth:`first_sample_time` estimates when sample 0 was captured (``perf_counter``) from the
    lower envelope of ``arrival - position / RATE``, so two recorders started at different
    moments can be put on one time line.
    """

    def __init__(self, server: SoundServer, source: str, latency_ms: int = 10) -> None:
        self.proc = subprocess.Popen(
            [
                "parecord",
                "--raw",
                f"--device={source}",
                "--format=s16le",
                f"--rate={RATE}",
                "--channels=1",
                f"--latency-msec={latency_ms}",
            ],
            env=server.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._chunks: list[bytes] = []
        self._marks: list[tuple[float, int]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        total = 0
        while True:
            data = os.read(self.proc.stdout.fileno(), 4096)
            if not data:
                return
            now = time.perf_counter()
            self._chunks.append(data)
            total += len(data)
            self._marks.append((now, total // 2))

    def started(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self._marks and time.monotonic() < deadline:
            time.sleep(0.01)
        return bool(self._marks)

    def stop(self) -> np.ndarray:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._thread.join(5)
        return np.frombuffer(b"".join(self._chunks)[: sum(map(len, self._chunks)) // 2 * 2], np.int16)

    def first_sample_time(self) -> float:
        marks = np.array(self._marks[len(self._marks) // 10 :], dtype=np.float64)  # past the start-up burst
        offsets = marks[:, 0] - marks[:, 1] / RATE
        return float(np.percentile(offsets, 5))


class Player:
    """``pacat`` playing mono s16 samples into a sink."""

    def __init__(self, server: SoundServer, sink: str, samples: np.ndarray) -> None:
        self.proc = subprocess.Popen(
            ["pacat", "--playback", "--raw", f"--device={sink}", "--format=s16le", f"--rate={RATE}", "--channels=1"],
            env=server.env,
            stdin=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._thread = threading.Thread(target=self._write, args=(samples.tobytes(),), daemon=True)
        self._thread.start()

    def _write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.close()
        except BrokenPipeError:
            pass

    def wait(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def onsets(samples: np.ndarray, threshold: int = 8000, gap: float = 0.3) -> list[float]:
    """Seconds (from sample 0) at which each click starts."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
    out: list[float] = []
    last = -1e9
    for i in loud:
        t = i / RATE
        if t - last > gap:
            out.append(t)
        last = t
    return out


def lag_seconds(reference: np.ndarray, delayed: np.ndarray, max_lag: float = 2.0) -> float:
    """The lag of ``delayed`` behind ``reference`` that maximises their cross-correlation (FFT)."""
    n = 1 << int(np.ceil(np.log2(len(reference) + len(delayed))))
    a = np.abs(reference.astype(np.float64))
    b = np.abs(delayed.astype(np.float64))
    corr = np.fft.irfft(np.fft.rfft(b, n) * np.conj(np.fft.rfft(a, n)), n)
    limit = int(max_lag * RATE)
    window = np.concatenate([corr[-limit:], corr[: limit + 1]])  # lags -limit .. +limit
    return float((int(np.argmax(window)) - limit) / RATE)


def measure_delay(server: SoundServer, mic_sink: str, delayed_source: str, seconds: float = 6.0) -> float:
    """Play a click train into ``mic_sink``; the delay (s) of ``delayed_source`` behind ``mic_sink``'s monitor.

    Both sources are recorded at once; their recordings are put on one time line with
    :meth:`Recorder.first_sample_time` and the lag is found by cross-correlation.
    """
    reference = Recorder(server, f"{mic_sink}.monitor")
    delayed = Recorder(server, delayed_source)
    try:
        if not (reference.started() and delayed.started()):
            raise RuntimeError("parecord produced nothing")
        player = Player(server, mic_sink, click_train(seconds))
        player.wait(seconds + 10)
        time.sleep(1.5)  # the delayed copy of the last click
    finally:
        ref_samples, del_samples = reference.stop(), delayed.stop()
    start_gap = delayed.first_sample_time() - reference.first_sample_time()  # delayed began this much later
    shift = int(round(start_gap * RATE))
    # Both on the reference's time line: sample i of the delayed recording is reference sample i + shift.
    aligned = np.concatenate([np.zeros(shift, np.int16), del_samples]) if shift >= 0 else del_samples[-shift:]
    return lag_seconds(ref_samples, aligned)
