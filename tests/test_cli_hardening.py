"""Issue 18, items 8-15: honest exit codes, full disks, interrupts, progress and messages that do not mislead."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from greenscreen_cam.cli import app

runner = CliRunner()

SECRET = "s3cr3t-token-abcdefghijklmnop"
TURN_SECRET = "turn-pw-qrstuvwxyz"


@pytest.fixture()
def no_env(monkeypatch):
    for name in ("GREENCAM_TOKEN", "GREENCAM_SERVER", "GREENCAM_TURN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")


# --------------------------------------------------------------------------- item 8: config masks secrets


@pytest.mark.parametrize("as_json", [False, True], ids=["toml", "json"])
def test_config_masks_secrets_unless_asked(no_env, tmp_path, as_json):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'server = "http://127.0.0.1:9"\ntoken = "{SECRET}"\nturn_password = "{TURN_SECRET}"\n')
    extra = ["--json"] if as_json else []
    shown = runner.invoke(app, ["config", "--config", str(cfg), *extra])
    assert shown.exit_code == 0, shown.output
    assert SECRET not in shown.output and TURN_SECRET not in shown.output
    assert "http://127.0.0.1:9" in shown.output  # everything else is shown as it is
    if as_json:
        data = json.loads(shown.output)
        assert data["token"] == data["turn_password"] == "********"
    clear = runner.invoke(app, ["config", "--config", str(cfg), "--show-secrets", *extra])
    assert clear.exit_code == 0 and SECRET in clear.output and TURN_SECRET in clear.output


def test_a_saved_masked_config_does_not_carry_the_mask(no_env, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'server = "http://127.0.0.1:9"\ntoken = "{SECRET}"\n')
    shown = runner.invoke(app, ["config", "--config", str(cfg)])
    assert '# token = "********" (hidden: --show-secrets prints it)' in shown.output
    saved = tmp_path / "saved.toml"
    saved.write_text(shown.output)
    again = runner.invoke(app, ["config", "--config", str(saved), "--show-secrets", "--json"])
    assert again.exit_code == 0 and json.loads(again.output)["token"] is None  # not the mask
    as_json = tmp_path / "saved.json"
    as_json.write_text(runner.invoke(app, ["config", "--config", str(cfg), "--json"]).output)
    refused = runner.invoke(app, ["config", "--config", str(as_json)])
    assert refused.exit_code == 2 and "token is the mask" in refused.output


def test_config_leaves_unset_secrets_unset(no_env):
    shown = runner.invoke(app, ["config"])
    assert shown.exit_code == 0
    assert "# token = (not set)" in shown.output and "********" not in shown.output


# --------------------------------------------------------------------------- item 9: a full disk


@pytest.fixture()
def small_disk(tmp_path):
    """A real 150 KB file system (tmpfs) at ``tmp_path/full``; skipped where mounting is not permitted."""
    import shutil
    import subprocess

    folder = tmp_path / "full"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot make a small file system")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=150k", "tmpfs", str(folder)], capture_output=True, text=True, timeout=10
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a 150 KB tmpfs is not permitted here: {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True, timeout=10)


def noise_frames(n: int, width: int = 320, height: int = 240, seed: int = 1):
    """Frames that do not compress: a few of them do not fit in 150 KB."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(n)]


def test_video_sink_on_a_full_disk_fails_and_leaves_nothing(small_disk):
    from greenscreen_cam.errors import SinkError
    from greenscreen_cam.media.sinks import VideoFileSink

    target = small_disk / "x.mp4"
    sink = VideoFileSink(target, 320, 240, 30.0)
    with pytest.raises(SinkError, match=r"cannot write video file .*x\.mp4: no space left on device") as info, sink:
        for frame in noise_frames(20):
            sink.send(frame)
    assert "\n" not in str(info.value)
    assert list(small_disk.iterdir()) == [], "neither the output nor its temporary file may remain"


def test_video_read_back_check(tmp_path):
    """The check done before the rename: a whole file passes, a truncated one and a short one do not."""
    from greenscreen_cam.media.sinks import video_problem

    from .conftest import write_video

    path = write_video(tmp_path / "v.mp4", noise_frames(6, 64, 48))
    assert video_problem(path, 6) is None
    assert "holds 6 of the 7 frames" in (video_problem(path, 7) or "")
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert "does not open" in (video_problem(cut, 6) or "")


