"""The "greencam Microphone": a real microphone delayed with the picture, built from the sound server's own modules.

greencam has no audio code of its own. It drives ``pactl`` (PulseAudio, or PipeWire's
pipewire-pulse, which takes the same commands) to load three standard modules:

    microphone ──► module-loopback latency_msec=D ──► module-null-sink greencam_delay
                                                          │ .monitor
                                                          ▼
                                     module-remap-source greencam_microphone ("greencam Microphone")

Call apps pick "greencam Microphone" as they pick the virtual camera. Every module carries the
property ``greencam.owner=<pid>`` in its arguments, so modules that a killed run left behind are
found and unloaded at the next start (:func:`remove_leftovers`), and a second greencam leaves a
running one's modules alone.

``module-loopback`` aims at ``latency_msec`` and adapts its rate to hold it; measured with the
click-train test (tests/test_audio.py) it settles about :data:`LOOPBACK_EXCESS_MS` above the request,
so that much is taken off what is asked for. A changed delay loads a new loopback and lets the old
one play out its sound before it is unloaded (the difference of the two delays is skipped or
repeated once; it happens only when the picture's delay moves by more than the threshold).

Nothing here is fatal to the camera: a missing or vanished sound server, or an unplugged
microphone, is one line through ``say`` and the picture keeps going.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

from greenscreen_cam.errors import AudioError

SINK = "greencam_delay"
"""The null sink the delayed microphone plays into (its monitor feeds the greencam microphone)."""
SOURCE = "greencam_microphone"
"""The virtual microphone's source name."""
DESCRIPTION = "greencam Microphone"
"""What call apps show."""
OWNER = "greencam.owner"
"""The property every module greencam loads carries: the pid of the greencam that loaded it."""
LOOPBACK_EXCESS_MS = 10.0
"""How far above ``latency_msec`` module-loopback settles here (PulseAudio 16.1, 2026-12-07: +9.5 to
+9.8 ms at 100, 330 and 700 ms, docs/benchmarks.md); taken off each request."""
MIN_DELAY_MS = 1.0
"""The least latency asked of module-loopback."""

Say = Callable[[str], None]


@dataclass(frozen=True)
class Module:
    """One loaded sound server module (``pactl list short modules``)."""

    index: int
    name: str
    args: str

    @property
    def owner(self) -> int | None:
        """The greencam pid named in its arguments, or None when it is not greencam's."""
        marker = OWNER + "="
        at = self.args.find(marker)
        if at < 0:
            return None
        digits = ""
        for ch in self.args[at + len(marker) :]:
            if not ch.isdigit():
                break
            digits += ch
        return int(digits) if digits else None


@dataclass(frozen=True)
class Microphone:
    """One capture source: ``name`` for ``--microphone``, ``description`` as apps show it."""

    name: str
    description: str
    greencam: bool = False


