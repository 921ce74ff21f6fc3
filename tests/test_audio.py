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


@pytest.mark.slow  # 13 s each: two 4 s recordings
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
    mic.set_delay(260)  # a re-apply replaces the loopback once the new one's sound comes out
    assert sorted(greencam_modules(pactl)).count("module-loopback") == 2  # the old one plays out what it holds
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and greencam_modules(pactl).count("module-loopback") > 1:
        time.sleep(0.05)
    names = greencam_modules(pactl)
    assert sorted(names) == ["module-loopback", "module-null-sink", "module-remap-source"]
    assert any(m.name == SOURCE and m.description == "greencam Microphone" for m in pactl.microphones())
    mic.close()
    assert greencam_modules(pactl) == []
    assert SOURCE not in pactl.source_names()
    mic.close()  # twice is harmless


@pytest.mark.slow
def test_a_change_of_delay_leaves_no_gap_and_close_unloads_a_loopback_still_playing_out(
    server: SoundServer, pactl: Pactl
) -> None:
    with DelayedMicrophone("testmic.monitor", pactl=pactl) as mic:
        mic.set_delay(330)
        time.sleep(1.0)
        mic.set_delay(120)
        time.sleep(1.0)
        measured = measure_delay(server, "testmic", SOURCE, seconds=4.0) * 1000
        mic.set_delay(600)  # closed while the 120 ms loopback still plays out
    assert abs(measured - 120) <= 15, measured
    assert greencam_modules(pactl) == []


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
            snap = {"frames_out": 10, "latency_recent_ms": p50}
            follower.update(snap)
            time.sleep(0.15)
        assert wait_until(lambda: mic.delays == [330.0, 420.0]), mic.delays
        assert follower.applied_ms == 420.0
        assert said[0].startswith("microphone: greencam Microphone carries fakemic delayed 330 ms")
        assert said[1] == "microphone: delay 330 -> 420 ms (the picture's added delay moved)"
        snap = {"frames_out": 11, "latency_recent_ms": 421.0}
        follower.update(snap)
        assert snap["audio_delay_ms"] == 420.0  # what greencam ctl status and the status line show
        follower.update({"frames_out": 12, "latency_recent_ms": 421.0, "output_lag_ms": 45.0})
        assert wait_until(lambda: mic.delays[-1] == 466.0), mic.delays  # the virtual camera's own lag counts too
    finally:
        follower.close()
    assert mic.closed and follower.applied_ms is None


def test_a_fixed_delay_is_applied_once_whatever_the_picture_does() -> None:
    from greenscreen_cam.live.audio_sync import AudioFollower

    mic, said = FakeMic(), []
    follower = AudioFollower(mic, 250.0, say=said.append, check_every=0.05).start()  # type: ignore[arg-type]
    try:
        follower.update({"frames_out": 10, "latency_recent_ms": 500.0})
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
        follower.update({"frames_out": 10, "latency_recent_ms": 300.0})
        assert wait_until(lambda: mic.delays == [300.0])
        mic.server_gone = True
        for p50 in (400.0, 500.0):
            follower.update({"frames_out": 10, "latency_recent_ms": p50})
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
        follower.update({"frames_out": 10, "latency_recent_ms": 300.0})
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


# --------------------------------------------------------------------------- end to end


def _flash_clip(path: Path, seconds: int = 12, fps: int = 30) -> Path:
    """Dark textured frames with a white flash (3 frames) at the start of every second from 1 s on."""
    import numpy as np

    from tests.conftest import write_video

    rng = np.random.default_rng(1)
    base = (rng.uniform(20, 70, (120, 160, 3))).astype(np.uint8)
    frames = []
    for i in range(seconds * fps):
        flash = i >= fps and i % fps < 3
        frames.append(np.full_like(base, 255) if flash else base)
    return write_video(path, frames, fps=fps)


def _onsets(times: list[float], bright: list[bool], gap: float = 0.5) -> list[float]:
    out: list[float] = []
    for t, b in zip(times, bright):
        if b and (not out or t - out[-1] > gap):
            out.append(t)
    return out