def test_start_on_a_full_disk_exits_5_with_one_line(small_disk, checkpoint_dir, tmp_path, monkeypatch):
    import cv2

    from .conftest import write_jpeg_folder

    monkeypatch.setenv("GREENCAM_CHECKPOINTS", str(checkpoint_dir))
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")
    frames = noise_frames(8)
    source = write_jpeg_folder(tmp_path / "src", frames)
    background = tmp_path / "noise.png"  # the keyed picture stays noise wherever the mask falls
    cv2.imwrite(str(background), frames[0])
    target = small_disk / "x.mp4"
    result = runner.invoke(
        app,
        ["start", "--device", "cpu", "--resolution", "256", "--source", str(source), "--bbox", "40,40,200,150",
         "--background", str(background), "--output", str(target)],
    )  # fmt: skip
    assert result.exit_code == 5, result.output
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and str(target) in result.output.replace("\n", "")
    assert "no space left on device" in result.output
    assert "done:" not in result.output and "Traceback" not in result.output
    assert list(small_disk.iterdir()) == []


# --------------------------------------------------------------------------- item 10: Ctrl-C


def _greencam(checkpoint_dir, *args: str):
    import os
    import subprocess
    import sys

    from .conftest import REPO

    env = dict(
        os.environ, GREENCAM_CHECKPOINTS=str(checkpoint_dir), PYTHONUNBUFFERED="1", XDG_CONFIG_HOME="/nonexistent"
    )
    env.pop("GREENCAM_TOKEN", None)
    env.pop("GREENCAM_SERVER", None)
    cmd = [sys.executable, "-m", "greenscreen_cam", "start", "--device", "cpu", "--resolution", "256", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)


def _interrupt_when(proc, ready, what: str, limit: float = 120.0) -> str:
    import signal
    import time

    try:
        deadline = time.time() + limit
        while time.time() < deadline and not ready() and proc.poll() is None:
            time.sleep(0.2)
        assert ready(), f"greencam did not start {what}: {proc.stderr.read() if proc.poll() is not None else ''}"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return stderr


@pytest.mark.slow
def test_ctrl_c_on_a_live_run_is_a_clean_finish_and_keeps_the_recording(checkpoint_dir, tmp_path):
    """A live run (here --realtime) has no end: Ctrl-C is how it finishes, exit 0, the recording is kept."""
    import re

    from .conftest import moving_disc_frames, write_jpeg_folder
    from .test_cli import read_video

    folder = write_jpeg_folder(tmp_path / "f", moving_disc_frames(4) * 150)  # 600 frames at 30 fps: 20 s
    out = tmp_path / "rec.mp4"
    mattes = tmp_path / "m"
    proc = _greencam(checkpoint_dir, "--source", str(folder), "--realtime", "--bbox", "30,25,60,70",
                     "--output", str(out), "--matte-output", str(mattes))  # fmt: skip
    stderr = _interrupt_when(proc, lambda: len(list(tmp_path.glob(".m.greencam-tmp-*/*.png"))) >= 5, "live frames")
    assert proc.returncode == 0, stderr
    assert "interrupted after" not in stderr and "Traceback" not in stderr
    done = re.search(r"done: (\d+) frames out of", stderr)
    assert done, stderr
    # The recording and the mattes are kept (sinks on their own threads may drop a frame under load).
    assert 1 <= len(read_video(out)) <= int(done.group(1))
    assert 1 <= len(list(mattes.glob("*.png"))) <= int(done.group(1))


# --------------------------------------------------------------------------- item 11: --max-frames on live sources


