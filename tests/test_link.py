"""``greencam serve`` and its RemoteTracker over real aiortc on 127.0.0.1 (SAM 2 tiny, 256 px, seeded weights)."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from greenscreen_cam.app import run_serve
from greenscreen_cam.config import ServeSettings
from greenscreen_cam.core import Frame
from greenscreen_cam.core import MaskResult as TrackerResult
from greenscreen_cam.errors import PromptError
from greenscreen_cam.link.client import RemoteTracker
from greenscreen_cam.link.protocol import (
    LinkAuthError,
    LinkFullError,
    LinkProtocolError,
    LinkTLSError,
    LinkUnreachableError,
    RemoteMask,
)
from greenscreen_cam.link.server import ServeLimits
from greenscreen_cam.media.sources import VideoFileSource
from greenscreen_cam.track.prompt import Prompt
from tests.conftest import REPO, moving_disc_frames, write_video

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("loopback_ice"),
]  # every test here runs a real server and real model steps; WebRTC on 127.0.0.1

TOKEN = "test-token-0123456789"
DISC_BOX = Prompt(box=(25.0, 28.0, 66.0, 64.0))  # the red disc of moving_disc_frames at 160x120
CORNER_BOX = Prompt(box=(110.0, 2.0, 48.0, 40.0))  # background, top right


class ServerThread:
    """app.run_serve (the CLI's host) on a thread, with its event lines and a stop switch."""

    def __init__(self, model: Any, limits: ServeLimits | None = None, **kw: Any) -> None:
        opts = {"port": 0, "token": TOKEN, "model": "tiny", "device": "cpu", "resolution": 256, "min_fps": 0}
        self.opts = ServeSettings(**{**opts, **kw})
        self.limits = limits or ServeLimits(idle_timeout=2.0)
        self.events: list[str] = []
        self.stop = threading.Event()
        self._ready = threading.Event()
        self.url = ""
        self.error: BaseException | None = None

        def target() -> None:
            try:
                run_serve(
                    self.opts, say=self.events.append, ready=self._on_ready, stop=self.stop, model=model,
                    limits=self.limits,
                )  # fmt: skip
            except BaseException as e:  # noqa: BLE001 - reported by the test
                self.error = e
                self._ready.set()

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()
        assert self._ready.wait(30), "server did not start"
        if self.error is not None:
            raise self.error

    def _on_ready(self, url: str) -> None:
        self.url = url
        self._ready.set()

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(20)
        assert not self.thread.is_alive(), "server did not stop"


@pytest.fixture(scope="module")
def server(tiny_model: Any) -> Iterator[ServerThread]:
    s = ServerThread(tiny_model, max_sessions=3)
    yield s
    s.close()


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def decoded_clip(tmp_path: Path, n: int = 8) -> list[Frame]:
    """A real mp4 written and decoded with OpenCV: RGB frames with the capture timestamps of the decode."""
    path = write_video(tmp_path / "clip.mp4", moving_disc_frames(n))
    src = VideoFileSource(path)
    frames = []
    while (f := src.read()) is not None and len(frames) < n:
        frames.append(f)
    src.close()
    assert len(frames) == n
    return frames


def remote_masks(url: str, frames: list[Frame], prompt: Prompt) -> tuple[list[RemoteMask], dict[str, Any]]:
    h, w = frames[0].image.shape[:2]
    with RemoteTracker(url, TOKEN, width=w, height=h) as tracker:
        tracker.reselect(prompt)
        masks = [tracker.track_sync(f, timeout=60) for f in frames]
        return masks, tracker.stats()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def upsampled(logits: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Logits (one plane, or one per subject) upsampled as sam2 does, each plane before they meet."""
    from greenscreen_cam.key.compositor import upsample_union

    return upsample_union(logits, hw, exact=True)


# --------------------------------------------------------------------------- tracking


def test_offline_clip_every_frame_gets_its_own_mask_like_local(server: ServerThread, tiny_model, tmp_path) -> None:
    from greenscreen_cam.track.segmenter import StreamingTracker

    frames = decoded_clip(tmp_path, 8)
    masks, stats = remote_masks(server.url, frames, DISC_BOX)
    # Every frame got exactly its own mask, mapped back through the echoed RTP timestamp.
    assert [m.frame_index for m in masks] == [f.index for f in frames]
    assert [m.timestamp for m in masks] == [f.timestamp for f in frames]
    assert all(m.logits.shape == (64, 64) and m.logits.dtype == np.float32 for m in masks)
    assert all(isinstance(m, TrackerResult) and m.selected for m in masks)  # what the pipeline's scheduler takes
    assert all(m.state in ("tracking", "lost") for m in masks)
    assert stats["unmatched"] == 0 and stats["masks"] == len(frames)
    # The same frames tracked locally with the same weights: the codec on the way up is the only difference.
    local = StreamingTracker(tiny_model)
    hw = frames[0].image.shape[:2]
    ious = []
    for i, (f, m) in enumerate(zip(frames, masks, strict=True)):
        res = local.prompt(f.image, DISC_BOX) if i == 0 else local.track(f.image)
        mine = upsampled(res.low_res_numpy(), hw) > 0
        theirs = upsampled(m.logits, hw) > 0
        assert 0.02 < mine.mean() < 0.98, "a degenerate mask would make the comparison meaningless"
        ious.append(iou(mine, theirs))
    print(f"\nremote vs local mask IoU per frame: {[round(v, 3) for v in ious]} mean {np.mean(ious):.3f}")
    assert np.mean(ious) >= 0.9


def test_a_remote_selection_of_two_subjects_keys_their_union_like_a_local_multitracker(
    server: ServerThread, tiny_model, tmp_path
) -> None:
    """``start --server --bbox A --bbox B``: the server tracks both and keys their union, like a local run."""
    from greenscreen_cam.track.multi import MultiTracker
    from greenscreen_cam.track.prompt import Selection

    frames = decoded_clip(tmp_path, 6)
    second = Prompt(box=(100.0, 10.0, 50.0, 60.0))
    both = Selection((DISC_BOX, second))
    masks, stats = remote_masks(server.url, frames, both)  # type: ignore[arg-type]  # a Selection is a prompt too
    one, _ = remote_masks(server.url, frames, DISC_BOX)
    assert stats["unmatched"] == 0 and all(m.selected for m in masks)
    local = MultiTracker(tiny_model)
    hw = frames[0].image.shape[:2]
    ious, grew = [], []
    for i, (f, m, m1) in enumerate(zip(frames, masks, one, strict=True)):
        res = local.prompt(f.image, both) if i == 0 else local.track(f.image)
        assert m.logits.shape == (2, 64, 64)  # one plane per subject
        mine = upsampled(res.low_res_numpy(), hw) > 0
        theirs = upsampled(m.logits, hw) > 0
        assert 0.02 < mine.mean() < 0.98, "a degenerate mask would make the comparison meaningless"
        ious.append(iou(mine, theirs))
        grew.append(theirs.sum() - (upsampled(m1.logits, hw) > 0).sum())
    print(f"\nremote vs local two-subject IoU per frame: {[round(v, 3) for v in ious]}")
    assert np.mean(ious) >= 0.9
    assert max(grew) > 0, "the second subject adds to the key"


def test_a_remote_subject_is_dropped_by_its_number_and_the_other_keeps_tracking(server: ServerThread, tmp_path) -> None:
    """The preview's ``d`` with ``start --server``: the subject under the cursor goes, the other stays."""
    from greenscreen_cam.track.prompt import Selection

    frames = decoded_clip(tmp_path, 6)
    h, w = frames[0].image.shape[:2]
    events: list[str] = []
    with RemoteTracker(server.url, TOKEN, width=w, height=h, on_event=events.append) as tracker:
        assert tracker.subject_at(10, 10) is None  # no mask yet
        tracker.reselect(Selection((DISC_BOX, Prompt(box=(100.0, 10.0, 50.0, 60.0)))))
        masks = [tracker.track_sync(f, timeout=60) for f in frames[:3]]
        assert all(m.logits is not None and m.logits.shape == (2, 64, 64) for m in masks)
        covered = [(x, y) for y in range(2, h, 4) for x in range(2, w, 4) if tracker.subject_at(x, y) is not None]
        assert covered, "neither subject covers any pixel: nothing to drop"
        index = tracker.subject_at(*covered[0])
        assert index in (0, 1)
        with pytest.raises(PromptError, match="no subject 3 to drop: 2 tracked"):
            tracker.drop_subject(2)
        assert tracker.drop_subject(index) == 1
        after = [tracker.track_sync(f, timeout=60) for f in frames[3:]]
        # The drop goes on the data channel, the frames as video: it applies within a frame or two.
        assert after[-1].logits is not None and after[-1].logits.shape == (64, 64)
        assert all(m.state in ("tracking", "lost") for m in after)
    assert not [e for e in events if e.startswith("server:")], events


def test_clients_at_once_each_get_their_own_masks(server: ServerThread, tiny_model, tmp_path) -> None:
    """Two cameras with different scenes and prompts, and one that never prompts, on one batched model."""
    from greenscreen_cam.track.segmenter import StreamingTracker

    clips = {"a": decoded_clip(tmp_path, 5)}
    (tmp_path / "b").mkdir()
    mirrored = [np.ascontiguousarray(f[:, ::-1]) for f in moving_disc_frames(5, seed=3)]
    src = VideoFileSource(write_video(tmp_path / "b" / "clip.mp4", mirrored))
    clips["b"] = [src.read() for _ in range(5)]  # type: ignore[misc]
    src.close()
    clips["c"] = clips["a"][:3]
    prompts: dict[str, Prompt | None] = {"a": DISC_BOX, "b": Prompt(box=(69.0, 28.0, 66.0, 64.0)), "c": None}
    out: dict[str, list[RemoteMask]] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            frames = clips[name]
            with RemoteTracker(server.url, TOKEN, width=160, height=120) as tracker:
                if prompts[name] is not None:
                    tracker.reselect(prompts[name])
                out[name] = [tracker.track_sync(f, timeout=90) for f in frames]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(name,)) for name in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors, errors
    for name, frames in clips.items():
        assert [m.frame_index for m in out[name]] == [f.index for f in frames]
        assert [m.timestamp for m in out[name]] == [f.timestamp for f in frames]
    # No prompt, no tracking: that camera only gets "waiting" masks.
    assert all(m.state == "waiting" and not m.visible and not m.selected and m.logits is None for m in out["c"])
    # Each prompted camera's masks are its own: they match a local tracker on its own frames and prompt.
    own, cross = [], []
    for name in ("a", "b"):
        tracker = StreamingTracker(tiny_model)
        for i, (f, m) in enumerate(zip(clips[name], out[name], strict=True)):
            assert m.state in ("tracking", "lost")
            res = tracker.prompt(f.image, prompts[name]) if i == 0 else tracker.track(f.image)  # type: ignore[arg-type]
            local = res.low_res_numpy() > 0
            own.append(iou(local, m.logits > 0))
            other = out["b" if name == "a" else "a"][i]
            cross.append(iou(local, other.logits > 0))
    print(f"\nown-session IoU {np.mean(own):.3f}, other-session IoU {np.mean(cross):.3f}")
    assert np.mean(own) >= 0.9
    assert np.mean(cross) < np.mean(own) - 0.1


# --------------------------------------------------------------------------- HTTP


def _request(
    url: str, method: str = "POST", body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body if method == "POST" else None, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_bad_requests_get_their_status_and_one_log_line(server: ServerThread) -> None:
    sdp = {"Content-Type": "application/sdp"}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = len(server.events)
    cases = [
        (_request(server.url + "/whip", body=b"v=0\r\n", headers=sdp), 401, "no bearer token"),
        (
            _request(server.url + "/whip", body=b"v=0\r\n", headers={**sdp, "Authorization": "Bearer nope"}),
            401,
            "wrong",
        ),
        (
            _request(server.url + "/whip", body=b"v=0\r\n", headers={**auth, "Content-Type": "text/plain"}),
            400,
            "Content-Type",
        ),
        (_request(server.url + "/whip", body=b"hello", headers={**auth, **sdp}), 400, "not an SDP"),
        (_request(server.url + "/whip", body=b"v=0\r\nm=video 9 x\r\n", headers={**auth, **sdp}), 400, "bad SDP"),
        (_request(server.url + "/whip", body=b"v" * 200_000, headers={**auth, **sdp}), 413, "over"),
        (_request(server.url + "/whip/nope", "DELETE", headers=auth), 404, "no such session"),
        (_request(server.url + "/whip/nope", "DELETE"), 401, "no bearer token"),
    ]
    for (status, text), want_status, fragment in cases:
        assert status == want_status, (status, text)
        assert fragment in text
    lines = server.events[before:]
    assert len(lines) == len(cases)
    assert [int(line.split()[0]) for line in lines] == [c[1] for c in cases]
    assert not any(TOKEN in line or TOKEN[:8] in line for line in server.events)
    info = server.health()  # still serving
    assert isinstance(info.pop("step_ms"), dict)
    assert info == {
        "status": "ok",
        "sessions": 0,
        "max_sessions": 3,
        "model": "tiny",
        "device": "cpu",
        "resolution": 256,
    }


def test_client_errors_are_one_line_link_errors(server: ServerThread, tiny_model) -> None:
    with pytest.raises(LinkAuthError, match="refused the token"):
        RemoteTracker(server.url, "wrong-token", width=160, height=120).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    with pytest.raises(LinkUnreachableError, match="cannot reach"):
        RemoteTracker(f"http://127.0.0.1:{free_port}", TOKEN, width=160, height=120, connect_timeout=3).start()
    with pytest.raises(LinkTLSError, match="TLS"):
        RemoteTracker(server.url.replace("http:", "https:"), TOKEN, width=160, height=120, connect_timeout=3).start()
    # A server with room for one session turns the second away with 503.
    small = ServerThread(tiny_model, max_sessions=1)
    try:
        with RemoteTracker(small.url, TOKEN, width=160, height=120):
            assert small.health()["sessions"] == 1
            with pytest.raises(LinkFullError, match="server full: 1 of 1"):
                RemoteTracker(small.url, TOKEN, width=160, height=120).start()
            assert (
                _request(
                    small.url + "/whip",
                    body=b"v=0",
                    headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/sdp"},
                )[0]
                == 503
            )
        wait_for(lambda: small.health()["sessions"] == 0, 10, "the DELETE to free the session")
    finally:
        small.close()


def test_a_malformed_answer_is_a_protocol_error(tmp_path) -> None:
    from aiohttp import web

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "resolution": 256})

    async def whip(request: web.Request) -> web.Response:
        return web.Response(status=201, text="this is not SDP", headers={"Location": "/whip/x"})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/whip", whip)
    url, stop = _serve_app(app)
    try:
        with pytest.raises(LinkProtocolError, match="without an SDP answer"):
            RemoteTracker(url, TOKEN, width=160, height=120, connect_timeout=5).start()
    finally:
        stop()


