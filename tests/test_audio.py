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
