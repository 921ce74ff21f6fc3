"""``greencam serve --ray``: placement rules, and a real local Ray Serve cluster on 127.0.0.1.

The cluster tests share one ``greencam serve --ray`` process (tiny, 256 px, seeded random weights,
autoscaled between 2 and 3 CPU replicas of 2 sessions each) and run in file order: bad requests
(publisher and viewer endpoints, against plain ``serve``), sessions spread over the replicas,
viewers (aiortc, then the viewer page in headless Chromium) of a session held by the second
replica, four ``greencam start --server`` clients (scaling 2 -> 3 under them), a replica killed
mid-stream, and last Ctrl-C, after which no process of that Ray instance may be left.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from greenscreen_cam.cluster.routing import Load, desired_replicas, owner_of, rank_for_new_session, session_id
from tests.conftest import REPO, moving_disc_frames, write_video
from tests.test_link_cli import BOX, LOOPBACK, free_port, mattes

TOKEN = "cluster-test-token-0123456789"
MODEL = ["--model", "tiny", "--device", "cpu", "--resolution", "256"]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SDP_AUTH = {**AUTH, "Content-Type": "application/sdp"}
JSON_AUTH = {**AUTH, "Content-Type": "application/json"}
LINK_NAME, LINK_SECRET = "viewer-link-name-0001", "viewer-link-secret-0001"


# --------------------------------------------------------------------------- placement rules (no Ray)


def test_a_session_id_names_its_replica() -> None:
    sid = session_id("0ph0oirn", "k3y_-x")
    assert sid == "0ph0oirn.k3y_-x"
    assert owner_of(sid) == "0ph0oirn"
    for bad in ("nodot", ".key", "replica.", ""):
        assert owner_of(bad) is None
    with pytest.raises(ValueError):
        session_id("a.b", "key")


@pytest.mark.parametrize(
    ("loads", "pending", "first"),
    [
        ({"a": Load(2, 4), "b": Load(1, 4)}, {}, "b"),  # fewer sessions first
        ({"a": Load(1, 4), "b": Load(1, 4)}, {"a": 1}, "b"),  # sent since its last report count
        ({"a": Load(1, 2), "b": Load(2, 8)}, {}, "b"),  # share of capacity, not the count
        ({"a": Load(0, 4, draining=True), "b": Load(3, 4)}, {}, "b"),  # a draining replica takes none
        ({"a": Load(4, 4), "b": Load(3, 4)}, {"b": 1}, "a"),  # all full: ranked anyway (each says 503)
        ({"a": Load(1, 4, {2: 90.0}), "b": Load(1, 4, {2: 40.0})}, {}, "b"),  # then the faster step
        ({"a": Load(1, 4), "b": None}, {}, "b"),  # a fresh replica that published nothing yet
    ],
)
def test_a_new_session_goes_to_the_least_loaded_replica(
    loads: dict[str, Load | None], pending: dict[str, int], first: str
) -> None:
    order = rank_for_new_session(loads, pending)
    assert order[0] == first
    assert sorted(order) == sorted(loads)


def test_full_replicas_rank_last() -> None:
    order = rank_for_new_session({"a": Load(4, 4), "b": Load(3, 4), "c": Load(0, 4, draining=True)})
    assert order[0] == "b"
    assert set(order[1:]) == {"a", "c"}


@pytest.mark.parametrize(
    ("sessions", "capacity", "current", "bounds", "want"),
    [
        ({}, 2, 2, (2, 3), 2),  # nothing published yet: keep what runs
        ({"a": 2, "b": 2}, 2, 2, (2, 3), 3),  # both full: one more, so the next camera has a slot
        ({"a": 1, "b": 0}, 2, 2, (1, 3), 1),  # one session fits on one replica with a slot to spare
        ({"a": 8, "b": 8}, 8, 2, (1, 3), 3),  # capped at the maximum
        ({"a": 0, "b": 0}, 4, 2, (2, 4), 2),  # never below the minimum
    ],
)
def test_autoscaling_counts_sessions_against_capacity(
    sessions: dict[str, float], capacity: int, current: int, bounds: tuple[int, int], want: int
) -> None:
    got = desired_replicas(sessions, capacity, current=current, min_replicas=bounds[0], max_replicas=bounds[1])
    assert got == want


def test_serve_help_lists_the_cluster_options_without_loading_ray() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from greenscreen_cam.cli import main; sys.argv=['greencam','serve','--help'];"
         " code = 0\ntry:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
         "print('RAY' if 'ray' in sys.modules else 'NORAY')"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}, timeout=60,
    )  # fmt: skip
    for flag in ("--ray", "--ray-address", "--replicas", "--min-replicas", "--max-replicas"):
        assert flag in out.stdout
    assert out.stdout.strip().endswith("NORAY")


# --------------------------------------------------------------------------- a real local cluster

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (make install installs greencam[cluster])")


def greencam(*args: str) -> list[str]:
    return [sys.executable, "-c", LOOPBACK, *args]


def ray_processes(marker: str) -> list[str]:
    """Command lines of the live processes that belong to the Ray instance under ``marker`` (its temp dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            env = (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker in cmd or marker.encode() in env:
            found.append(f"{proc.name}: {cmd[:160]}")
    return found


class Cluster:
    """``greencam serve --ray`` in a subprocess, its stderr lines collected by a thread."""

    def __init__(self, *args: str) -> None:
        self.tmp = tempfile.mkdtemp(prefix="gcray", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "RAY_TMPDIR": self.tmp,
            "GREENCAM_RAY_SETUP": "tests.cluster_hooks:loopback_ice",
        }
        self.env.pop("RAY_ADDRESS", None)
        cmd = greencam(
            "serve", "--ray", "--ray-cpus", "2", "--port", str(self.port), "--token", TOKEN, "--random-weights",
            "--min-fps", "0", *MODEL, *args,
        )  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self.env, cwd=self.tmp
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float) -> None:
        wait_for(lambda: any("serving on" in x for x in self.lines) or self.proc.poll() is not None, timeout, "serve")
        assert self.proc.poll() is None, "\n".join(self.lines[-20:])

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/health", timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._reader.join(10)
        return self.proc.returncode


def wait_for(cond: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster("--min-replicas", "2", "--max-replicas", "3", "--max-sessions", "2")
    try:
        c.wait_ready(300)
        wait_for(lambda: len(c.health()["replicas"]) == 2, 60, "two replicas in /health", every=0.5)
        yield c
    finally:
        c.stop()
        leftover = ray_processes(c.tmp)
        for line in leftover:  # never leave a Ray instance behind, even when a test failed
            os.kill(int(line.split(":")[0]), signal.SIGKILL)


def _request(
    url: str, method: str = "POST", body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """``(status, body, Location header)`` of one request."""
    req = urllib.request.Request(url, data=body if method == "POST" else None, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode(), r.headers.get("Location", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), ""


async def _offers(n: int) -> tuple[list[str], list[Any]]:
    """``n`` real WebRTC offers (video + the data channel), and their peer connections to close later."""
    import aioice.ice
    from aiortc import RTCConfiguration, RTCPeerConnection

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    pcs, sdps = [], []
    for _ in range(n):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="sendonly")
        pc.createDataChannel("greencam")
        await pc.setLocalDescription(await pc.createOffer())
        pcs.append(pc)
        sdps.append(pc.localDescription.sdp)
    return sdps, pcs


BAD_REQUESTS: list[tuple[str, str, bytes, dict[str, str]]] = [
    ("POST", "/whip", b"v=0\r\n", {"Content-Type": "application/sdp"}),
    ("POST", "/whip", b"v=0\r\n", {"Content-Type": "application/sdp", "Authorization": "Bearer nope"}),
    ("POST", "/whip", b"v=0\r\n", {"Content-Type": "text/plain", "Authorization": f"Bearer {TOKEN}"}),
    ("POST", "/whip", b"hello", {"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"}),
    ("POST", "/whip", b"\xff\xfe", {"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"}),
    ("POST", "/whip", b"v" * 200_000, {"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"}),
    ("DELETE", "/whip/nope", b"", {"Authorization": f"Bearer {TOKEN}"}),
    ("DELETE", "/whip/0ph0oirn.gone", b"", {"Authorization": f"Bearer {TOKEN}"}),
    ("DELETE", "/whip/nope", b"", {}),
    # Viewers (WHEP) and stable viewer links, where no session or link is: 404 for anyone.
    ("POST", "/whep/nope", b"v=0\r\n", {"Content-Type": "application/sdp"}),
    ("POST", "/whep/0ph0oirn.gone", b"v=0\r\n", SDP_AUTH),
    ("POST", "/whep/no-such-link-name", b"v" * 200_000, {"Content-Type": "application/sdp"}),
    ("DELETE", "/whep/nope/viewer", b"", {}),
    ("DELETE", "/whep/0ph0oirn.gone/0ph0oirn.viewer", b"", AUTH),
    ("POST", "/web/viewer-link", b"{}", {"Content-Type": "application/json"}),
    ("POST", "/web/viewer-link", b"{}", {"Content-Type": "application/json", "Authorization": "Bearer nope"}),
    ("POST", "/web/viewer-link", b"{}", JSON_AUTH),
    ("POST", "/web/viewer-link", b"[" * 5000, JSON_AUTH),
    ("POST", "/web/viewer-link", json.dumps({"session": "0ph0oirn.gone", "name": LINK_NAME, "secret": LINK_SECRET}).encode(), JSON_AUTH),
    ("POST", "/web/viewer-link", json.dumps({"session": "nope", "name": "short", "secret": LINK_SECRET}).encode(), JSON_AUTH),
    ("GET", "/view/no-such-link-name?token=x", b"", {}),
]  # fmt: skip

LIVE_REQUESTS: list[tuple[str, str, bytes, dict[str, str]]] = [
    # A live session (SID: its id; OFFER: a viewer's offer): what a viewer may and may not do.
    ("POST", "/whep/SID", b"OFFER", {"Content-Type": "application/sdp"}),
    ("POST", "/whep/SID", b"OFFER", {"Content-Type": "application/sdp", "Authorization": "Bearer nope"}),
    ("POST", "/whep/SID", b"v" * 70_000, {"Content-Type": "application/sdp"}),  # 401 before 413
    ("POST", "/whep/SID", b"v" * 70_000, SDP_AUTH),
    ("POST", "/whep/SID", b"OFFER", {**AUTH, "Content-Type": "text/plain"}),
    ("POST", "/whep/SID", b"v=0\r\nm=video nonsense", SDP_AUTH),
    ("POST", "/whep/SID", b"\xff\xfe\x00", SDP_AUTH),
    ("DELETE", "/whep/SID/nope", b"", AUTH),
    ("POST", "/web/viewer-link", json.dumps({"session": "SID", "name": "a/b" * 5, "secret": LINK_SECRET}).encode(), JSON_AUTH),
    ("POST", "/web/viewer-link", json.dumps({"session": "SID", "name": LINK_NAME, "secret": LINK_SECRET}).encode(), {"Content-Type": "application/json"}),
    ("POST", "/web/viewer-link", json.dumps({"session": "SID", "name": LINK_NAME, "secret": LINK_SECRET}).encode(), JSON_AUTH),
    # The link, bound by the line above.
    ("POST", f"/whep/{LINK_NAME}", b"OFFER", {"Content-Type": "application/sdp", "Authorization": "Bearer nope"}),
    ("POST", f"/whep/{LINK_NAME}", b"OFFER", {"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}x"}),
    ("POST", f"/whep/{LINK_NAME}", b"v=0\r\n", {"Content-Type": "application/sdp", "Authorization": f"Bearer {LINK_SECRET}"}),
    ("POST", f"/whep/{LINK_NAME}", b"v" * 70_000, {"Content-Type": "application/sdp", "Authorization": f"Bearer {LINK_SECRET}"}),
    ("DELETE", f"/whep/{LINK_NAME}/nope", b"", {"Authorization": f"Bearer {LINK_SECRET}"}),
]  # fmt: skip
"""Compared with plain serve's answers, SID and the session's own id taken out of them."""


class ClipTrack:
    """A synthetic camera: the moving disc clip at 160x120, looped (aiortc paces it at 30 fps)."""

    def __new__(cls) -> Any:
        import av
        from aiortc.mediastreams import VideoStreamTrack

        frames = moving_disc_frames(12)

        class Clip(VideoStreamTrack):
            n = 0

            async def recv(self) -> Any:
                pts, time_base = await self.next_timestamp()
                frame = av.VideoFrame.from_ndarray(frames[self.n % len(frames)], format="rgb24")
                frame.pts, frame.time_base = pts, time_base
                self.n += 1
                return frame

        return Clip()


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


class Camera:
    """An aiortc publisher (the clip and the greencam channel) of one session on ``url``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pc: Any = None
        self.channel: Any = None
        self.sid = ""
        self.session: dict[str, Any] = {}
        self.masks = 0

    async def start(self) -> Camera:
        import aioice.ice
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver(ClipTrack(), direction="sendonly")
        self.channel = self.pc.createDataChannel("greencam")
        self.channel.on("message", self._on_message)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = self.pc.localDescription.sdp.encode()
        status, answer, location = await asyncio.to_thread(_request, self.url + "/whip", "POST", offer, SDP_AUTH)
        assert status == 201, answer
        self.sid = location.rsplit("/", 1)[1]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        return self

    def _on_message(self, message: Any) -> None:
        if isinstance(message, bytes):
            self.masks += 1
        elif json.loads(message).get("type") == "session":
            self.session = json.loads(message)

    async def prompt(self) -> None:
        await _until(lambda: bool(self.session), 30, "the session message")
        box = {"type": "prompt", "box": [25, 28, 91, 92], "points": [], "labels": [], "width": 160, "height": 120}
        self.channel.send(json.dumps(box))

    async def close(self) -> None:
        await self.pc.close()
        await asyncio.to_thread(_request, self.url + f"/whip/{self.sid}", "DELETE", b"", AUTH)


async def _viewer_offer() -> tuple[Any, Any]:
    """A receive-only aiortc viewer (video and its data channel), gathered."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    channel = pc.createDataChannel("greencam", ordered=False, maxRetransmits=0)
    await pc.setLocalDescription(await pc.createOffer())
    return pc, channel


def _answers(url: str, sid: str, offer: str) -> list[tuple[int, Any, str]]:
    """LIVE_REQUESTS' answers from ``url`` for session ``sid`` (JSON bodies parsed, the id taken out)."""
    out = []
    for method, path, body, headers in LIVE_REQUESTS:
        path, body = path.replace("SID", sid), body.replace(b"SID", sid.encode()).replace(b"OFFER", offer.encode())
        status, text, location = _request(url + path, method, body, headers)
        text, location = text.replace(sid, "SID"), location.replace(sid, "SID")
        out.append((status, json.loads(text) if status == 200 else text, location))
    return out


@pytest.mark.slow
def test_bad_requests_get_the_answers_of_plain_serve(cluster: Cluster, tiny_model: Any) -> None:
    import aioice.ice

    from greenscreen_cam.link.sessions import ServeLimits
    from tests.test_link import ServerThread

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    plain = ServerThread(tiny_model, ServeLimits(idle_timeout=30.0), max_sessions=2, token=TOKEN)
    try:
        for method, path, body, headers in BAD_REQUESTS:
            want = _request(plain.url + path, method, body, headers)
            got = _request(cluster.url + path, method, body, headers)
            assert got == want, (method, path, headers)
            assert got[0] in (200, 400, 401, 404, 413)

        async def live() -> tuple[list[Any], list[Any], list[Any]]:
            # A session on each (its camera's video keeps it alive), and the same requests to both.
            cameras = [await Camera(plain.url).start(), await Camera(cluster.url).start()]
            viewer, _ = await _viewer_offer()
            try:
                offer = viewer.localDescription.sdp
                want, got = [await asyncio.to_thread(_answers, c.url, c.sid, offer) for c in cameras]
            finally:
                await viewer.close()
                for c in cameras:
                    await c.close()
            # The link outlives its session: a viewer on it waits (404) for the next one.
            late = {**SDP_AUTH, "Authorization": f"Bearer {LINK_SECRET}"}
            after = [
                await asyncio.to_thread(_request, c.url + f"/whep/{LINK_NAME}", "POST", offer.encode(), late)
                for c in cameras
            ]
            return want, got, after

        want, got, after = asyncio.run(asyncio.wait_for(live(), 120))
    finally:
        plain.close()
    for request, w, g in zip(LIVE_REQUESTS, want, got):
        assert g == w, request[:2]
    assert sorted({a[0] for a in got}) == [200, 400, 401, 404, 413, 415], got
    assert after[1] == after[0] and after[0][0] == 404
    assert sorted({c for c in (_request(cluster.url + p, m, b, h)[0] for m, p, b, h in BAD_REQUESTS)}) == [
        200,
        400,
        401,
        404,
        413,
    ]
    wait_for(lambda: cluster.health()["sessions"] == 0, 15, "the sessions to be gone from /health")


@pytest.mark.slow
def test_sessions_spread_503_only_when_every_replica_is_full_and_delete_reaches_the_owner(cluster: Cluster) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    replicas = {r["replica"] for r in cluster.health()["replicas"]}
    assert len(replicas) == 2

    # Offers one after another until one is refused. The fourth session fills both replicas, and
    # the autoscaler then adds a third (max 3, upscale delay 1 s): a fifth offer is refused if it
    # comes first, accepted by the third replica if that is up (a loaded machine's slow offers let
    # it win, one run in ten). Either way the refusal comes only when every replica is full.
    most = 3 * 2 + 1

    async def offers_then_deletes() -> tuple[list[tuple[int, str, str]], list[int], list[int]]:
        sdps, pcs = await _offers(most)
        try:
            post = {**auth, "Content-Type": "application/sdp"}
            answers = []
            for sdp in sdps:
                answers.append(await asyncio.to_thread(_request, cluster.url + "/whip", "POST", sdp.encode(), post))
                if answers[-1][0] != 201:
                    break
            sids = [loc.rsplit("/", 1)[1] for status, _, loc in answers if status == 201 and loc]
            ends = [
                (await asyncio.to_thread(_request, cluster.url + f"/whip/{sid}", "DELETE", b"", auth))[0]
                for sid in sids
            ]
            again = [
                (await asyncio.to_thread(_request, cluster.url + f"/whip/{sid}", "DELETE", b"", auth))[0]
                for sid in sids
            ]
            return answers, ends, again
        finally:
            for pc in pcs:
                await pc.close()

    answers, ends, again = asyncio.run(offers_then_deletes())
    accepted, refused = answers[:-1], answers[-1]
    assert [a[0] for a in accepted] == [201] * len(accepted) and len(accepted) in (4, 6), answers
    # Refused, and only because every replica was full: two sessions on each replica there was.
    assert refused[0] == 503 and "server full" in refused[1], refused
    owners = [owner_of(loc.rsplit("/", 1)[1]) for _, _, loc in accepted]
    assert {o: owners.count(o) for o in owners[:4]} == dict.fromkeys(replicas, 2)  # spread: two on each
    assert all(owners.count(o) == 2 for o in owners), owners
    # Every DELETE must reach the replica that holds its session (any other one answers 404): all did.
    assert ends == [200] * len(accepted)
    assert again == [404] * len(accepted)
    wait_for(lambda: cluster.health()["sessions"] == 0, 15, "the sessions to be gone from /health")


async def _camera_on_the_second_replica(cluster: Cluster) -> Camera:
    """A prompted camera whose session the replica that is not first (by id) holds; others are closed."""
    first = sorted(r["replica"] for r in cluster.health()["replicas"])[0]
    spare: list[Camera] = []
    try:
        for _ in range(4):  # new sessions go to the least-loaded replica: the second try lands elsewhere
            camera = await Camera(cluster.url).start()
            if owner_of(camera.sid) != first:
                await camera.prompt()
                return camera
            spare.append(camera)
        raise AssertionError(f"every session went to {first}")
    finally:
        for c in spare:
            await c.close()


async def _watch(url: str, route: str, token: str) -> tuple[Any, Any, str, list[bytes]]:
    """A viewer of ``route`` with ``token``: ``(peer connection, video track, Location, masks received)``."""
    from aiortc import RTCSessionDescription

    pc, channel = await _viewer_offer()
    masks: list[bytes] = []
    channel.on("message", lambda m: masks.append(m) if isinstance(m, bytes) else None)
    tracks: list[Any] = []
    pc.on("track", tracks.append)
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}
    status, answer, location = 503, "", ""
    for _ in range(100):  # 503 until the camera's first frame reached its replica
        status, answer, location = await asyncio.to_thread(
            _request, url + f"/whep/{route}", "POST", pc.localDescription.sdp.encode(), headers
        )
        if status != 503:
            break
        await asyncio.sleep(0.2)
    assert status == 201, answer
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await _until(lambda: bool(tracks), 20, "the viewer's video track")
    return pc, tracks[0], location, masks


@pytest.mark.slow
def test_viewers_of_a_session_on_the_second_replica_get_video_and_masks_and_delete_reaches_it(
    cluster: Cluster,
) -> None:
    from greenscreen_cam.link.protocol import MAGIC

    async def scenario() -> dict[str, Any]:
        camera = await _camera_on_the_second_replica(cluster)
        out: dict[str, Any] = {"owner": owner_of(camera.sid)}
        pcs: list[Any] = []
        try:
            # The session's own viewer token (from the camera's session message) opens a viewer.
            token = camera.session["viewer_token"]
            pc, track, location, masks = await _watch(cluster.url, camera.sid, token)
            pcs.append(pc)
            frame = await asyncio.wait_for(track.recv(), 30)
            out["frame"] = (frame.width, frame.height)
            await _until(lambda: len(masks) >= 2, 90, "masks on the viewer's channel")
            out["masks"] = masks[:2]
            out["location"] = location
            out["delete"] = [
                (await asyncio.to_thread(_request, cluster.url + location, "DELETE", b"", headers))[0]
                for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {token}"}, AUTH)
            ]
            # A stable link (bound by the publisher) and the cluster token view it too.
            body = json.dumps({"session": camera.sid, "name": LINK_NAME, "secret": LINK_SECRET}).encode()
            out["bind"] = await asyncio.to_thread(_request, cluster.url + "/web/viewer-link", "POST", body, JSON_AUTH)
            for who, route, secret in (("link", LINK_NAME, LINK_SECRET), ("publisher", camera.sid, TOKEN)):
                pc, track, location, _ = await _watch(cluster.url, route, secret)
                pcs.append(pc)
                await asyncio.wait_for(track.recv(), 30)
                end = await asyncio.to_thread(_request, cluster.url + location, "DELETE", b"", AUTH)
                out[f"viewer {who}"] = (location, end[0])
            out["camera masks"] = camera.masks
        finally:
            for pc in pcs:
                await pc.close()
            await camera.close()
        return out

    out = asyncio.run(asyncio.wait_for(scenario(), 240))
    sid = out["location"].split("/")[2]
    assert owner_of(sid) == out["owner"]
    assert out["frame"][0] > 0 and out["frame"][1] > 0
    assert all(m[:4] == MAGIC for m in out["masks"])
    assert out["camera masks"] > 0
    # The viewer's id names the replica too, and DELETE reaches it: 401 with a wrong token, 200, then 404.
    viewer = out["location"].rsplit("/", 1)[1]
    assert out["location"] == f"/whep/{sid}/{viewer}" and owner_of(viewer) == out["owner"]
    assert out["delete"] == [401, 401, 200, 404]
    assert out["bind"][0] == 200 and json.loads(out["bind"][1]) == {"path": f"/view/{LINK_NAME}"}
    assert out["viewer link"][0].startswith(f"/whep/{LINK_NAME}/") and out["viewer link"][1] == 200
    assert out["viewer publisher"][0].startswith(f"/whep/{sid}/") and out["viewer publisher"][1] == 200
    wait_for(lambda: cluster.health()["sessions"] == 0, 15, "the session to be gone from /health")


@pytest.mark.slow
def test_the_viewer_page_on_a_stable_link_watches_a_session_on_the_second_replica(cluster: Cluster) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed; the page test needs it")
    chromium = os.environ.get("GREENCAM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Chromium is not installed (Debian: apt install chromium); the viewer page test needs it")

    def view(url: str) -> dict[str, Any]:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--autoplay-policy=no-user-gesture-required"])
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(url)
                expression = "window.greencam && greencam.stats.masks >= 1 && greencam.stats.frames >= 1"
                deadline = time.monotonic() + 90
                while not page.evaluate(expression) and time.monotonic() < deadline:
                    page.wait_for_timeout(200)
                return {"stats": page.evaluate("window.greencam && greencam.stats"), "errors": errors}
            finally:
                browser.close()

    async def scenario() -> dict[str, Any]:
        camera = await _camera_on_the_second_replica(cluster)
        try:
            # What the capture page does: bind its stable link to the session, then OBS opens the link.
            body = json.dumps({"session": camera.sid, "name": LINK_NAME, "secret": LINK_SECRET}).encode()
            bound = await asyncio.to_thread(_request, cluster.url + "/web/viewer-link", "POST", body, JSON_AUTH)
            assert bound[0] == 200, bound
            path = json.loads(bound[1])["path"]
            return await asyncio.to_thread(view, f"{cluster.url}{path}?token={LINK_SECRET}&debug=1")
        finally:
            await camera.close()

    out = asyncio.run(asyncio.wait_for(scenario(), 240))
    assert not out["errors"], out["errors"]
    assert out["stats"]["masks"] >= 1 and out["stats"]["frames"] >= 1, out["stats"]
    wait_for(lambda: cluster.health()["sessions"] == 0, 15, "the session to be gone from /health")


def test_no_secret_is_a_deployment_argument() -> None:
    """Serve shows deployment arguments (config, dashboard): the token and the TURN password go by the store."""
    from ray import cloudpickle

    from greenscreen_cam.cluster import deploy
    from greenscreen_cam.config import ServeSettings

    settings = ServeSettings(token=TOKEN, token_file="/secret/token-file", turn_password="turn-secret-4567")
    public, hidden = deploy.replica_settings(settings)
    assert hidden == {"turn_password": "turn-secret-4567"}
    app = deploy.build_app(
        settings=settings, random_weights=True, token_ref="TOKEN-REF", secrets_ref="SECRETS-REF",
        gpus_per_replica=0.0, cpus_per_replica=0.5, torch_threads=1, drain_s=1.0, env={"PYTHONPATH": "/x"},
    )  # fmt: skip
    bound, seen = [app._bound_deployment], []
    while bound:  # the ingress and, among its arguments, the sessions deployment
        d = bound.pop()
        args = (d.init_args, d.init_kwargs, d.ray_actor_options, d._deployment_config)
        seen.append(cloudpickle.dumps(args))
        bound += [
            a._bound_deployment for a in (*d.init_args, *d.init_kwargs.values()) if hasattr(a, "_bound_deployment")
        ]
    assert len(seen) == 2
    for blob in seen:
        for secret in (TOKEN, "turn-secret-4567", "/secret/token-file"):
            assert secret.encode() not in blob
    assert any(b"SECRETS-REF" in b for b in seen) and any(b"TOKEN-REF" in b for b in seen)


def _client(cluster: Cluster, clip: Path, out: Path) -> subprocess.Popen[str]:
    common = ["--source", str(clip), "--bbox", BOX, "--refine", "none", "--smooth", "0", *MODEL]
    return subprocess.Popen(
        greencam("start", "--server", cluster.url, "--token", TOKEN, *common,
                 "--output", str(out.with_suffix(".mp4")), "--matte-output", str(out)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cluster.env, cwd=out.parent,
    )  # fmt: skip


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x, y = a > 127, b > 127
    union = np.logical_or(x, y).sum()
    return float(np.logical_and(x, y).sum() / union) if union else 1.0


N_SPREAD = 24
"""Frames each of the four clients sends: long enough that four processes started together overlap."""


class HealthLog:
    """/health polled on a thread: the most replicas seen, and each replica's most sessions."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.replicas = 0
        self.total = 0
        """The most sessions seen at once, over all replicas."""
        self.sessions: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stop.wait(0.5):
            try:
                info = self.cluster.health()
            except OSError:
                continue
            self.replicas = max(self.replicas, len(info["replicas"]))
            self.total = max(self.total, sum(r["sessions"] for r in info["replicas"]))
            for r in info["replicas"]:
                self.sessions[r["replica"]] = max(self.sessions.get(r["replica"], 0), r["sessions"])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.mark.slow
def test_four_clients_spread_agree_with_a_local_run_and_scaling_up_loses_none(
    cluster: Cluster, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # The premise: two replicas with nothing on them. An earlier test filled every replica, and the
    # third one it brought up stays until the autoscaler's 30 s downscale delay has passed; four
    # clients spread over three replicas then (one run in ten) rather than filling two.
    def two_idle_replicas() -> bool:
        h = cluster.health()
        return len(h["replicas"]) == 2 and h["sessions"] == 0

    wait_for(two_idle_replicas, 150, "the cluster to scale back to two idle replicas", every=0.5)
    clip = write_video(tmp_path / "clip.mp4", moving_disc_frames(N_SPREAD))
    watch = HealthLog(cluster)
    clients = [_client(cluster, clip, tmp_path / f"remote{i}") for i in range(4)]
    try:
        errs = [c.communicate(timeout=300)[1] for c in clients]
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
    assert [c.returncode for c in clients] == [0] * 4, errs
    assert not any("reconnecting" in e for e in errs), errs  # no session was lost while the cluster scaled
    # Both replicas were full (2 of 2 each), so the autoscaler adds a third one: wait for it to come up.
    wait_for(lambda: watch.replicas >= 3, 120, "the third replica", every=0.5)
    watch.close()
    # The clients start as separate processes; they must have overlapped for the spread to say anything.
    assert watch.total == 4, f"the four clients were never connected at once ({watch.total} at most)"
    assert sorted(watch.sessions.values())[-2:] == [2, 2], watch.sessions  # two on each of the first two
    local = subprocess.run(
        greencam("start", "--checkpoint", str(tiny_checkpoint), "--source", str(clip), "--bbox", BOX, "--refine", "none",
                 "--smooth", "0", *MODEL, "--output", str(tmp_path / "local.mp4"),
                 "--matte-output", str(tmp_path / "local")),
        capture_output=True, text=True, env=cluster.env, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr
    want = mattes(tmp_path / "local")
    assert len(want) == N_SPREAD
    for i in range(4):
        got = mattes(tmp_path / f"remote{i}")
        assert len(got) == N_SPREAD
        assert float(np.mean([_iou(a, b) for a, b in zip(got, want)])) >= 0.9


class StderrLog:
    """A client process's stderr, read on a thread as it comes: each line with the monotonic time it arrived."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line))

    def first(self, fragment: str, after: float) -> float | None:
        """When the first line holding ``fragment`` arrived after ``after``, or None."""
        return next((t for t, line in list(self.lines) if t >= after and fragment in line), None)

    def text(self, timeout: float = 30) -> str:
        """Everything the process wrote (once it has ended)."""
        self.thread.join(timeout)
        return "".join(line for _, line in self.lines)


def kill_a_busy_replica(cluster: Cluster, clients: list[StderrLog]) -> tuple[int, float]:
    """SIGKILL a replica that is tracking; ``(clients it dropped, seconds until each of them connected again)``.

    Watched from the clients' side: every client that says it lost the server after the kill
    must say it connected again. (Counting sessions on the other replicas instead raced with the
    clients themselves: one that finished its clip and left before another one reconnected kept
    the count below the number of clients, about one run in four.) Bounded: 120 s for a replica
    to be tracking, 30 s for the clients to move (a reconnect takes the client's liveness
    timeout, its backoff and one offer; docs/scaling.md records how long it took).
    """
    busy: list[dict[str, Any]] = []

    def some_replica_tracks() -> bool:
        busy[:] = [r for r in cluster.health()["replicas"] if r["sessions"] > 0 and r["step_ms"]]
        return bool(busy)

    wait_for(some_replica_tracks, 120, "a replica tracking a client", every=0.5)
    victim = busy[0]
    os.kill(victim["pid"], signal.SIGKILL)
    killed = time.monotonic()
    back: dict[int, float] = {}

    def moved() -> bool:
        lost = {i: t for i, c in enumerate(clients) if (t := c.first("lost the server", killed)) is not None}
        for i, t in lost.items():
            again = clients[i].first("connected to", t)
            if again is not None:
                back[i] = again
        return bool(lost) and lost.keys() == back.keys()

    wait_for(moved, 30, "the killed replica's clients to connect to the other replicas", every=0.1)
    return len(back), max(back.values()) - killed


@pytest.mark.slow
def test_a_killed_replica_s_clients_reconnect_elsewhere_and_finish(cluster: Cluster, tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.mp4", moving_disc_frames(16))
    clients = [_client(cluster, clip, tmp_path / f"remote{i}") for i in range(2)]
    logs = [StderrLog(c) for c in clients]
    try:
        moved, _ = kill_a_busy_replica(cluster, logs)
        for c in clients:
            c.wait(timeout=300)
        errs = [log.text() for log in logs]
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
    assert [c.returncode for c in clients] == [0] * 2, errs
    assert moved >= 1 and sum("reconnecting" in e for e in errs) >= moved, errs
    for i in range(2):
        assert len(mattes(tmp_path / f"remote{i}")) == 16


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
def test_the_standing_fuzz_cases_through_the_ingress_get_answers_and_never_the_token(cluster: Cluster) -> None:
    """The fuzz test's raw HTTP cases (tests/test_fuzz.py), plus ones carrying this cluster's token, at the ingress."""
    pytest.importorskip("hypothesis", reason="hypothesis is in the dev extras")
    from hypothesis import given
    from hypothesis import strategies as st

    from tests import test_fuzz as fz

    answers: list[bytes] = []
    ours = st.sampled_from([f"Bearer {TOKEN}", f"Bearer {TOKEN}x", TOKEN]).map(
        lambda v: f"POST /whep/x HTTP/1.1\r\nHost: x\r\nAuthorization: {v}\r\nContent-Length: 3\r\n\r\nv=0".encode()
    )

    def one(data: bytes) -> None:
        answer = fz.raw(cluster.port, data)
        answers.append(answer)
        if answer:  # a request line the proxy's parser cannot read may get no answer but a closed connection
            assert answer.startswith(b"HTTP/"), (data[:200], answer[:200])
            assert int(answer.split(b" ", 2)[1]) < 500, (data[:200], answer[:300])

    for data in fz.KNOWN_BAD_HTTP:
        one(data)
    fz.fuzz(60)(given(st.one_of(fz.http_requests(), ours))(one))()
    assert sum(1 for a in answers if a) >= 50, "most cases got an HTTP answer"
    assert not [a for a in answers if TOKEN.encode() in a], "the token came back in an answer"
    assert cluster.health()["status"] == "ok"
    assert not [x for x in cluster.lines if TOKEN in x or "Traceback" in x], cluster.lines[-20:]


@pytest.mark.slow
def test_ctrl_c_stops_the_application_and_its_local_ray_instance(cluster: Cluster) -> None:
    assert ray_processes(cluster.tmp), "the Ray instance should be running before Ctrl-C"
    code = cluster.stop()
    assert code == 0, "\n".join(cluster.lines[-20:])
    wait_for(lambda: not ray_processes(cluster.tmp), 30, "every Ray process to exit")
    assert any("stopping the application and the local Ray instance" in x for x in cluster.lines)
    assert not any(TOKEN in x for x in cluster.lines)  # the token given with --token is never printed