class Pactl:
    """Runs ``pactl`` (each call bounded by ``timeout``); :class:`AudioError` when it cannot.

    Args:
        env: Environment for the calls (``XDG_RUNTIME_DIR``/``PULSE_SERVER`` pick the server).
        timeout: Seconds one call may take.
    """

    def __init__(self, env: dict[str, str] | None = None, timeout: float = 5.0) -> None:
        self.env = env
        self.timeout = timeout

    def __call__(self, *args: str) -> str:
        exe = shutil.which("pactl", path=(self.env or os.environ).get("PATH"))
        if exe is None:
            raise AudioError("no sound server tools: pactl is not installed (apt install pulseaudio-utils)")
        try:
            done = subprocess.run(
                [exe, *args], env=self.env, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise AudioError(f"the sound server did not answer pactl {args[0]} within {self.timeout:g} s") from None
        except OSError as e:
            raise AudioError(f"cannot run pactl: {e}") from None
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip().splitlines()
            raise AudioError(f"pactl {' '.join(args[:2])}: {why[-1] if why else f'exit {done.returncode}'}")
        return done.stdout

    def modules(self) -> list[Module]:
        out: list[Module] = []
        for line in self("list", "short", "modules").splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[0].strip().isdigit():
                out.append(Module(int(parts[0]), parts[1], parts[2] if len(parts) > 2 else ""))
        return out

    def load(self, name: str, *args: str) -> int:
        text = self("load-module", name, *args).strip()
        if not text.isdigit():
            raise AudioError(f"pactl load-module {name} answered {text!r}")
        return int(text)

    def unload(self, index: int) -> None:
        self("unload-module", str(index))

    def source_names(self) -> list[str]:
        return [line.split("\t")[1] for line in self("list", "short", "sources").splitlines() if "\t" in line]

    def microphones(self) -> list[Microphone]:
        """Every capture source but the monitors of sinks, with its description (greencam's own marked)."""
        mics: list[Microphone] = []
        name = description = ""
        monitor = False

        def flush() -> None:
            if name and not monitor:
                mics.append(Microphone(name, description or name, name == SOURCE))

        for raw in self("list", "sources").splitlines():
            line = raw.strip()
            if raw.startswith("Source #"):
                flush()
                name, description, monitor = "", "", False
            elif line.startswith("Name:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("Description:"):
                description = line.split(":", 1)[1].strip()
            elif line.startswith("Monitor of Sink:"):
                monitor = line.split(":", 1)[1].strip() not in ("", "n/a")
        flush()
        return mics

    def default_source(self) -> str:
        return self("get-default-source").strip()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(pactl: Pactl, *, me: int | None = None) -> int:
    """Unload greencam modules whose greencam is gone (or is ``me``); how many were unloaded.

    The loopback goes first, then the source, then the sink (the order they depend on each other).
    """
    me = os.getpid() if me is None else me
    order = {"module-loopback": 0, "module-remap-source": 1, "module-null-sink": 2}
    stale = [m for m in pactl.modules() if m.owner is not None and (m.owner == me or not _alive(m.owner))]
    stale.sort(key=lambda m: order.get(m.name, 3))
    removed = 0
    for module in stale:
        with suppress(AudioError):  # it may have gone with its master meanwhile
            pactl.unload(module.index)
            removed += 1
    return removed


def resolve_microphone(pactl: Pactl, name: str) -> str:
    """The source name for ``--microphone`` (``default``, a source name or a description).

    Raises:
        AudioError: no such microphone, or the default is greencam's own.
    """
    mics = pactl.microphones()
    if name == "default":
        chosen = pactl.default_source()
        if chosen == SOURCE:
            real = [m.name for m in mics if not m.greencam]
            if not real:
                raise AudioError("the default microphone is greencam's own and there is no other")
            chosen = real[0]
        return chosen
    for mic in mics:
        if name in (mic.name, mic.description) and not mic.greencam:
            return mic.name
    if name in pactl.source_names() and name != SOURCE:
        return name  # a monitor of a sink: allowed (it is how the tests feed a click train)
    known = ", ".join(m.name for m in mics if not m.greencam) or "none"
    raise AudioError(f"no microphone {name!r}; microphones: {known} (greencam devices lists them)")


class DelayedMicrophone:
    """The greencam microphone: :meth:`open` it, :meth:`set_delay` as often as wanted, :meth:`close` it.

    Args:
        microphone: ``default``, or a source name or description (``greencam devices``).
        pactl: How to reach the sound server (default: the user's, through ``pactl``).
        excess_ms: Taken off each requested delay (see :data:`LOOPBACK_EXCESS_MS`).

    Thread-safe: the methods may be called from any thread. Every module loaded is unloaded by
    :meth:`close`, which never raises.
    """

    def __init__(
        self, microphone: str = "default", *, pactl: Pactl | None = None, excess_ms: float = LOOPBACK_EXCESS_MS
    ) -> None:
        self.microphone = microphone
        self.pactl = pactl or Pactl()
        self.excess_ms = excess_ms
        self.master: str | None = None
        self.delay_ms: float | None = None
        """The delay in force (what was asked for), None while nothing is delayed."""
        self._sink: int | None = None
        self._source: int | None = None
        self._loopback: int | None = None
        self._retiring: set[int] = set()  # replaced loopbacks still playing out their sound
        self._lock = threading.Lock()

    @property
    def _owner(self) -> str:
        return f"{OWNER}={os.getpid()}"

    def open(self) -> DelayedMicrophone:
        """Remove leftovers, find the microphone and create the sink and the greencam microphone.

        Raises:
            AudioError: no sound server, no such microphone, or a module that will not load
                (whatever was loaded is unloaded again).
        """
        with self._lock:
            remove_leftovers(self.pactl)
            others = [m for m in self.pactl.modules() if m.owner is not None]
            if others:
                raise AudioError(f"another greencam (pid {others[0].owner}) already runs the greencam microphone")
            self.master = resolve_microphone(self.pactl, self.microphone)
            try:
                self._sink = self.pactl.load(
                    "module-null-sink",
                    f"sink_name={SINK}",
                    f"sink_properties='device.description=\"greencam delay (internal)\" {self._owner}'",
                )
                self._source = self.pactl.load(
                    "module-remap-source",
                    f"master={SINK}.monitor",
                    f"source_name={SOURCE}",
                    f"source_properties='device.description=\"{DESCRIPTION}\" {self._owner}'",
                )
            except AudioError:
                self._unload_all()
                raise
        return self

    def set_delay(self, ms: float) -> None:
        """Delay the microphone by ``ms``.

        The new loopback is loaded first and the old one unloaded only once the new one's first
        sound comes out (after its latency), so a change skips or repeats the difference of the two
        delays rather than leaving a gap of silence.

        Raises:
            AudioError: the sound server or the microphone is gone (the old loopback is unloaded).
        """
        with self._lock:
            if self._sink is None or self.master is None:
                raise AudioError("the greencam microphone is not open")
            old, self._loopback, self.delay_ms = self._loopback, None, None
            ask = max(MIN_DELAY_MS, ms - self.excess_ms)
            try:
                self._loopback = self.pactl.load(
                    "module-loopback",
                    f"source={self.master}",
                    f"sink={SINK}",
                    f"latency_msec={ask:.0f}",
                    "source_dont_move=true",
                    "sink_dont_move=true",
                    f"sink_input_properties='media.name=\"greencam delay\" {self._owner}'",
                    f"source_output_properties='media.name=\"greencam delay\" {self._owner}'",
                )
            except AudioError:
                if old is not None:
                    self._retire(old, 0.0)
                raise
            self.delay_ms = float(ms)
            if old is not None:
                self._retire(old, ask / 1000.0)

    def _retire(self, index: int, after: float) -> None:
        """Unload loopback ``index`` in ``after`` seconds (at once by :meth:`close`); lock held."""
        self._retiring.add(index)

        def unload() -> None:
            with self._lock:
                if index not in self._retiring:
                    return  # close() got there first
                self._retiring.discard(index)
                with suppress(AudioError):  # it unloaded itself (its microphone went away)
                    self.pactl.unload(index)

        if after <= 0:
            self._retiring.discard(index)
            with suppress(AudioError):
                self.pactl.unload(index)
            return
        timer = threading.Timer(after, unload)
        timer.daemon = True
        timer.start()

    def healthy(self) -> bool:
        """Whether the loopback is still loaded (module-loopback unloads itself when its microphone goes).

        Raises:
            AudioError: the sound server cannot be reached.
        """
        with self._lock:
            if self._loopback is None:
                return False
            return any(m.index == self._loopback for m in self.pactl.modules())

    def microphone_present(self) -> bool:
        """Whether the microphone being delayed is there (an unplugged one is not)."""
        return self.master is not None and self.master in self.pactl.source_names()

    def close(self) -> None:
        """Unload every module this object loaded (never raises)."""
        with self._lock:
            self._unload_all()

    def _unload_all(self) -> None:
        for index in sorted(self._retiring):
            with suppress(AudioError):
                self.pactl.unload(index)
        self._retiring.clear()
        for attr in ("_loopback", "_source", "_sink"):
            index = getattr(self, attr)
            setattr(self, attr, None)
            if index is None:
                continue
            with suppress(AudioError):
                self.pactl.unload(index)
        self.delay_ms = None

    def __enter__(self) -> DelayedMicrophone:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def list_microphones(pactl: Pactl | None = None) -> tuple[list[Microphone], str | None]:
    """The microphones of the sound server (greencam's own marked), and why none could be listed (or None)."""
    try:
        return (pactl or Pactl(timeout=2.0)).microphones(), None
    except AudioError as e:
        return [], f"no microphones listed: {e}"