@pytest.mark.parametrize("sync", ["on", "auto", "off"])
def test_max_frames_is_exact_on_a_live_source(checkpoint_dir, tmp_path, monkeypatch, sync):
    """The scheduler holds frames while the first (slow) mask is computed: they must not overshoot the limit."""
    from .conftest import moving_disc_frames, write_video
    from .test_cli import read_video

    monkeypatch.setenv("GREENCAM_CHECKPOINTS", str(checkpoint_dir))
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")
    source = write_video(tmp_path / "src.mp4", moving_disc_frames(4) * 30)  # 120 frames at 30 fps
    out = tmp_path / "o.mp4"
    result = runner.invoke(
        app,
        ["start", "--device", "cpu", "--resolution", "256", "--source", str(source), "--realtime",
         "--sync", sync, "--max-delay", "1000", "--bbox", "30,25,60,70", "--max-frames", "10", "--output", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "done: 10 frames" in result.output
    assert len(read_video(out)) == 10


# --------------------------------------------------------------------------- item 15: messages that mislead


def test_empty_bbox_is_a_malformed_bbox(no_env):
    from greenscreen_cam.errors import PromptError
    from greenscreen_cam.track.prompt import build_prompt

    with pytest.raises(PromptError, match=r"malformed --bbox '': expected x,y,w,h"):
        build_prompt("")
    result = runner.invoke(app, ["start", "--bbox", "", "--output", "o.mp4"])
    assert result.exit_code == 2 and "malformed --bbox ''" in result.output
    assert "--negative-point" not in result.output


def test_token_file_wins_over_the_environment(tmp_path, monkeypatch):
    from greenscreen_cam.app import read_token
    from greenscreen_cam.config import ServeSettings, load_settings
    from greenscreen_cam.errors import ConfigError

    token_file = tmp_path / "token.txt"
    token_file.write_text("from-the-file\n")
    monkeypatch.setenv("GREENCAM_TOKEN", "from-the-environment")
    # What `greencam serve --token-file token.txt` builds with GREENCAM_TOKEN set (Typer fills token from it).
    s = load_settings(None, {"token": "from-the-environment", "token_file": str(token_file)}, cls=ServeSettings,
                      defaults_file=None, user_file=None)  # fmt: skip
    s.validate()
    assert read_token(s) == "from-the-file"
    s.token = "from-the-flag"  # --token and --token-file both on the command line
    with pytest.raises(ConfigError, match="use either --token or --token-file, not both"):
        read_token(s)


def test_a_folder_given_as_config_is_called_a_folder(no_env, tmp_path):
    result = runner.invoke(app, ["config", "--config", str(tmp_path)])
    assert result.exit_code == 2
    assert "is a folder" in result.output and "not found" not in result.output


def test_json_config_is_read_as_json(no_env, tmp_path):
    good = tmp_path / "c.json"
    good.write_text(json.dumps({"model": "small", "smooth": 0.2, "outputs": ["virtual", "o.mp4"]}))
    result = runner.invoke(app, ["config", "--config", str(good), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["model"], data["smooth"], data["outputs"]) == ("small", 0.2, ["virtual", "o.mp4"])
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "small",}')
    result = runner.invoke(app, ["config", "--config", str(bad)])
    assert result.exit_code == 2 and "is not valid JSON" in result.output and "TOML" not in result.output
    other = tmp_path / "c.ini"
    other.write_text("[x]\n")
    result = runner.invoke(app, ["config", "--config", str(other)])
    assert result.exit_code == 2 and "unknown format '.ini'" in result.output


def test_greencam_config_json_round_trips(no_env, tmp_path):
    """`greencam config --json > my.json` gives a file `--config my.json` reads back unchanged."""
    first = runner.invoke(app, ["config", "--json"])
    saved = tmp_path / "my.json"
    saved.write_text(first.output)
    again = runner.invoke(app, ["config", "--json", "--config", str(saved)])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output) == json.loads(first.output)


@pytest.mark.parametrize("url", ["not a url", "http://bad host:8470", "http://gpu_box!:1"])
def test_a_malformed_server_url_is_refused_at_once(no_env, clip, url):
    result = runner.invoke(app, ["start", "--source", str(clip[0]), "--server", url, "--token", "t",
                                 "--bbox", "10,10,20,20", "--output", "o.mp4"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "is not an http(s)://host:port URL" in result.output
    assert "connecting to" not in result.output  # refused before anything opens or resolves


def test_https_to_a_plain_http_port_says_so(no_env, clip, tmp_path):
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.timeout = 1
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        result = runner.invoke(app, ["start", "--source", str(clip[0]), "--server", url, "--token", "t",
                                     "--bbox", "10,10,20,20", "--output", str(tmp_path / "o.mp4")])  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 8, result.output
    assert "SSLContext" not in result.output and "object at 0x" not in result.output
    assert f"the server speaks plain HTTP there; use http://127.0.0.1:{server.server_address[1]}" in result.output


def test_a_broken_video_gives_only_greencams_line(checkpoint_dir, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage" * 100)
    proc = _greencam(checkpoint_dir, "--source", str(bad), "--bbox", "1,1,5,5", "--output", str(tmp_path / "o.mp4"))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 4
    assert "moov atom" not in stderr
    assert [line for line in stderr.splitlines() if line.strip()] == [
        line for line in stderr.splitlines() if line.startswith("greencam: error: cannot read video")
    ], stderr
    assert stderr.strip()


def test_start_help_says_what_auto_does_by_default():
    import re

    result = runner.invoke(app, ["start", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    text = re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", result.output))
    assert "(default: on when no --bbox or --point is given)" in text
    assert not re.search(r"--auto\b[^(]*\(default: off\)", text)


# --------------------------------------------------------------------------- item 12: progress of offline jobs

_SNAP = {
    "frames_in": 0,
    "frames_out": 0,
    "tracked": 0,
    "dropped": 0,
    "input_fps": 3.0,
    "output_fps": 3.0,
    "tracker_fps": 3.0,
    "latency_p50_ms": 300.0,
    "latency_p95_ms": 350.0,
    "delay_p50_ms": 0.0,
    "delay_p95_ms": 0.0,
    "own_mask_share": 1.0,
    "keyed_frames": 1,
    "sync": "exact",
    "subject": "tracking",
    "seconds": 0.0,
}


def _status(interactive: bool, width: int = 200):
    import io

    from rich.console import Console

    from greenscreen_cam.config import Settings
    from greenscreen_cam.live.status import StatusLine

    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=interactive, color_system=None)
    return buf, StatusLine(console, Settings(device="cpu", resolution=256), interactive=interactive)


def test_offline_progress_in_a_log_every_5_s():
    buf, status = _status(interactive=False)
    with status:
        status.begin_job(120)
        for done, t in ((3, 1.0), (15, 5.0), (20, 6.0), (36, 12.0), (120, 40.0)):
            status.show(dict(_SNAP, frames_out=done, frames_in=done, seconds=t))
        status.summary(dict(_SNAP, frames_out=120, frames_in=120, seconds=125.0))
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("greencam: 3 of 120 frames (2%), elapsed 0:01, left 0:39 | in ")
    assert lines[1].startswith("greencam: 20 of 120 frames (17%), elapsed 0:06, left 0:30 | ")  # 5 s after 0:01
    assert lines[2].startswith("greencam: 36 of 120 frames (30%), elapsed 0:12, left 0:28 | ")
    assert lines[3].startswith("greencam: 120 of 120 frames (100%), elapsed 0:40, left 0:00 | ")
    assert lines[4].startswith("greencam: done: 120 frames out of 120 in 2 min 05 s ")
    assert len(lines) == 5


@pytest.mark.parametrize("width", [80, 200])
def test_offline_progress_bar_on_a_terminal(width):
    buf, status = _status(interactive=True, width=width)
    with status:
        status.begin_job(120)
        status.show(dict(_SNAP, frames_out=36, frames_in=36, seconds=12.0))
        status._live.refresh()
        shown = buf.getvalue()
    assert "━" in shown  # the bar
    assert "36 of 120 frames (30%), elapsed 0:12, left 0:28 | tracker" in shown


def test_progress_without_a_known_length():
    buf, status = _status(interactive=False)
    with status:
        status.begin_job(None)
        status.show(dict(_SNAP, frames_out=7, seconds=65.0))
    assert buf.getvalue().startswith("greencam: 7 frames, elapsed 1:05 | in ")


@pytest.mark.parametrize(
    "seconds, text", [(3.25, "3.2 s"), (59.9, "59.9 s"), (125.0, "2 min 05 s"), (3725.0, "1 h 02 min")]
)
def test_durations(seconds, text):
    from greenscreen_cam.live.status import format_duration

    assert format_duration(seconds) == text


# --------------------------------------------------------------------------- item 14: the live default keeps lip sync


def test_live_default_adds_at_most_90_ms_and_says_edges_suffer(checkpoint_dir, tmp_path, monkeypatch):
    """A CPU tracker (seconds per step here) cannot keep up: the picture waits at most --max-delay 90 ms."""
    import re

    from greenscreen_cam.config import Settings
    from greenscreen_cam.live.audio_sync import default_max_delay

    from .conftest import moving_disc_frames, write_video

    assert Settings().sync == "auto" and Settings().max_delay is None and Settings().audio_delay == "off"
    assert default_max_delay(None) == 90.0 and default_max_delay("auto") == 1000.0
    monkeypatch.setenv("GREENCAM_CHECKPOINTS", str(checkpoint_dir))
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")
    source = write_video(tmp_path / "src.mp4", moving_disc_frames(4) * 15)  # 60 frames at 30 fps: 2 s
    result = runner.invoke(
        app,
        ["start", "--device", "cpu", "--resolution", "256", "--source", str(source), "--realtime",
         "--bbox", "30,25,60,70", "--output", str(tmp_path / "o.mp4")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.count("the tracker is slower than --max-delay 90 ms allows") == 1
    assert "edges trail fast motion" in result.output and "use --sync on" in result.output
    delay = re.search(r"sync capped added delay p50 (\d+) ms / p95 (\d+) ms", result.output)
    assert delay, result.output
    assert 80 <= int(delay.group(1)) <= 120, "the cap, not 300 ms"


def test_status_line_says_when_edges_suffer():
    buf, status = _status(interactive=False)
    with status:
        status.show(dict(_SNAP, sync="capped", delay_p50_ms=90.0, delay_p95_ms=91.0, seconds=1.0))
        status.show(dict(_SNAP, sync="own", delay_p50_ms=20.0, delay_p95_ms=22.0, seconds=7.0))
    capped, own = buf.getvalue().splitlines()
    assert "sync capped +90/91 ms (edges lag)" in capped and "edges lag" not in own