@pytest.fixture()
def tracker_args(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """How ``greencam start`` tracks: on its own CPU (``local``) or through a ``greencam serve`` on 127.0.0.1."""
    if request.param == "local":
        yield []
        return
    import socket

    import aioice.ice

    from tests.conftest import REPO as root

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("GREENCAM_TOKEN", None)
    loopback = (
        "import aioice.ice, sys; aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ['127.0.0.1']; "
        "from greenscreen_cam.cli import main; sys.argv[0] = 'greencam'; sys.exit(main())"
    )
    serve = subprocess.Popen(
        [sys.executable, "-c", loopback, "serve", "--port", str(port), "--token", "audio-test-token-0123456789",
         "--random-weights", "--device", "cpu", "--resolution", "256"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert serve.stderr is not None
        deadline, line = time.monotonic() + 120, ""
        while time.monotonic() < deadline and "serving" not in line:
            line = serve.stderr.readline()
            assert line or serve.poll() is None, "greencam serve exited"
        assert "serving" in line, line
        yield ["--server", f"http://127.0.0.1:{port}", "--token", "audio-test-token-0123456789"]
    finally:
        serve.terminate()
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait(10)


@pytest.mark.slow
@pytest.mark.parametrize("tracker_args", ["local", "server"], indirect=True)
def test_end_to_end_the_flash_and_its_click_come_out_together_while_the_picture_is_delayed(
    server: SoundServer,
    checkpoint_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    vcam_backend,
    tracker_args: list[str],
) -> None:
    """greencam start --realtime --sync on --audio-delay auto, with a flash each second as the camera.

    A click train plays into the microphone; the test puts the microphone (its monitor), the greencam
    Microphone, the camera's frames and the virtual camera's frames on one clock. A click that went in
    with a flash must come out of greencam Microphone within 30 ms of the flash leaving the virtual
    camera: the audio delay equals the picture's own. With ``start --server`` the picture's delay
    includes the round trip to greencam serve, and so does the microphone's.
    """
    import threading

    import numpy as np
    from typer.testing import CliRunner

    from greenscreen_cam.cli import app
    from greenscreen_cam.live import pipeline as pipeline_module
    from greenscreen_cam.media import sources
    from tests.soundserver import RATE, Player, Recorder, click_train, onsets

    for key in ("XDG_RUNTIME_DIR", "PULSE_RUNTIME_PATH"):
        monkeypatch.setenv(key, server.env[key])
    monkeypatch.delenv("PULSE_SERVER", raising=False)
    monkeypatch.setenv("GREENCAM_CHECKPOINTS", str(checkpoint_dir))
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")
    captured: list[tuple[float, bool]] = []
    real_open = sources.open_source

    def open_source(*args, **kwargs):
        src = real_open(*args, **kwargs)
        read = src.read

        def timed_read():
            frame = read()
            if frame is not None:
                captured.append((frame.timestamp, float(frame.image.mean()) > 200))
            return frame

        src.read = timed_read
        return src

    monkeypatch.setattr(sources, "open_source", open_source)
    real_init = pipeline_module.Pipeline.__init__

    def paused_init(self, *args, **kwargs):  # keying off: the flash passes untouched, the delay stays
        real_init(self, *args, **kwargs)
        self.set_paused(True)

    monkeypatch.setattr(pipeline_module.Pipeline, "__init__", paused_init)
    clip = _flash_clip(tmp_path / "flash.mp4", seconds=16)
    recorders: list[Recorder] = []  # the microphone's monitor, then greencam Microphone
    players: list[Player] = []
    stop = threading.Event()

    def record_once_the_greencam_microphone_is_there() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            if SOURCE in Pactl(server.env).source_names():
                recorders.extend([Recorder(server, "testmic.monitor"), Recorder(server, SOURCE)])
                players.append(Player(server, "testmic", click_train(60.0, period=1.0, first=0.3)))
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=record_once_the_greencam_microphone_is_there, daemon=True)
    watcher.start()
    try:
        result = CliRunner().invoke(
            app,
            ["start", "--device", "cpu", "--resolution", "256", "--source", str(clip), "--realtime",
             "--sync", "on", "--bbox", "40,30,80,60", "--audio-delay", "auto", "--microphone", "testmic.monitor",
             "--virtual-backend", "greencam-test", "--idle", "never", *tracker_args],
        )  # fmt: skip
    finally:
        stop.set()
        watcher.join(10)
        for player in players:
            player.proc.kill()
            player.wait(5)
        samples = [r.stop() for r in recorders]
    assert result.exit_code == 0, result.output
    assert "microphone: greencam Microphone carries testmic.monitor delayed" in result.output, result.output
    if tracker_args:
        assert "connected to" in result.output, result.output  # tracked by greencam serve
    assert len(samples) == 2, "greencam Microphone never appeared"
    (reference, delayed), (ref_samples, del_samples) = recorders, samples
    assert [m for m in Pactl(server.env).modules() if m.owner is not None] == [], "modules left after the run"
    cam = vcam_backend.instances[0]
    flashes_in = _onsets([t for t, _ in captured], [b for _, b in captured])
    flashes_out = _onsets(cam.times, [float(f.mean()) > 200 for f in cam.frames])
    pairs = [(i, next(o for o in flashes_out if o > i)) for i in flashes_in if any(o > i for o in flashes_out)]
    picture = [o - i for i, o in pairs]
    assert len(picture) >= 8, (flashes_in, flashes_out)
    clicks_in = [reference.first_sample_time() + t for t in onsets(ref_samples)]
    clicks_out = np.array([delayed.first_sample_time() + t for t in onsets(del_samples)])
    offsets = []
    for flash_in, flash_out in pairs[-4:]:
        delay = flash_out - flash_in
        for click in clicks_in:  # each click that went in within this second
            if not 0 <= click - flash_in < 1.0:
                continue
            nearest = clicks_out[np.argmin(np.abs(clicks_out - (click + delay)))]
            if abs(nearest - (click + delay)) < 0.5:  # else this click was dropped (a re-applied delay)
                offsets.append(nearest - (click + delay))  # >0: the click comes out after its flash would
    print(f"picture delay at the flashes {[round(p * 1000) for p in picture]} ms; "
          f"click minus flash {[round(o * 1000, 1) for o in offsets]} ms; {len(ref_samples) / RATE:.1f} s recorded")  # fmt: skip
    assert offsets, "no click recorded while the flashes went out"
    assert min(picture[-4:]) > 0.25, f"the picture should be held over 250 ms here, got {picture}"
    assert float(np.median(np.abs(offsets))) <= 0.030, offsets


# --------------------------------------------------------------------------- the commands


def test_greencam_devices_lists_the_microphones_and_marks_the_greencam_one(
    server: SoundServer, pactl: Pactl, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from typer.testing import CliRunner

    from greenscreen_cam.cli import app

    for key in ("XDG_RUNTIME_DIR", "PULSE_RUNTIME_PATH"):
        monkeypatch.setenv(key, server.env[key])
    pactl.load("module-null-sink", "sink_name=room", "sink_properties=device.description=Room")
    pactl.load("module-remap-source", "master=room.monitor", "source_name=headset")
    with DelayedMicrophone("headset", pactl=pactl):
        listed = CliRunner().invoke(app, ["devices", "--json"])
        table = CliRunner().invoke(app, ["devices"])
    assert listed.exit_code == 0, listed.output
    mics = {m["name"]: m for m in json.loads(listed.output)["microphones"]}
    assert mics[SOURCE]["greencam"] and mics[SOURCE]["description"] == "greencam Microphone"
    assert "headset" in mics and not mics["headset"]["greencam"]
    assert "room.monitor" not in mics  # monitors of outputs are no microphones
    assert "greencam Microphone (greencam output)" in table.output


@pytest.mark.slow
def test_sigterm_unloads_the_microphone_modules_of_a_running_greencam(
    server: SoundServer, pactl: Pactl, checkpoint_dir: Path, tmp_path: Path
) -> None:
    """What the systemd service's stop and a Ctrl-C do (both stop through the same handler)."""
    from tests.conftest import moving_disc_frames, write_video

    clip = write_video(tmp_path / "long.mp4", moving_disc_frames(4) * 150)  # 20 s at 30 fps
    env = dict(
        server.env, PYTHONPATH=str(REPO), GREENCAM_CHECKPOINTS=str(checkpoint_dir), XDG_CONFIG_HOME="/nonexistent"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "greenscreen_cam", "start", "--device", "cpu", "--resolution", "256",
         "--source", str(clip), "--realtime", "--bbox", "30,25,60,70", "--output", str(tmp_path / "o.mp4"),
         "--audio-delay", "auto", "--microphone", "testmic.monitor"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if "module-loopback" in greencam_modules(pactl):
                break
            time.sleep(0.1)
        assert "module-loopback" in greencam_modules(pactl), "greencam never delayed the microphone"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "greencam Microphone carries testmic.monitor" in output, output
    assert greencam_modules(pactl) == [], output


def test_ctl_status_says_the_audio_delay_in_force() -> None:
    from greenscreen_cam.config import Settings
    from greenscreen_cam.live.control import Dispatcher

    class Target:
        audio: float | None = 340.0

        def status(self) -> dict:
            return {"state": "tracking", "audio_delay_ms": self.audio}

    target = Target()
    dispatch = Dispatcher(target, Settings())  # type: ignore[arg-type]
    reply = dispatch(["status"])
    assert reply.ok and reply.message == "tracking; greencam Microphone delayed 340 ms"
    assert reply.status is not None and reply.status["audio_delay_ms"] == 340.0
    target.audio = None
    assert dispatch(["status"]).message == "tracking; microphone not delayed"
