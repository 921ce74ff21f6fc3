"""Standard WHIP/WHEP clients against ``greencam serve`` (RFC 9725), over real aiortc and HTTP on 127.0.0.1.

The real GStreamer ``webrtcbin`` client is in ``tests/test_link_gstreamer.py``; these tests
need nothing beyond the project's own dependencies.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from greenscreen_cam.app import run_serve
from greenscreen_cam.config import ServeSettings
from greenscreen_cam.link.server import ServeLimits

TOKEN = "whip-test-token-0123456789"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("loopback_ice"),
]  # a live server with the model (make test-fast skips it); WebRTC on 127.0.0.1


class Serve:
    """``greencam serve``'s host (app.run_serve) on a thread: random-weight tiny model at 256 px, its event lines."""

    def __init__(self, model: Any, idle_timeout: float = 2.0, **kw: Any) -> None:
        base = {"port": 0, "token": TOKEN, "model": "tiny", "device": "cpu", "resolution": 256, "min_fps": 0}
        self.settings = ServeSettings(**{**base, **kw})
        self.events: list[str] = []
        self.stop = threading.Event()
        ready = threading.Event()
        self.url = ""
        self.error: BaseException | None = None

        def on_ready(url: str) -> None:
            self.url = url
            ready.set()

        def target() -> None:
            try:
                run_serve(
                    self.settings,
                    say=self.events.append,
                    ready=on_ready,
                    stop=self.stop,
                    model=model,
                    limits=ServeLimits(idle_timeout=idle_timeout),
                )
            except BaseException as e:  # noqa: BLE001 - reported by the test
                self.error = e
                ready.set()

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()
        assert ready.wait(60), "server did not start"
        if self.error is not None:
            raise self.error

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
            return json.loads(r.read())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(20)
        assert not self.thread.is_alive(), "server did not stop"


@pytest.fixture(scope="module")
def serve(tiny_model: Any) -> Iterator[Serve]:
    s = Serve(tiny_model)
    yield s
    s.close()


def http(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


async def publisher_offer(channel: bool = True) -> tuple[Any, str]:
    """A real aiortc publisher: a video track (and the greencam channel), gathered, its offer text."""
    from aiortc import RTCConfiguration, RTCPeerConnection
    from aiortc.mediastreams import VideoStreamTrack

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    if channel:
        pc.createDataChannel("greencam")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def offer_text(channel: bool = True) -> str:
    async def make() -> str:
        pc, sdp = await publisher_offer(channel)
        await pc.close()
        return sdp

    return asyncio.run(make())


AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/sdp"}


# --------------------------------------------------------------------------- HTTP (RFC 9725 §4)


@pytest.mark.parametrize("path", ["/whip", "/whip/some-session", "/whep/some-session", "/whep/some-session/viewer"])
def test_options_answers_the_cors_preflight_with_accept_post(serve: Serve, path: str) -> None:
    status, headers, _ = http(
        serve.url + path,
        "OPTIONS",
        headers={"Origin": "https://example.org", "Access-Control-Request-Method": "POST"},
    )
    assert status == 200
    assert headers["Accept-Post"] == "application/sdp"
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in headers["Access-Control-Allow-Methods"] and "DELETE" in headers["Access-Control-Allow-Methods"]
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    assert "Location" in headers["Access-Control-Expose-Headers"]


@pytest.mark.parametrize(
    ("path", "method"), [("/whip", "POST"), ("/whip/nope", "DELETE"), ("/web/viewer-link", "POST")]
)
def test_every_401_says_how_to_authenticate(serve: Serve, path: str, method: str) -> None:
    status, headers, _ = http(serve.url + path, method, body=b"x", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")


def test_cors_headers_ride_on_whip_answers_but_not_on_pages(serve: Serve) -> None:
    _, headers, _ = http(serve.url + "/whip/nope", "DELETE", headers={"Authorization": f"Bearer {TOKEN}"})
    assert headers.get("Access-Control-Allow-Origin") == "*"
    _, headers, _ = http(serve.url + "/health")
    assert "Access-Control-Allow-Origin" not in headers


# --------------------------------------------------------------------------- offers


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda s: "\r\n".join(x for x in s.split("\r\n") if not x.startswith("a=fingerprint")), "no a=fingerprint"),
        (
            lambda s: "\r\n".join(x for x in s.split("\r\n") if not x.startswith(("a=rtpmap", "a=fmtp", "a=rtcp-fb"))),
            "no video codec",
        ),
        (lambda s: s.replace("a=setup:actpass", "a=setup:holdconn"), "a=setup"),
        (lambda s: s.replace("a=sendonly", "a=recvonly"), "does not send"),
        (lambda s: s.split("m=")[0], "no media section"),
    ],
)
def test_offers_are_checked_before_they_are_answered(serve: Serve, change: Any, fragment: str) -> None:
    before = len(serve.events)
    status, _, text = http(serve.url + "/whip", "POST", change(offer_text()).encode(), AUTH)
    assert status == 400 and fragment in text and text.startswith("bad SDP offer: "), text
    assert text.count("\n") == 1
    lines = serve.events[before:]
    assert len(lines) == 1 and lines[0].startswith("400 POST /whip") and fragment in lines[0]
    assert serve.health()["sessions"] == 0


