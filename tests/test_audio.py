"""The greencam microphone on a real, private PulseAudio: measured delay, clean-up, faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenscreen_cam.errors import AudioError
from greenscreen_cam.media.audio import SINK, SOURCE, DelayedMicrophone, Pactl, remove_leftovers
from tests.soundserver import SoundServer, measure_delay, pulseaudio_missing

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(bool(pulseaudio_missing()), reason=pulseaudio_missing() or "")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoundServer]:
    s = SoundServer(tmp_path_factory.mktemp("pulse") / "run").start()
    try:
        s.fake_microphone("testmic")
        yield s
    finally:
        s.stop()


@pytest.fixture()
def pactl(server: SoundServer) -> Pactl:
    return Pactl(server.env)


def greencam_modules(pactl: Pactl) -> list[str]:
    return [m.name for m in pactl.modules() if m.owner is not None]


@pytest.mark.parametrize("ms", [100, 330, 700])
def test_the_greencam_microphone_carries_the_microphone_delayed_by_what_was_asked(
    server: SoundServer, pactl: Pactl, ms: int
) -> None:
    with DelayedMicrophone("testmic.monitor", pactl=pactl) as mic:
        mic.set_delay(ms)
        time.sleep(1.0)  # the loopback fills its buffer
        measured = [measure_delay(server, "testmic", SOURCE, seconds=4.0) * 1000 for _ in range(2)]
    print(f"requested {ms} ms, measured {measured}")
    assert all(abs(m - ms) <= 15 for m in measured), f"requested {ms} ms, measured {measured}"


def test_it_is_named_greencam_microphone_and_every_module_goes_on_close(pactl: Pactl) -> None:
    mic = DelayedMicrophone("testmic.monitor", pactl=pactl).open()
    mic.set_delay(200)
    mic.set_delay(260)  # a re-apply replaces the loopback, it does not add one
    names = greencam_modules(pactl)
    assert sorted(names) == ["module-loopback", "module-null-sink", "module-remap-source"]
    assert any(m.name == SOURCE and m.description == "greencam Microphone" for m in pactl.microphones())
    mic.close()
    assert greencam_modules(pactl) == []
    assert SOURCE not in pactl.source_names()
    mic.close()  # twice is harmless


def test_modules_left_by_a_killed_greencam_are_removed_at_the_next_start(server: SoundServer, pactl: Pactl) -> None:
    code = textwrap.dedent(
        """
        import os, signal
        from greenscreen_cam.media.audio import DelayedMicrophone
        mic = DelayedMicrophone("testmic.monitor").open()
        mic.set_delay(300)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = dict(server.env, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], env=env, timeout=60, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert len(greencam_modules(pactl)) == 3  # what a killed run leaves
    with DelayedMicrophone("testmic.monitor", pactl=pactl) as mic:
        mic.set_delay(100)
        assert len(greencam_modules(pactl)) == 3  # the leftovers went, these are the new ones
        assert {m.owner for m in pactl.modules() if m.owner is not None} == {os.getpid()}
    assert greencam_modules(pactl) == []


def test_a_running_greencam_s_microphone_is_left_alone(server: SoundServer, pactl: Pactl) -> None:
    other = subprocess.Popen(["sleep", "30"])
    try:
        owner = f"greencam.owner={other.pid}"
        index = pactl.load("module-null-sink", f"sink_name={SINK}", f"sink_properties='{owner}'")
        assert remove_leftovers(pactl) == 0
        with pytest.raises(AudioError, match="another greencam"):
            DelayedMicrophone("testmic.monitor", pactl=pactl).open()
        pactl.unload(index)
    finally:
        other.kill()
        other.wait(5)


def test_an_unknown_microphone_is_one_line_naming_the_ones_there_are(pactl: Pactl) -> None:
    with pytest.raises(AudioError, match="no microphone 'nope'"):
        DelayedMicrophone("nope", pactl=pactl).open()
    assert greencam_modules(pactl) == []


def test_an_unplugged_microphone_is_seen_and_not_fatal(server: SoundServer, pactl: Pactl) -> None:
    index = pactl.load("module-null-sink", "sink_name=usbmic")
    with DelayedMicrophone("usbmic.monitor", pactl=pactl) as mic:
        mic.set_delay(150)
        assert mic.healthy() and mic.microphone_present()
        pactl.unload(index)  # unplugged: module-loopback goes with it
        deadline = time.monotonic() + 5
        while mic.healthy() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not mic.healthy()
        assert not mic.microphone_present()
    assert greencam_modules(pactl) == []


def test_no_sound_server_is_an_audio_error(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path), PULSE_SERVER=f"unix:{tmp_path}/none")
    with pytest.raises(AudioError):
        DelayedMicrophone(pactl=Pactl(env)).open()


