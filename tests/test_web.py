"""The browser pages of ``greencam serve`` in a real headless Chromium against a real server.

Chromium's fake camera plays a clip from ``../shared/data/videos`` (a synthetic clip when the
shared data is absent) converted to Y4M; ``greencam serve`` runs in a subprocess with seeded
random SAM 2 weights at 256 px on 127.0.0.1. Skipped with a reason when Chromium or
Playwright is missing. Screenshots are kept in each test's temporary folder.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO, SHARED_DATA, moving_disc_frames

KEY = (0, 175, 57)
TOKEN = "web-test-token-0123456789"
ALPHA_LOW, ALPHA_HIGH = 126, 129  # greenscreen_cam/web/keyer.js
MASK_WAIT_S = 150.0  # first masks: model load, ICE, a few CPU steps of SAM 2 on a shared machine


def _chromium() -> str:
    path = os.environ.get("GREENCAM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Chromium is not installed (Debian: apt install chromium); the browser tests need it")
    return path


try:
    from playwright import sync_api
except ImportError:  # the browser tests skip; the in-process WHEP test still runs
    sync_api = None

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

SERVER_SCRIPT = """
import sys
from greenscreen_cam.app import run_serve
from greenscreen_cam.config import ServeSettings

run_serve(
    ServeSettings(port=int(sys.argv[1]), token=sys.argv[2], resolution=256, device="cpu", min_fps=0, max_sessions=4),
    random_weights=True,
    say=lambda line: print("event:", line, file=sys.stderr, flush=True),
    ready=lambda url: print("READY", url, flush=True),
)
"""


# --------------------------------------------------------------------------- helpers


def write_y4m(frames_bgr: list[np.ndarray], path: Path, fps: int = 30) -> Path:
    """Write BGR uint8 frames as a 4:2:0 YUV4MPEG2 file (Chromium's fake camera input)."""
    h, w = frames_bgr[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames_bgr:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


def camera_clip(folder: Path, width: int = 640, seconds: float = 2.0, fps: int = 30) -> Path:
    """A short Y4M clip: the start of a shared video, or a synthetic moving disc when the data is absent."""
    videos = sorted((SHARED_DATA / "videos").glob("*.mp4")) if (SHARED_DATA / "videos").is_dir() else []
    frames: list[np.ndarray] = []
    if videos:
        src = next((v for v in videos if v.stem == "skateboarder"), videos[0])
        cap = cv2.VideoCapture(str(src))
        try:
            while len(frames) < int(seconds * fps):
                ok, frame = cap.read()
                if not ok:
                    break
                height = int(round(frame.shape[0] * width / frame.shape[1] / 2)) * 2
                frames.append(cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA))
        finally:
            cap.release()
    if not frames:
        frames = [
            cv2.cvtColor(f, cv2.COLOR_RGB2BGR)
            for f in moving_disc_frames(int(seconds * fps), width=width, height=width * 9 // 16)
        ]
    return write_y4m(frames, folder / "camera.y4m", fps)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``greencam serve`` (the link server's Python API) in a subprocess on 127.0.0.1, restartable."""

    def __init__(self, port: int, log: Path, threads: int = 1) -> None:
        self.port = port
        self.threads = threads
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 120.0) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(self.threads)}
        log = open(self.log, "a")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_SCRIPT, str(self.port), TOKEN],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            cwd=REPO,
        )
        log.close()
        lines: queue.Queue[str] = queue.Queue()

        def read(stream) -> None:
            for line in stream:
                lines.put(line)

        threading.Thread(target=read, args=(self.proc.stdout,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"greencam serve exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
                )
            try:
                if lines.get(timeout=0.5).startswith("READY"):
                    return
            except queue.Empty:
                continue
        raise AssertionError(f"greencam serve did not start within {timeout:g} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """Kill the server outright (no goodbye to its clients), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def http(method: str, url: str, token: str | None, body: bytes = b"", ctype: str = "application/sdp") -> int:
    """Status code of one HTTP request (bounded by a timeout)."""
    headers = {"Content-Type": ctype}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body if method == "POST" else None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def decode_png(data: bytes, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    assert img is not None
    return img


def data_url_image(url: str) -> np.ndarray:
    """A ``data:image/png;base64,...`` URL as a BGR uint8 image."""
    return decode_png(base64.b64decode(url.split(",", 1)[1]))


def mask_array(mask: dict) -> np.ndarray:
    """The page's mask (``{width, height, data}``) as an (h, w) uint8 probability array."""
    return np.asarray(mask["data"], np.uint8).reshape(mask["height"], mask["width"])


def expected_regions(prob: np.ndarray, width: int, height: int, margin: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Where the keyed frame must be exactly background / exactly camera: ``(bg, fg)`` bool (height, width).

    Mirrors keyer.js: bilinear upsampling of the probabilities, the smooth step between
    ALPHA_LOW and ALPHA_HIGH; pixels within ``margin`` of the anti-aliased edge are left out.
    """
    up = cv2.resize(prob.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    bg = cv2.erode((up <= ALPHA_LOW - 2).astype(np.uint8), kernel).astype(bool)
    fg = cv2.erode((up >= ALPHA_HIGH + 2).astype(np.uint8), kernel).astype(bool)
    return bg, fg


MASK_JS = """() => {
  const m = window.greencam.drawnMask;
  return m && {seq: m.seq, width: m.width, height: m.height, state: m.state, data: Array.from(m.data)};
}"""


def wait_for(page, expression: str, timeout_s: float, what: str) -> None:
    """Wait (bounded) for a JavaScript expression to be truthy, with the page's state in the failure."""
    try:
        page.wait_for_function(expression, timeout=timeout_s * 1000, polling=250)
    except sync_api.TimeoutError:
        state = page.evaluate(
            "JSON.stringify({stats: window.greencam && window.greencam.stats, "
            "message: (document.getElementById('message') || {}).textContent})"
        )
        raise AssertionError(f"{what}: not within {timeout_s:g} s; page: {state}") from None


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    server = ServeProcess(free_port(), tmp_path_factory.mktemp("serve") / "serve.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if sync_api is None:
        pytest.skip("Playwright's Python package is not installed (pip install playwright); the browser tests need it")
    chromium = _chromium()
    y4m = camera_clip(tmp_path_factory.mktemp("camera"))
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-video-capture={y4m}",
                "--force-color-profile=srgb",
                "--autoplay-policy=no-user-gesture-required",
                # A name that is neither localhost nor https: an insecure origin for getUserMedia.
                "--host-resolver-rules=MAP insecure.greencam.test 127.0.0.1",
            ],
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)  # for wait_for_function
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def open_tracking(page, serve: ServeProcess, query: str = "point=320,180") -> None:
    page.goto(f"{serve.url}/?token={TOKEN}&{query}&debug=1")
    wait_for(
        page,
        "window.greencam && greencam.stats.state === 'tracking' && greencam.stats.masks >= 2",
        MASK_WAIT_S,
        "capture page tracking",
    )
    # The token was read, then taken out of the address bar (history, bookmarks, screen shares).
    assert "token=" not in page.url and TOKEN not in page.evaluate("location.href + history.length")
    assert "debug=1" in page.url  # the rest of the address stays


# --------------------------------------------------------------------------- tests


def test_capture_page_tracks_and_keys_with_the_received_mask(page, serve: ServeProcess, tmp_path: Path) -> None:
    open_tracking(page, serve)
    masks = page.evaluate("greencam.stats.masks")
    wait_for(
        page,
        f"greencam.stats.masks > {masks} && greencam.stats.maskFps > 0 && greencam.stats.frames > 10",
        60,
        "more masks",
    )
    # Latency: each mask's frame tag found among the RTP timestamps this page sent.
    wait_for(page, "greencam.stats.latencyMs !== null", 60, "a capture-to-mask latency")
    stats = page.evaluate("greencam.stats")
    assert set(stats) >= {"frames", "masks", "maskFps", "latencyMs", "state"}
    assert 0 < stats["latencyMs"] < 60_000
    assert stats["state"] == "tracking" and stats["fps"] > 0
    # The viewer link for OBS appears once the session message has arrived: a stable link
    # that this browser binds to each of its sessions.
    wait_for(page, "greencam.viewerLink", 30, "the stable viewer link")
    assert page.is_visible("#viewer-link")
    link = page.get_attribute("#viewer-link", "href")
    assert link == page.evaluate("greencam.viewerLink")
    name, secret = link.removeprefix(f"{serve.url}/view/").split("?token=")
    session = page.evaluate("greencam.session")
    assert name != session["id"] and len(secret) >= 12
    # Neither the link's secret nor the session's viewer token can publish or bind links.
    for viewer_secret in (secret, session["viewerToken"]):
        assert http("POST", f"{serve.url}/whip", viewer_secret, b"v=0\r\n") == 401
        assert http("POST", f"{serve.url}/web/viewer-link", viewer_secret, b"{}", "application/json") == 401

    seq = page.evaluate("greencam.pause()")
    assert seq is not None
    mask = page.evaluate(MASK_JS)
    assert mask["seq"] == seq
    raw = data_url_image(page.evaluate("greencam.keyer.rawCanvas.toDataURL('image/png')"))
    shot_path = tmp_path / "capture-canvas.png"
    page.locator("#output").screenshot(path=str(shot_path))
    page.screenshot(path=str(tmp_path / "capture-page.png"))
    shot = cv2.imread(str(shot_path), cv2.IMREAD_COLOR)
    h, w = raw.shape[:2]
    assert shot.shape[:2] == (h, w), "the canvas should be shown at its own size"

    np.save(tmp_path / "mask.npy", mask_array(mask))
    cv2.imwrite(str(tmp_path / "raw-frame.png"), raw)
    bg, fg = expected_regions(mask_array(mask), w, h)
    assert bg.mean() > 0.02 and fg.mean() > 0.02, (
        f"mask has too little of one side: bg {bg.mean():.2f} fg {fg.mean():.2f}"
    )
    rgb = shot[..., ::-1].astype(int)
    assert (rgb[bg] == KEY).all(), (
        f"{(rgb[bg] != KEY).any(axis=1).mean():.3%} of background pixels are not the key colour"
    )
    diff = np.abs(shot.astype(int) - raw.astype(int)).max(axis=2)
    assert diff[fg].max() <= 2, f"subject pixels differ from the camera frame by up to {diff[fg].max()}"
    # Not a uniform picture: the subject region carries the camera's texture.
    assert raw[fg].std() > 5


RECORD_SENT_JS = """(() => {
  // The page's text messages to the server, newest last (at most 64): what a drag sent.
  window.sentTexts = [];
  const send = RTCDataChannel.prototype.send;
  RTCDataChannel.prototype.send = function (data) {
    if (typeof data === "string") {
      window.sentTexts.push(data);
      if (window.sentTexts.length > 64) window.sentTexts.shift();
    }
    return send.call(this, data);
  };
})();"""


def drag_on_canvas(page, start: tuple[float, float], end: tuple[float, float]) -> None:
    """A mouse drag on the keyed canvas between two points given as fractions of its size."""
    box = page.locator("#output").bounding_box()

    def at(fx: float, fy: float) -> tuple[float, float]:
        return box["x"] + fx * box["width"], box["y"] + fy * box["height"]

    page.mouse.move(*at(*start))
    page.mouse.down()
    page.mouse.move(*at((start[0] + end[0]) / 2, (start[1] + end[1]) / 2), steps=5)
    page.mouse.move(*at(*end), steps=5)
    page.mouse.up()


def test_without_a_prompt_the_page_asks_and_a_drag_selects(page, serve: ServeProcess) -> None:
    page.add_init_script(RECORD_SENT_JS)
    page.goto(f"{serve.url}/?token={TOKEN}&debug=1")
    wait_for(
        page,
        "window.greencam && greencam.stats.state === 'waiting' && greencam.stats.frames > 5",
        MASK_WAIT_S,
        "waiting for a prompt",
    )
    assert "No subject selected" in page.text_content("#message")
    # Nothing selected: the whole frame is the key colour.
    pixels = page.evaluate(
        "(() => { const c = greencam.keyer.canvas; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " const out = []; for (let i = 0; i < d.length; i += 4 * 997) out.push([d[i], d[i + 1], d[i + 2], d[i + 3]]);"
        " return out; })()"
    )
    assert len(pixels) > 100 and all(p == [*KEY, 255] for p in pixels)

    # Drag a box on the canvas: the prompt goes to the server, the address bar keeps it.
    drag_on_canvas(page, (0.3, 0.2), (0.7, 0.9))
    wait_for(page, "greencam.stats.state === 'tracking'", MASK_WAIT_S, "tracking after a drag")
    bbox = [int(v) for v in page.evaluate("new URLSearchParams(location.search).get('bbox')").split(",")]
    w, h = page.evaluate("[greencam.keyer.canvas.width, greencam.keyer.canvas.height]")
    expected = [0.3 * w, 0.2 * h, 0.4 * w, 0.7 * h]
    assert all(abs(a - b) <= 3 for a, b in zip(bbox, expected)), (bbox, expected)
    prompts = [m for m in map(json.loads, page.evaluate("window.sentTexts")) if m["type"] == "prompt"]
    assert prompts and all("add" not in m for m in prompts), "a plain drag replaces the selection"

    # Shift+drag sends the same prompt with "add": true; the server tracks both (no error, masks go on).
    masks = page.evaluate("greencam.stats.masks")
    page.keyboard.down("Shift")
    drag_on_canvas(page, (0.05, 0.1), (0.25, 0.6))
    page.keyboard.up("Shift")
    wait_for(page, "window.sentTexts.some((t) => JSON.parse(t).add === true)", 30, "an added subject sent")
    added = [m for m in map(json.loads, page.evaluate("window.sentTexts")) if m.get("add")]
    assert len(added) == 1 and added[0]["type"] == "prompt" and added[0]["add"] is True
    second = [0.05 * w, 0.1 * h, 0.2 * w, 0.5 * h]
    assert all(abs(a - b) <= 3 for a, b in zip(added[0]["box"], second)), (added[0]["box"], second)
    assert (added[0]["width"], added[0]["height"]) == (w, h)
    assert len(page.evaluate("new URLSearchParams(location.search).getAll('bbox')")) == 2
    wait_for(page, f"greencam.stats.masks > {masks + 2}", MASK_WAIT_S, "masks with two subjects")
    assert page.evaluate("greencam.stats.state") in ("tracking", "lost")
    assert "Server:" not in (page.text_content("#message") or "")
    # Two subjects come as two planes, each upsampled before they meet.
    wait_for(page, "greencam.lastMask && greencam.lastMask.planes.length === 2", MASK_WAIT_S, "a mask of two planes")

    # D drops the subject under the pointer: find a pixel that one subject covers, point at it, press D.
    target = page.evaluate(
        "(() => { const k = greencam.keyer, w = k.canvas.width, h = k.canvas.height;"
        " for (let y = 4; y < h; y += 8) for (let x = 4; x < w; x += 8) {"
        " const i = k.subjectAt(x, y, w, h); if (i >= 0) return [x / w, y / h, i]; } return null; })()"
    )
    assert target is not None, "neither subject covers any pixel: nothing to point at"
    box = page.locator("#output").bounding_box()
    page.mouse.move(box["x"] + target[0] * box["width"], box["y"] + target[1] * box["height"])
    masks = page.evaluate("greencam.stats.masks")
    page.keyboard.press("d")
    wait_for(page, "window.sentTexts.some((t) => JSON.parse(t).drop !== undefined)", 30, "a drop sent")
    drops = [m for m in map(json.loads, page.evaluate("window.sentTexts")) if "drop" in m]
    assert drops == [{"type": "prompt", "drop": target[2] + 1}]
    assert len(page.evaluate("new URLSearchParams(location.search).getAll('bbox')")) == 1
    wait_for(
        page,
        f"greencam.stats.masks > {masks + 2} && greencam.lastMask && greencam.lastMask.planes.length === 1",
        MASK_WAIT_S,
        "one subject left after the drop",
    )
    assert "Server:" not in (page.text_content("#message") or "")

    # Re-select: back to waiting, all key colour again.
    page.click("#reset")
    wait_for(page, "greencam.stats.state === 'waiting'", 60, "waiting after re-select")
    assert page.evaluate("new URLSearchParams(location.search).get('bbox')") is None


def test_wrong_token_and_missing_token_say_so(page, serve: ServeProcess) -> None:
    page.goto(f"{serve.url}/?token=not-the-token&point=10,10")
    wait_for(page, "greencam.stats.state === 'error'", 60, "wrong-token error")
    text = page.text_content("#message")
    assert "refused the token" in text and "401" in text
    assert page.is_visible("#token-form")
    # The right token typed into the field connects without reloading the page.
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    wait_for(page, "greencam.stats.state === 'tracking'", MASK_WAIT_S, "tracking after entering the token")
    assert not page.is_visible("#token-form")

    page.goto(f"{serve.url}/")
    wait_for(page, "greencam.stats.state === 'error'", 30, "missing-token message")
    assert "Enter the token" in page.text_content("#message")
    assert page.is_visible("#token")


def test_insecure_origin_is_explained(page, serve: ServeProcess) -> None:
    page.goto(f"http://insecure.greencam.test:{serve.port}/?token={TOKEN}")
    wait_for(page, "greencam.stats.state === 'error'", 30, "insecure-origin message")
    text = page.text_content("#message")
    assert "https" in text and "localhost" in text and "--cert-file" in text


def test_static_files_and_viewer_endpoint_refusals(serve: ServeProcess) -> None:
    with urllib.request.urlopen(f"{serve.url}/web/keyer.js", timeout=30) as resp:
        assert resp.status == 200 and "javascript" in resp.headers["Content-Type"]
        assert b"class Keyer" in resp.read()
    for bad in ("/web/__init__.py", "/web/..%2Fserver.py", "/web/nothing.js", "/web/.hidden.js"):
        assert http("GET", serve.url + bad, None) == 404, bad
    # Unknown sessions (or stable links not bound yet) are 404 for anyone: the viewer page retries.
    assert http("POST", f"{serve.url}/whep/no-such-session", "wrong", b"v=0\r\nm=video") == 404
    assert http("POST", f"{serve.url}/whep/no-such-session", TOKEN, b"v=0\r\nm=video") == 404
    assert http("POST", f"{serve.url}/web/viewer-link", "wrong", b"{}", "application/json") == 401
    body = b'{"session": "no-such-session", "name": "abcdefghijkl", "secret": "abcdefghijklmnop"}'
    assert http("POST", f"{serve.url}/web/viewer-link", TOKEN, body, "application/json") == 404
    assert http("POST", f"{serve.url}/web/viewer-link", TOKEN, b'{"session": 1}', "application/json") == 400


def test_a_mask_before_the_first_frame_is_keyed_not_a_page_error(page, serve: ServeProcess) -> None:
    """A mask can reach the viewer before any video frame: the canvas is then the default 300x150."""
    page.goto(f"{serve.url}/web/style.css")  # any page of the server: the module loads from its origin
    got = page.evaluate(
        """async () => {
            const { Keyer } = await import('/web/keyer.js');
            const canvas = document.createElement('canvas');  // 300x150 until a frame sizes it
            const keyer = new Keyer(canvas);
            const data = new Uint8Array(64 * 64).fill(255);
            keyer.setMask({ width: 64, height: 64, data, state: 'tracking', seq: 1 });
            const again = new Uint8Array(32 * 32).fill(0);
            keyer.setMask({ width: 32, height: 32, data: again, state: 'tracking', seq: 2 });
            const a = keyer.alphaCtx.getImageData(0, 0, keyer.alpha.width, keyer.alpha.height).data;
            return [keyer.alpha.width, keyer.alpha.height, a[3], a[a.length - 1]];
        }"""
    )
    assert got[:2] == [256, 150] and got[2] == got[3] == 0, got  # sized for the 32x32 mask, all background


def test_viewer_page_is_transparent_where_the_capture_page_keys(
    browser, page, serve: ServeProcess, tmp_path: Path
) -> None:
    open_tracking(page, serve)
    session = page.evaluate("greencam.session")
    sid, viewer_token = session["id"], session["viewerToken"]
    # The viewer token views but never publishes; a wrong token views nothing.
    assert http("POST", f"{serve.url}/whip", viewer_token, b"v=0\r\n") == 401
    assert http("POST", f"{serve.url}/whep/{sid}", "wrong-token", b"v=0\r\nm=video") == 401

    vctx = browser.new_context(viewport={"width": 640, "height": 360}, bypass_csp=True)
    try:
        viewer = vctx.new_page()
        verrors: list[str] = []
        viewer.on("pageerror", lambda e: verrors.append(str(e)))
        viewer.goto(f"{serve.url}/view/{sid}?token={viewer_token}&debug=1")
        wait_for(viewer, "greencam.stats.masks >= 2 && greencam.stats.frames >= 5", 90, "viewer masks and video")
        size = viewer.evaluate("[greencam.keyer.canvas.width, greencam.keyer.canvas.height]")
        viewer.set_viewport_size({"width": size[0], "height": size[1]})

        # Freeze the capture page, then show the same mask on the viewer (from its history).
        seq = page.evaluate("greencam.pause()")
        wait_for(viewer, f"greencam.history.has({seq})", 30, f"viewer receiving mask {seq}")
        assert viewer.evaluate(f"greencam.pause({seq})") == seq
        cmask = page.evaluate(MASK_JS)
        vmask = viewer.evaluate(MASK_JS)
        assert cmask["data"] == vmask["data"]

        cap_path, view_path = tmp_path / "capture-canvas.png", tmp_path / "viewer-page.png"
        page.locator("#output").screenshot(path=str(cap_path))
        viewer.screenshot(path=str(view_path), omit_background=True)
        cap = cv2.imread(str(cap_path), cv2.IMREAD_COLOR)[..., ::-1]
        view = cv2.imread(str(view_path), cv2.IMREAD_UNCHANGED)
        assert view.shape[2] == 4, "the viewer screenshot should carry transparency"
        assert not verrors, verrors
    finally:
        vctx.close()

    prob = mask_array(cmask)
    cbg, cfg = expected_regions(prob, cap.shape[1], cap.shape[0])
    vbg, vfg = expected_regions(prob, view.shape[1], view.shape[0])
    # The viewer itself: transparent exactly where the mask is background, opaque on the subject.
    assert (view[..., 3][vbg] == 0).all()
    assert (view[..., 3][vfg] == 255).all()
    assert vbg.mean() > 0.02 and vfg.mean() > 0.02
    # Side by side, sampled at the mask's cell centres: capture key colour <=> viewer transparent.
    mh, mw = prob.shape
    ys, xs = np.mgrid[0:mh, 0:mw] + 0.5
    cy, cx = (ys * cap.shape[0] / mh).astype(int), (xs * cap.shape[1] / mw).astype(int)
    vy, vx = (ys * view.shape[0] / mh).astype(int), (xs * view.shape[1] / mw).astype(int)
    sure = (cbg | cfg)[cy, cx] & (vbg | vfg)[vy, vx]
    keyed = (cap[cy, cx] == KEY).all(axis=-1)
    transparent = view[vy, vx, 3] == 0
    assert sure.sum() > 100
    assert (keyed[sure] == transparent[sure]).all(), (
        f"{(keyed[sure] != transparent[sure]).mean():.2%} of cells differ between the pages"
    )


def test_capture_page_and_viewer_link_survive_a_server_restart(browser, page, serve: ServeProcess) -> None:
    open_tracking(page, serve)
    first = page.evaluate("greencam.session.id")
    wait_for(page, "greencam.viewerLink", 30, "the stable viewer link")
    vctx = browser.new_context(viewport={"width": 640, "height": 360}, bypass_csp=True)
    try:
        viewer = vctx.new_page()
        viewer.goto(page.evaluate("greencam.viewerLink"))
        wait_for(viewer, "greencam.stats.masks >= 1", 90, "viewer on the stable link")

        serve.kill()
        wait_for(page, "greencam.stats.state === 'reconnecting'", 30, "reconnecting after the server died")
        wait_for(viewer, "greencam.stats.state === 'reconnecting'", 30, "viewer reconnecting")
        masks = page.evaluate("greencam.stats.masks")
        vmasks = viewer.evaluate("greencam.stats.masks")
        serve.start()
        wait_for(
            page,
            f"greencam.stats.state === 'tracking' && greencam.stats.masks >= {masks + 2} "
            f"&& greencam.session.id !== '{first}'",
            MASK_WAIT_S,
            "tracking again after the restart",
        )
        # The same viewer URL (as pasted into OBS) shows the new session by itself.
        wait_for(viewer, f"greencam.stats.masks > {vmasks} && greencam.stats.frames > 0", 90, "viewer back")
    finally:
        vctx.close()


# --------------------------------------------------------------------------- the WHEP endpoint in process


class StubSession:
    """The session API web.py relies on, over a real aiortc relay of a synthetic video track."""

    def __init__(self, sid: str, viewer_token: str) -> None:
        from aiortc import VideoStreamTrack
        from aiortc.contrib.media import MediaRelay

        self.id, self.viewer_token = sid, viewer_token
        self.source = VideoStreamTrack()
        self.relay = MediaRelay()
        self.listeners: list = []

    def relay_track(self):
        return self.relay.subscribe(self.source, buffered=False)

    def add_mask_listener(self, fn) -> None:
        self.listeners.append(fn)

    def remove_mask_listener(self, fn) -> None:
        if fn in self.listeners:
            self.listeners.remove(fn)


class StubServer:
    def __init__(self) -> None:
        self.sessions: dict[str, StubSession] = {}

    def check_token(self, token: str) -> bool:
        return token == TOKEN


async def _viewer_offer():
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    channel = pc.createDataChannel("greencam", ordered=False, maxRetransmits=0)
    await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers here: nothing to trickle
    return pc, channel


async def _until(predicate, timeout_s: float, what: str) -> None:
    import asyncio

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        await asyncio.sleep(0.05)


def test_whep_viewer_gets_video_and_masks_and_is_cleaned_up() -> None:
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer
    from aiortc import RTCSessionDescription

    from greenscreen_cam.link import web as pages
    from greenscreen_cam.link.protocol import decode_mask, encode_mask

    async def scenario() -> None:
        server = StubServer()
        session = server.sessions["s1"] = StubSession("s1", "viewer-token")
        app = web.Application(client_max_size=64 * 1024)
        hub = pages.add_routes(app, server)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        pcs = []
        try:
            # Refusals: wrong token, wrong type, garbage SDP, oversized body.
            offer_pc, offer_channel = await _viewer_offer()
            pcs.append(offer_pc)
            received: list[bytes] = []
            offer_channel.on("message", received.append)
            sdp = offer_pc.localDescription.sdp
            headers = {"Content-Type": "application/sdp"}
            r = await client.post("/whep/s1", data=sdp, headers={**headers, "Authorization": "Bearer nope"})
            assert r.status == 401
            r = await client.post("/whep/s1", data=sdp, headers={"Authorization": "Bearer viewer-token"})
            assert r.status == 415
            r = await client.post(
                "/whep/s1", data="v=0\r\nm=video nonsense", headers={**headers, "Authorization": "Bearer viewer-token"}
            )
            assert r.status == 400
            r = await client.post(
                "/whep/s1", data="v=0 " + "x" * 70000, headers={**headers, "Authorization": "Bearer viewer-token"}
            )
            assert r.status == 413
            assert not hub.viewers and not session.listeners

            # A viewer with the viewer token: video arrives, and so do the session's masks.
            r = await client.post("/whep/s1", data=sdp, headers={**headers, "Authorization": "Bearer viewer-token"})
            assert r.status == 201, await r.text()
            location = r.headers["Location"]
            assert location.startswith("/whep/s1/")
            tracks = []
            offer_pc.on("track", tracks.append)
            await offer_pc.setRemoteDescription(RTCSessionDescription(sdp=await r.text(), type="answer"))
            await _until(lambda: tracks, 10, "video track")
            frame = await asyncio.wait_for(tracks[0].recv(), 20)
            assert frame.width > 0 and frame.height > 0
            viewer = next(iter(hub.viewers.values()))
            # Built from the (empty) ICE settings, not aiortc's default that asks Google's STUN server.
            assert viewer.pc._RTCPeerConnection__configuration.iceServers == []
            await _until(lambda: viewer.channel is not None and viewer.channel.readyState == "open", 10, "channel open")
            assert len(session.listeners) == 1
            prob = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
            message = encode_mask(1234, 7, 0, 1.5, prob)
            for _ in range(20):  # unordered, no retransmits: send a few until one arrives
                session.listeners[0](message)
                await asyncio.sleep(0.1)
                if received:
                    break
            assert received, "no mask reached the viewer"
            got = decode_mask(received[0])
            assert (got.tag, got.seq) == (1234, 7) and np.array_equal(got.probability, prob)

            # DELETE ends it: peer connection closed, listener removed.
            r = await client.delete(location, headers={"Authorization": "Bearer viewer-token"})
            assert r.status == 200
            assert not hub.viewers and not session.listeners
            r = await client.delete(location, headers={"Authorization": "Bearer viewer-token"})
            assert r.status == 404

            # The publisher token views too; the viewer goes when its session ends.
            pc2, _ = await _viewer_offer()
            pcs.append(pc2)
            r = await client.post(
                "/whep/s1", data=pc2.localDescription.sdp, headers={**headers, "Authorization": f"Bearer {TOKEN}"}
            )
            assert r.status == 201
            await pc2.setRemoteDescription(RTCSessionDescription(sdp=await r.text(), type="answer"))
            assert len(hub.viewers) == 1 and len(session.listeners) == 1
            # A viewer that goes away (browser tab closed) is cleaned up too.
            await pc2.close()
            await _until(lambda: not hub.viewers, 20, "viewer closed after its peer left")
            assert not session.listeners

            pc3, _ = await _viewer_offer()
            pcs.append(pc3)
            r = await client.post(
                "/whep/s1", data=pc3.localDescription.sdp, headers={**headers, "Authorization": "Bearer viewer-token"}
            )
            assert r.status == 201
            await pc3.setRemoteDescription(RTCSessionDescription(sdp=await r.text(), type="answer"))
            assert len(hub.viewers) == 1 and len(session.listeners) == 1
            del server.sessions["s1"]
            await _until(lambda: not hub.viewers, 10, "viewer closed after its session ended")
            assert not session.listeners
        finally:
            for pc in pcs:
                await pc.close()
            await hub.close_all()
            await client.close()

    # Its own thread and event loop: Playwright's sync API keeps a loop running on this thread.
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(asyncio.wait_for(scenario(), 120))
        except BaseException as e:  # noqa: BLE001 - re-raised below, on the test's thread
            errors.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(150)
    assert not worker.is_alive(), "the WHEP scenario did not finish"
    if errors:
        raise errors[0]


# --------------------------------------------------------------------------- measurement (not a test)


def _cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds (Linux /proc)."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / hz
    return total


def _chromium_pids() -> list[int]:
    """Chromium processes started (through Playwright's driver) by this process."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [os.getpid()]
    while todo:
        for kid in children.get(todo.pop(), []):
            todo.append(kid)
            with_name = Path(f"/proc/{kid}/comm")
            if with_name.exists() and "chrom" in with_name.read_text():
                found.append(kid)
    return found


def measure(width: int = 640, seconds: float = 30.0, threads: int = 2, viewer: bool = True) -> list[dict]:
    """The capture page (and a viewer) in headless Chromium against greencam serve, tiny@256 on CPU.

    Returns one dict per phase: page frame rate, masks/s, capture->mask latency p50/p95
    (ms, from the RTP timestamps the page sent), Chromium's and the server's CPU
    (% of one core), main-thread keying time per frame. Run it as
    ``python -m tests.test_web [WIDTH] [SECONDS]``.
    """
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="greencam-web-bench-"))
    y4m = camera_clip(folder, width=width)
    server = ServeProcess(free_port(), folder / "serve.log", threads=threads)
    server.start()
    results = []
    try:
        with sync_api.sync_playwright() as p:
            b = p.chromium.launch(
                executable_path=_chromium(),
                args=[
                    "--use-fake-device-for-media-stream",
                    "--use-fake-ui-for-media-stream",
                    f"--use-file-for-fake-video-capture={y4m}",
                ],
            )
            pg = b.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=True).new_page()
            h = int(round(width * 9 / 16))
            pg.goto(f"{server.url}/?token={TOKEN}&bbox={width // 3},{h // 8},{width // 3},{h * 3 // 4}")
            pg.wait_for_function("greencam.stats.state === 'tracking' && greencam.stats.masks >= 3", timeout=180_000)
            time.sleep(5)

            def phase(extra: dict) -> dict:
                pids = _chromium_pids()
                s0 = pg.evaluate("({f: greencam.stats.frames, m: greencam.stats.masks, n: greencam.latencies.length})")
                c0, sc0, t0 = _cpu_seconds(pids), _cpu_seconds([server.proc.pid]), time.monotonic()
                time.sleep(seconds)
                s1 = pg.evaluate(
                    "({f: greencam.stats.frames, m: greencam.stats.masks, lat: greencam.latencies, "
                    "drawMs: greencam.stats.drawMs, size: [greencam.keyer.canvas.width, greencam.keyer.canvas.height]})"
                )
                dt = time.monotonic() - t0
                lat = np.array(s1["lat"][s0["n"] :] or [np.nan])
                return {
                    "frame": s1["size"],
                    "page_fps": round((s1["f"] - s0["f"]) / dt, 1),
                    "masks_per_s": round((s1["m"] - s0["m"]) / dt, 2),
                    "latency_p50_ms": round(float(np.nanpercentile(lat, 50))),
                    "latency_p95_ms": round(float(np.nanpercentile(lat, 95))),
                    "chromium_cpu_pct": round(100 * (_cpu_seconds(pids) - c0) / dt, 1),
                    "server_cpu_pct": round(100 * (_cpu_seconds([server.proc.pid]) - sc0) / dt, 1),
                    "draw_ms": s1["drawMs"],
                    "loadavg": Path("/proc/loadavg").read_text().split()[0],
                    **extra,
                }

            results.append(phase({"pages": "capture"}))
            if viewer:
                v = b.new_context(viewport={"width": 1280, "height": 720}, bypass_csp=True).new_page()
                v.goto(pg.evaluate("greencam.viewerLink"))
                v.wait_for_function("greencam.stats.masks >= 2 && greencam.stats.frames > 10", timeout=60_000)
                f0 = v.evaluate("greencam.stats.frames")
                t0 = time.monotonic()
                r = phase({"pages": "capture + viewer"})
                r["viewer_fps"] = round((v.evaluate("greencam.stats.frames") - f0) / (time.monotonic() - t0), 1)
                results.append(r)
            b.close()
    finally:
        server.stop()
    return results


if __name__ == "__main__":
    import json

    args = [float(a) for a in sys.argv[1:]]
    for row in measure(int(args[0]) if args else 640, args[1] if len(args) > 1 else 30.0):
        print(json.dumps(row))