def test_the_answer_takes_the_dtls_server_role_and_bundles_only_when_offered(serve: Serve) -> None:
    bundled = offer_text()
    status, headers, answer = http(serve.url + "/whip", "POST", bundled.encode(), AUTH)
    assert status == 201, answer
    assert "a=setup:passive" in answer and "a=setup:active" not in answer
    assert "a=group:BUNDLE" in answer
    http(serve.url + headers["Location"], "DELETE", headers=AUTH)

    single = "\r\n".join(x for x in offer_text(channel=False).split("\r\n") if not x.startswith("a=group:BUNDLE"))
    status, headers, answer = http(serve.url + "/whip", "POST", single.encode(), AUTH)
    assert status == 201, answer
    assert "a=group:BUNDLE" not in answer and "a=setup:passive" in answer
    http(serve.url + headers["Location"], "DELETE", headers=AUTH)
    wait_for(lambda: serve.health()["sessions"] == 0, 10, "sessions to end")


def test_publisher_and_a_viewer_without_a_channel_connect_and_the_viewer_stays(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiortc clients in the DTLS client role (our answers say passive); a viewer with no data
    channel is kept alive by its RTCP reports, not dropped after the data-channel idle time."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from greenscreen_cam.link import web as pages

    monkeypatch.setattr(pages, "VIEWER_IDLE_S", 2.5)  # without media liveness it would go after 2.5 s

    async def scenario() -> dict[str, Any]:
        pc, sdp = await publisher_offer()
        status, headers, answer = await asyncio.to_thread(http, serve.url + "/whip", "POST", sdp.encode(), AUTH)
        assert status == 201, answer
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        sid = headers["Location"].rsplit("/", 1)[1]
        out: dict[str, Any] = {"role": pc.getTransceivers()[0].sender.transport._role}
        viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            deadline = time.monotonic() + 30
            while pc.connectionState != "connected" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            out["publisher"] = pc.connectionState
            wrong = {**AUTH, "Authorization": "Bearer wrong"}
            out["whep_401"] = await asyncio.to_thread(http, serve.url + f"/whep/{sid}", "POST", b"v=0", wrong)
            viewer.addTransceiver("video", direction="recvonly")
            await viewer.setLocalDescription(await viewer.createOffer())
            status = 503
            while status == 503 and time.monotonic() < deadline:  # 503 until the first frame arrived
                status, vh, vanswer = await asyncio.to_thread(
                    http, serve.url + f"/whep/{sid}", "POST", viewer.localDescription.sdp.encode(), AUTH
                )
                await asyncio.sleep(0.2)
            assert status == 201, vanswer
            out["viewer_answer"] = vanswer
            tracks: list[Any] = []
            viewer.on("track", tracks.append)
            await viewer.setRemoteDescription(RTCSessionDescription(sdp=vanswer, type="answer"))
            while not tracks and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.wait_for(tracks[0].recv(), 20)
            await asyncio.sleep(6.0)  # over two data-channel idle times
            out["viewer"] = viewer.connectionState
            await asyncio.wait_for(tracks[0].recv(), 5)  # video still flows
            out["still_receiving"] = True
        finally:
            await viewer.close()
            await asyncio.to_thread(http, serve.url + headers["Location"], "DELETE", None, AUTH)
            await pc.close()
        return out

    out = asyncio.run(asyncio.wait_for(scenario(), 90))
    assert out["publisher"] == "connected" and out["role"] == "client"  # so the server was the DTLS server
    assert out["whep_401"][0] == 401 and out["whep_401"][1].get("WWW-Authenticate", "").startswith("Bearer")
    assert "a=setup:passive" in out["viewer_answer"]
    assert out["viewer"] == "connected" and out["still_receiving"], "\n".join(serve.events)
    assert not [e for e in serve.events if "silent for" in e], serve.events
    wait_for(lambda: serve.health()["sessions"] == 0, 10, "the session to end")


# --------------------------------------------------------------------------- clean endings


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_session_that_never_connects_leaves_no_pending_task(tiny_model: Any) -> None:
    """The client vanishes after its offer: the session times out, and no relay task is destroyed pending."""
    records = _Records()
    logging.getLogger("asyncio").addHandler(records)
    s = Serve(tiny_model, idle_timeout=1.0)
    try:
        for _ in range(2):
            status, _, text = http(s.url + "/whip", "POST", offer_text().encode(), AUTH)
            assert status == 201, text
        wait_for(lambda: s.health()["sessions"] == 0, 15, "the sessions to time out")
        wait_for(lambda: sum("ended" in e for e in s.events) == 2, 10, "two session ends")
        time.sleep(0.5)  # the worker drops its last reference to retired sessions
        for _ in range(3):
            gc.collect()
    finally:
        s.close()
        gc.collect()
        logging.getLogger("asyncio").removeHandler(records)
    assert not [line for line in records.lines if "destroyed but it is pending" in line], records.lines
