"""``greencam serve`` and ``greencam start --server`` as two real processes on 127.0.0.1 (tiny, 256 px, seeded weights)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from tests.conftest import REPO, moving_disc_frames, write_video

TOKEN = "cli-test-token-0123456789"
BOX = "25,28,66,64"
MODEL = ["--model", "tiny", "--device", "cpu", "--resolution", "256"]

# aioice leaves 127.0.0.1 out of its host candidates; keep the media on loopback in both processes.
LOOPBACK = (
    "import aioice.ice, sys; aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ['127.0.0.1']; "
    "from greenscreen_cam.cli import main; sys.argv[0] = 'greencam'; sys.exit(main())"
)


def greencam(*args: str) -> list[str]:
    return [sys.executable, "-c", LOOPBACK, *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mattes(folder: Path) -> list[np.ndarray]:
    files = sorted(folder.glob("*.png"))
    return [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]


def test_serve_and_start_server_key_every_frame_like_a_local_start(tiny_checkpoint: Path, tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.mp4", moving_disc_frames(8))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(
        greencam("serve", "--port", str(port), "--token", TOKEN, "--checkpoint", str(tiny_checkpoint), *MODEL),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert server.stderr is not None
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline and "serving" not in line:
            line = server.stderr.readline()
            assert line or server.poll() is None, "greencam serve exited"
        assert "serving" in line
        common = ["--source", str(clip), "--bbox", BOX, "--refine", "none", "--smooth", "0", *MODEL]
        remote = subprocess.run(
            greencam("start", "--server", f"http://127.0.0.1:{port}", "--token", TOKEN, *common,
                     "--output", str(tmp_path / "remote.mp4"), "--matte-output", str(tmp_path / "remote")),
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240,
        )  # fmt: skip
        assert remote.returncode == 0, remote.stderr
        local = subprocess.run(
            greencam("start", "--checkpoint", str(tiny_checkpoint), *common,
                     "--output", str(tmp_path / "local.mp4"), "--matte-output", str(tmp_path / "local")),
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240,
        )  # fmt: skip
        assert local.returncode == 0, local.stderr
    finally:
        server.terminate()
        server.wait(30)
    assert server.returncode is not None
    theirs, mine = mattes(tmp_path / "remote"), mattes(tmp_path / "local")
    assert len(theirs) == len(mine) == 8  # every frame, in order
    ious = []
    for a, b in zip(theirs, mine, strict=True):
        ra, rb = a > 127, b > 127
        assert 0.02 < ra.mean() < 0.98, "every frame got a mask (not the plain key colour)"
        ious.append(np.logical_and(ra, rb).sum() / max(1, np.logical_or(ra, rb).sum()))
    print(f"\nremote vs local matte IoU: {[round(float(v), 3) for v in ious]} mean {np.mean(ious):.3f}")
    assert np.mean(ious) >= 0.9
    assert re.search(r"done: 8 frames", remote.stderr), remote.stderr


def _serve(port: int, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("GREENCAM_TOKEN", None)
    return subprocess.Popen(
        greencam("serve", "--port", str(port), "--random-weights", *MODEL, *extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _until_serving(proc: subprocess.Popen[str], timeout: float = 120) -> list[str]:
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any("serving on" in line for line in lines):
        line = proc.stderr.readline()
        assert line or proc.poll() is None, f"greencam serve exited: {lines}"
        lines.append(line)
    assert any("serving on" in line for line in lines), lines
    return lines


def test_serve_stops_at_once_on_sigint_and_sigterm_and_a_generated_token_is_shown_once() -> None:
    import json
    import signal
    import urllib.request

    for sig in (signal.SIGINT, signal.SIGTERM):
        port = free_port()
        proc = _serve(port)
        try:
            lines = _until_serving(proc)
            (shown,) = [line for line in lines if line.startswith("greencam: token")]
            token = shown.split()[-1]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                assert json.loads(r.read())["sessions"] == 0
            t0 = time.monotonic()
            proc.send_signal(sig)
            _, rest = proc.communicate(timeout=20)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert proc.returncode == 0, (sig, rest)
        assert took < 10, f"stopping took {took:.1f} s"
        assert "Traceback" not in rest
        assert sum(token in line for line in [*lines, rest]) == 1  # printed once, never logged again