def test_no_pactl_is_an_audio_error_with_the_install_command(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))
    with pytest.raises(AudioError, match="apt install pulseaudio-utils"):
        DelayedMicrophone(pactl=Pactl(env)).open()


# --------------------------------------------------------------------------- following the picture


class FakeMic:
    """Stands in for DelayedMicrophone: records set_delay calls; can lose its server or its microphone."""

    master = "fakemic"

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.present = True
        self.loaded = True
        self.server_gone = False
        self.closed = False

    def _check(self) -> None:
        if self.server_gone:
            raise AudioError("Connection failure: Connection refused")

    def set_delay(self, ms: float) -> None:
        self._check()
        self.delays.append(ms)
        self.loaded = True

    def healthy(self) -> bool:
        self._check()
        return self.loaded

    def microphone_present(self) -> bool:
        self._check()
        return self.present

    def close(self) -> None:
        self.closed = True


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(predicate())


def test_auto_follows_the_picture_only_when_it_moves_by_more_than_20_ms_and_says_so() -> None:
    from greenscreen_cam.live.audio_sync import AudioFollower

    mic, said = FakeMic(), []
    follower = AudioFollower(mic, "auto", say=said.append, check_every=0.05).start()  # type: ignore[arg-type]
    try:
        for p50 in (330.0, 340.0, 325.0, 349.0, 420.0):
            snap = {"frames_out": 10, "delay_p50_ms": p50}
            follower.update(snap)
            time.sleep(0.15)
        assert wait_until(lambda: mic.delays == [330.0, 420.0]), mic.delays
        assert follower.applied_ms == 420.0
        assert said[0].startswith("microphone: greencam Microphone carries fakemic delayed 330 ms")
        assert said[1] == "microphone: delay 330 -> 420 ms (the picture's added delay moved)"
        snap = {"frames_out": 11, "delay_p50_ms": 421.0}
        follower.update(snap)
        assert snap["audio_delay_ms"] == 420.0  # what greencam ctl status and the status line show
    finally:
        follower.close()
    assert mic.closed and follower.applied_ms is None


def test_a_fixed_delay_is_applied_once_whatever_the_picture_does() -> None:
    from greenscreen_cam.live.audio_sync import AudioFollower

    mic, said = FakeMic(), []
    follower = AudioFollower(mic, 250.0, say=said.append, check_every=0.05).start()  # type: ignore[arg-type]
    try:
        follower.update({"frames_out": 10, "delay_p50_ms": 500.0})
        assert wait_until(lambda: mic.delays == [250.0])
        time.sleep(0.2)
        assert mic.delays == [250.0]
    finally:
        follower.close()


def test_a_sound_server_gone_mid_call_is_said_once_and_the_follower_stops() -> None:
    from greenscreen_cam.live.audio_sync import AudioFollower

    mic, said = FakeMic(), []
    follower = AudioFollower(mic, "auto", say=said.append, check_every=0.02).start()  # type: ignore[arg-type]
    try:
        follower.update({"frames_out": 10, "delay_p50_ms": 300.0})
        assert wait_until(lambda: mic.delays == [300.0])
        mic.server_gone = True
        for p50 in (400.0, 500.0):
            follower.update({"frames_out": 10, "delay_p50_ms": p50})
            time.sleep(0.1)
        assert wait_until(lambda: any("not delayed any more" in m for m in said))
        assert sum("not delayed any more" in m for m in said) == 1
        assert follower.applied_ms is None
    finally:
        follower.close()


def test_an_unplugged_microphone_is_reported_once_and_picked_up_when_it_returns() -> None:
    from greenscreen_cam.live.audio_sync import AudioFollower

    mic, said = FakeMic(), []
    follower = AudioFollower(mic, "auto", say=said.append, check_every=0.02).start()  # type: ignore[arg-type]
    try:
        follower.update({"frames_out": 10, "delay_p50_ms": 300.0})
        assert wait_until(lambda: mic.delays == [300.0])
        mic.present, mic.loaded = False, False  # module-loopback went with it
        assert wait_until(lambda: any("is gone (unplugged?)" in m for m in said))
        time.sleep(0.1)
        assert sum("is gone" in m for m in said) == 1
        mic.present = True
        assert wait_until(lambda: mic.delays == [300.0, 300.0])
        assert any("is back" in m for m in said)
    finally:
        follower.close()


def test_open_follower_without_a_sound_server_says_once_the_microphone_is_not_delayed(tmp_path: Path) -> None:
    from greenscreen_cam.live.audio_sync import open_follower

    said: list[str] = []
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path), PULSE_SERVER=f"unix:{tmp_path}/none")
    assert open_follower("auto", "default", said.append, pactl=Pactl(env)) is None
    assert len(said) == 1 and said[0].startswith("microphone: not delayed (")
    assert open_follower("off", "default", said.append) is None and len(said) == 1