def _serve_app(app: Any) -> tuple[str, Callable[[], None]]:
    import asyncio

    from aiohttp import web

    started = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        box["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
        box["loop"], box["runner"] = loop, runner
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(10)

    def stop() -> None:
        box["loop"].call_soon_threadsafe(box["loop"].stop)
        t.join(10)

    return box["url"], stop


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def test_tls_serves_https_and_untrusted_certificates_are_refused(tiny_model, tmp_path) -> None:
    cert, key = _self_signed(tmp_path)
    tls = ServerThread(tiny_model, cert_file=str(cert), key_file=str(key))
    try:
        assert tls.url.startswith("https://")
        with pytest.raises(LinkTLSError, match="TLS"):
            RemoteTracker(tls.url, TOKEN, width=160, height=120, connect_timeout=5).start()
        with RemoteTracker(tls.url, TOKEN, width=160, height=120, cafile=cert) as tracker:
            assert tracker.state == "waiting" and tracker.server_info["resolution"] == 256
        with pytest.raises(LinkProtocolError, match="no valid HTTP answer"):
            RemoteTracker(tls.url.replace("https:", "http:"), TOKEN, width=160, height=120, connect_timeout=5).start()
    finally:
        tls.close()


def test_a_generated_token_is_reported_once_and_required(tiny_model) -> None:
    s = ServerThread(tiny_model, token=None)
    try:
        shown = [line for line in s.events if line.startswith("token")]
        assert len(shown) == 1
        token = shown[0].rsplit(" ", 1)[-1]
        assert len(token) >= 24
        assert _request(s.url + "/whip", body=b"v=0", headers={"Content-Type": "application/sdp"})[0] == 401
        with RemoteTracker(s.url, token, width=160, height=120) as tracker:
            assert tracker.session_id
        assert sum(token in line for line in s.events) == 1
    finally:
        s.close()


# --------------------------------------------------------------------------- failures


CLIENT_SCRIPT = """
import sys, time
sys.path.insert(0, {repo!r})
import aioice.ice
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
from tests.conftest import moving_disc_frames
from greenscreen_cam.link.client import RemoteTracker
from greenscreen_cam.track.prompt import Prompt
from greenscreen_cam.core import Frame
frames = moving_disc_frames(10)
t = RemoteTracker({url!r}, {token!r}, width=160, height=120)
t.start()
t.reselect(Prompt(box=(25.0, 28.0, 66.0, 64.0)))
print("connected", flush=True)
for i in range(100000):
    t.submit(Frame(frames[i % 10], i))
    t.poll()
    time.sleep(0.1)
"""


def test_a_killed_client_has_its_session_freed(server: ServerThread) -> None:
    wait_for(lambda: server.health()["sessions"] == 0, 10, "earlier sessions to end")
    script = CLIENT_SCRIPT.format(repo=str(REPO), url=server.url, token=TOKEN)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "connected"
        wait_for(lambda: server.health()["sessions"] == 1, 10, "the client's session")
        time.sleep(1.0)  # let it stream a little
    finally:
        proc.kill()
        proc.wait(10)
    killed_at = time.monotonic()
    wait_for(lambda: server.health()["sessions"] == 0, 15, "the vanished client's session to be freed")
    print(f"\nsession freed {time.monotonic() - killed_at:.1f} s after the client was killed")
    assert any("ended (no video or message" in e or "connection failed" in e for e in server.events)


def test_a_server_restart_mid_stream_reconnects_and_resumes_tracking(tiny_model) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    first = ServerThread(tiny_model, port=port)
    frames = moving_disc_frames(10)
    states: list[str] = []
    events: list[str] = []
    tracker = RemoteTracker(
        first.url, TOKEN, width=160, height=120, liveness_timeout=2.0, max_backoff=1.0, on_event=events.append
    )
    tracker.start()
    second = None
    try:
        tracker.reselect(DISC_BOX)
        got: list[RemoteMask] = []
        stop_feeding = threading.Event()

        def feed() -> None:
            i = 0
            while not stop_feeding.is_set() and i < 2000:
                try:
                    tracker.submit(Frame(frames[i % 10], i))
                    got.extend(tracker.poll())
                except Exception:  # noqa: BLE001 - the test checks the states
                    return
                states.append(tracker.state)
                i += 1
                time.sleep(0.05)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        wait_for(
            lambda: any(m.state == "tracking" or m.state == "lost" for m in got), 30, "masks from the first server"
        )
        first.close()
        wait_for(lambda: tracker.state == "reconnecting", 15, "the client to notice")
        n_before = len(got)
        second = ServerThread(tiny_model, port=port)
        wait_for(lambda: tracker.stats()["reconnects"] == 1, 30, "the client to reconnect")
        wait_for(lambda: len(got) > n_before + 2 and got[-1].state in ("tracking", "lost"), 30, "tracking to resume")
        stop_feeding.set()
        feeder.join(10)
        assert "reconnecting" in states and states[-1] in ("tracking", "lost")
        assert any("reconnecting" in e for e in events) and any(e.startswith("connected") for e in events)
    finally:
        tracker.close()
        if second is not None:
            second.close()


def test_bad_channel_messages_get_an_error_and_the_session_goes_on(server: ServerThread, tmp_path) -> None:
    frames = decoded_clip(tmp_path, 2)
    events: list[str] = []
    with RemoteTracker(server.url, TOKEN, width=160, height=120, on_event=events.append) as tracker:
        bad = [
            "not json",
            '{"type": "dance"}',
            '{"type": "prompt", "box": [1, 2, 3, 4], "width": "abc", "height": 120}',
            '{"type": "prompt", "box": [1, 2, 3, 4]}',
            '{"type": "prompt", "box": null, "points": [], "labels": [], "width": 160, "height": 120}',
            '{"type": "prompt", "box": [1, 2, 30, 40], "width": 160, "height": 120, "add": "yes"}',
            '{"type": "prompt", "drop": 1}',  # no subject yet
            '{"type": "prompt", "drop": true}',
            '{"type": "prompt", "drop": 1.5}',
            '{"type": "prompt", "drop": 99}',
            '{"type": "prompt", "drop": 1, "box": [1, 2, 30, 40], "width": 160, "height": 120}',
            b"\x00binary",
        ]
        for msg in bad:
            tracker._call(lambda m=msg: tracker._channel.send(m))
        wait_for(lambda: sum(e.startswith("server:") for e in events) >= len(bad), 10, "an error per bad message")
        tracker.reselect(DISC_BOX)
        masks = [tracker.track_sync(f, timeout=60) for f in frames]
        assert [m.frame_index for m in masks] == [f.index for f in frames]
        assert all(m.state in ("tracking", "lost") for m in masks)
    assert sum("bad message" in e for e in server.events) >= len(bad) - 1


def test_live_submit_and_poll_map_masks_to_frames_and_busy_follows_them(server: ServerThread, tmp_path) -> None:
    frames = decoded_clip(tmp_path, 4)
    with RemoteTracker(server.url, TOKEN, width=160, height=120) as tracker:
        tracker.reselect(DISC_BOX)
        assert not tracker.busy and tracker.poll() == []
        got: list[RemoteMask] = []
        for f in frames:
            tracker.submit(f)
            assert tracker.busy  # pending, or on its way (pipeline_depth 1)
            wait_for(
                lambda f=f: bool(got.extend(tracker.poll()) or (got and got[-1].frame_index == f.index)), 60, "its mask"
            )
            wait_for(lambda: not tracker.busy, 5, "the tracker to be free")
        assert [m.frame_index for m in got] == [f.index for f in frames]
        assert [m.timestamp for m in got] == [f.timestamp for f in frames]
        assert all(m.received >= m.timestamp for m in got)
        stats = tracker.stats()
        assert stats["masks"] == 4 and stats["submitted"] == 4 and stats["dropped"] == 0
        assert stats["latency_p50_ms"] is not None and stats["downlink_kbps"] > 0


def test_offline_tracking_carries_on_through_a_server_restart(tiny_model, tmp_path) -> None:
    frames = decoded_clip(tmp_path, 5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    first = ServerThread(tiny_model, port=port)
    second: list[ServerThread] = []
    with RemoteTracker(first.url, TOKEN, width=160, height=120, liveness_timeout=1.5, max_backoff=0.5) as tracker:
        tracker.reselect(DISC_BOX)
        masks = [tracker.track_sync(f, timeout=60) for f in frames[:2]]
        first.close()
        restart = threading.Timer(1.0, lambda: second.append(ServerThread(tiny_model, port=port)))
        restart.start()
        try:
            masks += [tracker.track_sync(f, timeout=90) for f in frames[2:]]
        finally:
            restart.join(60)
        assert tracker.stats()["reconnects"] == 1
    for s in second:
        s.close()
    assert [m.frame_index for m in masks] == [f.index for f in frames]
    assert all(m.state in ("tracking", "lost") and m.logits is not None for m in masks)  # the prompt was re-sent


# --------------------------------------------------------------------------- structure


def test_every_peer_connection_is_built_from_the_settings() -> None:
    """aiortc's ``RTCPeerConnection()`` with no configuration asks Google's STUN server: only link/rtc builds one."""
    import ast

    calls = []
    for path in sorted((REPO / "greenscreen_cam").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name == "RTCPeerConnection":
                    calls.append((path.relative_to(REPO).as_posix(), len(node.args) + len(node.keywords)))
    assert calls == [("greenscreen_cam/link/rtc.py", 1)]


# --------------------------------------------------------------------------- hostile input (issue 18)

TURN_SECRET = "turn-secret-4242-abcdef"


class AppThread:
    """The embeddable API as a host would use it: create_app + serve_app on a loop of its own thread."""

    def __init__(self, model: Any, limits: ServeLimits | None = None, **kw: Any) -> None:
        import asyncio

        from greenscreen_cam.link.server import REGISTRY, create_app, serve_app

        opts = {"port": 0, "token": TOKEN, "model": "tiny", "device": "cpu", "resolution": 256, "min_fps": 0}
        settings = ServeSettings(**{**opts, "turn_password": TURN_SECRET, **kw})
        self.events: list[str] = []
        self.app = create_app(settings, token=TOKEN, model=model, limits=limits, on_event=self.events.append)
        self.registry = self.app[REGISTRY]
        self.loop = asyncio.new_event_loop()
        self._done = asyncio.Event()
        ready = threading.Event()
        self.url = ""

        def on_ready(url: str) -> None:
            self.url = url
            ready.set()

        def run() -> None:
            self.loop.run_until_complete(serve_app(self.app, "127.0.0.1", 0, ready=on_ready, until=self._done.wait()))
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(30), "server did not start"
        self.port = int(self.url.rsplit(":", 1)[1])

    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/health", timeout=timeout) as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._done.set)
        self.thread.join(20)
        assert not self.thread.is_alive(), "server did not stop"

    def __enter__(self) -> AppThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh TCP connection and read until the server closes it (or ``timeout``)."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and b"Content-Length: " in out:
                head, _, body = out.partition(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
    return out


def wait_for_events(app: AppThread, count: int, timeout: float = 5.0) -> list[str]:
    wait_for(lambda: len(app.events) >= count, timeout, f"{count} event lines")
    time.sleep(0.2)  # and no more than that
    return list(app.events)


def one_offer() -> str:
    """A real aiortc offer (video + the greencam data channel), gathered on loopback."""
    import asyncio

    from greenscreen_cam.link.rtc import new_peer_connection

    async def make() -> str:
        pc = new_peer_connection()
        pc.addTransceiver("video", direction="sendonly")
        pc.createDataChannel("greencam")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(make())


def parallel_offers(url: str, offer: str, n: int) -> list[tuple[int, str]]:
    """``n`` authorised ``POST /whip`` at once: ``[(status, Location or body)]``."""
    import asyncio

    import aiohttp

    async def run() -> list[tuple[int, str]]:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/sdp"}
        async with aiohttp.ClientSession() as http:

            async def one() -> tuple[int, str]:
                async with http.post(url + "/whip", data=offer, headers=headers) as r:
                    return r.status, r.headers.get("Location") or await r.text()

            return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), 120)

    return asyncio.run(run())


def test_parallel_offers_never_make_more_sessions_than_max_sessions(tiny_model) -> None:
    offer = one_offer()
    with AppThread(tiny_model, max_sessions=4, limits=ServeLimits(idle_timeout=60)) as app:
        results = parallel_offers(app.url, offer, 30)
        statuses = sorted(s for s, _ in results)
        assert statuses == [201] * 4 + [503] * 26, statuses
        assert all("server full" in text for s, text in results if s == 503)
        assert app.health()["sessions"] == 4
        for status, location in results:
            if status == 201:
                assert _request(app.url + location, "DELETE", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert app.health()["sessions"] == 0
        # A failed offer gives its reserved slot back.
        bad = _request(
            app.url + "/whip",
            body=b"v=0\r\nm=video 9 x\r\n",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/sdp"},
        )
        assert bad[0] == 400
        assert sorted(s for s, _ in parallel_offers(app.url, offer, 6)) == [201] * 4 + [503] * 2


def test_parallel_offers_respect_the_min_fps_floor(tiny_model) -> None:
    offer = one_offer()
    with AppThread(tiny_model, max_sessions=20, min_fps=3, limits=ServeLimits(idle_timeout=60)) as app:
        app.registry.worker.step_times = {1: 0.2}  # 5 masks/s alone, 2.5 each with two sessions
        results = parallel_offers(app.url, offer, 30)
        assert sorted(s for s, _ in results) == [201] + [503] * 29
        assert all("fps floor" in text for s, text in results if s == 503)
        assert app.health()["sessions"] == 1


HOSTILE = [
    # (name, raw request, expected status) -- issue 18 items 2, 3, 4 and 6
    ("over-long request line with the token", b"GET /health?token=" + TOKEN.encode() + b"x" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # noqa: E501
    ("over-long Authorization header", b"GET /health HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer " + TOKEN.encode() + b"y" * 9000 + b"\r\n\r\n", 400),  # noqa: E501
    ("negative Content-Length", b"POST /whip HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n", 400),
    ("Content-Length and chunked", b"POST /whip HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),  # noqa: E501
    ("NUL in a header", b"GET /health HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400),
    ("space in a header name", b"GET /health HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n", 400),
    ("lines without CRLF", b"GET /health HTTP/1.1\nHost: a\n\n", 400),
    ("raw ESC in the URL", b"GET /\x1b[2J HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("a forged log line", b"GET /%1b%5b31mX%0agreencam:%20session%20FAKE%20started HTTP/1.1\r\nHost: a\r\n\r\n", 404),
    ("terminal escapes, the token in the path", b"GET /%1b%5b2J" + TOKEN.encode() + b" HTTP/1.1\r\nHost: a\r\n\r\n", 404),  # noqa: E501
    ("the TURN password in the path", b"GET /" + TURN_SECRET.encode() + b" HTTP/1.1\r\nHost: a\r\n\r\n", 404),
    ("a token in a query", b"GET /nothing?token=" + TOKEN.encode() + b" HTTP/1.1\r\nHost: a\r\n\r\n", 404),
    ("a long file name under /web/", b"GET /web/" + b"a" * 5000 + b".js HTTP/1.1\r\nHost: a\r\n\r\n", 404),
    ("a wrong token that contains the real one", b"POST /whip HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x" + TOKEN.encode() + b"\r\nContent-Length: 0\r\n\r\n", 401),  # noqa: E501
]  # fmt: skip


def test_hostile_requests_get_a_4xx_one_clean_line_and_never_the_token(tiny_model, caplog) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    secrets_ = (TOKEN, TOKEN[:12], TURN_SECRET)
    server_path = str(REPO)
    with AppThread(tiny_model) as app:
        for name, data, status in HOSTILE:
            before = len(app.events)
            reply = raw_exchange(app.port, data, timeout=5)
            head = reply.split(b"\r\n", 1)[0].decode("latin-1")
            assert head.split()[1:2] == [str(status)], (name, reply[:300])
            lines = wait_for_events(app, before + 1)[before:]
            assert len(lines) == 1, (name, lines)
            line = lines[0]
            assert line.startswith(str(status)), (name, line)
            assert not any(s in line for s in secrets_), (name, line)
            assert not any(ord(c) < 32 or ord(c) == 127 for c in line), (name, line)  # no ESC, no newline
            assert server_path not in line and "Traceback" not in line, (name, line)
            text = reply.decode("latin-1")
            assert not any(s in text for s in secrets_) and server_path not in text, (name, text[:300])
        health = json.dumps(app.health())
        assert TOKEN not in health and TURN_SECRET not in health
    for record in caplog.records:  # nothing from aiohttp or anyone else: no traceback, no secret
        assert record.exc_info is None, record.getMessage()
        assert not any(s in record.getMessage() for s in secrets_), record.getMessage()
    assert not any("session FAKE started" in line.split(": ", 1)[0] for line in app.events)


def test_half_open_connections_are_closed_and_health_stays_fast(tiny_model) -> None:
    limits = ServeLimits(header_timeout=2.0, max_unauthenticated=32)
    with AppThread(tiny_model, limits=limits) as app:
        socks: list[socket.socket] = []
        try:
            started = time.monotonic()
            for _ in range(300):
                s = socket.create_connection(("127.0.0.1", app.port), timeout=5)
                s.sendall(b"GET /hea")
                socks.append(s)
            worst = 0.0
            for _ in range(5):  # /health answers at once while they hang
                t0 = time.monotonic()
                assert app.health(timeout=2)["status"] == "ok"
                worst = max(worst, time.monotonic() - t0)
            assert worst < 1.0, f"/health took {worst:.2f} s"
            open_ = set(range(len(socks)))
            deadline = started + limits.header_timeout + 8.0
            import select

            while open_ and time.monotonic() < deadline:
                readable, _, _ = select.select([socks[i] for i in open_], [], [], 0.5)
                for s in readable:
                    try:
                        data = s.recv(4096)
                    except (ConnectionResetError, TimeoutError):
                        data = b""
                    if not data:
                        open_.discard(socks.index(s))
            elapsed = time.monotonic() - started
            assert not open_, f"{len(open_)} of 300 half-open connections still open after {elapsed:.1f} s"
        finally:
            for s in socks:
                s.close()
        assert app.health()["status"] == "ok"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("a\x1b[2Jb", "a\\x1b[2Jb"),
        ("line\nforged: session FAKE started", "line\\x0aforged: session FAKE started"),
        ("nul\x00del\x7fc1\x9b", "nul\\x00del\\x7fc1\\x9b"),
        ("x" * 400, "x" * 300 + "…"),
    ],
)
def test_escape_writes_control_characters_visibly(text: str, expected: str) -> None:
    from greenscreen_cam.link.auth import escape

    assert escape(text) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f"GET /?token={TOKEN}&x=1", "GET /?token=***&x=1"),
        ("GET /?token=someone-elses&x=1", "GET /?token=***&x=1"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
        (f"path /{TOKEN}/x and {TURN_SECRET}", "path /***/x and ***"),
        ("a secret=s1 and password=p2", "a secret=*** and password=***"),
        ("nothing here", "nothing here"),
    ],
)
def test_redactor_hides_known_and_likely_secrets(line: str, expected: str) -> None:
    from greenscreen_cam.link.auth import Redactor

    assert Redactor([TOKEN, TURN_SECRET, None, ""]).redact(line) == expected


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer   abc ", "abc"), ("BEARER abc", "abc"), ("Basic abc", None), ("Bearer", None),
     ("Bearer ", None), ("", None), (None, None)],
)  # fmt: skip
def test_one_bearer_parser(header: str | None, token: str | None) -> None:
    from greenscreen_cam.link.auth import bearer_header, bearer_token

    assert bearer_token(header) == token
    assert bearer_token(bearer_header("t0k")["Authorization"]) == "t0k"


def test_the_session_operations_need_no_http(tiny_model) -> None:
    """What a second front end (an ASGI ingress) would call: plain async methods, domain errors."""
    import asyncio

    from greenscreen_cam.errors import ServeBadRequest, ServeBusy, ServeNotFound
    from greenscreen_cam.link.server import ModelWorker, SessionRegistry, status_of

    offer = one_offer()

    async def scenario() -> None:
        worker = ModelWorker(tiny_model, model_name="tiny", device="cpu", resolution=256)
        registry = SessionRegistry(ServeSettings(max_sessions=1), TOKEN, worker)
        await registry.start()
        try:
            session, answer = await registry.open_session(offer)
            assert answer.startswith("v=0") and "m=video" in answer
            assert registry.health()["sessions"] == 1
            with pytest.raises(ServeBusy, match="server full") as busy:
                await registry.open_session(offer)
            registry.set_prompt(session.id, {"type": "prompt", "box": [10, 10, 50, 50], "width": 160, "height": 120})
            with pytest.raises(LinkProtocolError, match="width"):
                registry.set_prompt(session.id, {"type": "prompt", "box": [10, 10, 50, 50]})
            with pytest.raises(ServeNotFound) as missing:
                registry.set_prompt("nope", None)
            await registry.close_session(session.id, "test")
            with pytest.raises(ServeNotFound):
                await registry.close_session(session.id, "again")
            with pytest.raises(ServeBadRequest) as bad:
                await registry.open_session("hello")
            assert [status_of(e.value) for e in (busy, missing, bad)] == [503, 404, 400]
            assert registry.health()["sessions"] == 0
        finally:
            await registry.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    with pytest.raises(ValueError, match="token is required"):
        SessionRegistry(ServeSettings(), "", ModelWorker(None, model_name="tiny", device="cpu", resolution=256))
