"""The client of ``greencam serve``: a tracker whose SAM 2 runs on another machine.

:class:`RemoteTracker` sends the camera up as a WebRTC video track (scaled so
its shorter side is the server's model resolution, never up) and receives one
small mask per tracked frame on the ``greencam`` data channel. Each mask
carries its frame's RTP timestamp; the client knows the RTP timestamp origin
of its own sender, so it maps every mask back to the :class:`Frame` it
belongs to (``frame_index`` and the capture ``timestamp``) and the caller can
key the right full-resolution frame locally.

The asyncio loop (aiortc, aiohttp) runs on the tracker's own thread: every
public method returns at once (except :meth:`start`, :meth:`track_sync` and
:meth:`close`, which wait with a bound). When the server goes away the state
becomes ``"reconnecting"`` and the tracker reconnects on its own with a
bounded backoff, re-sending the current prompt; errors retrying cannot fix
(refused token, TLS failure, a malformed answer) end the link and are raised
by the next :meth:`poll`, :meth:`submit` or :meth:`track_sync`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from greenscreen_cam.core import Frame, percentile
from greenscreen_cam.errors import ConfigError, PromptError
from greenscreen_cam.link import rtc
from greenscreen_cam.link.auth import bearer_header
from greenscreen_cam.link.protocol import (
    CHANNEL_LABEL,
    STATE_NAMES,
    LinkAuthError,
    LinkError,
    LinkFullError,
    LinkProtocolError,
    LinkTLSError,
    LinkUnreachableError,
    RemoteMask,
    decode_mask,
    drop_message,
    logits_from_u8,
    parse_text,
    prompt_message,
)
from greenscreen_cam.link.urls import base_url, server_request
from greenscreen_cam.track.prompt import Prompt, Selection

VIDEO_CLOCK = 90000
"""RTP clock rate of video (Hz); frame pts are in these units."""
_PTS_STEP = 9
"""Frame pts are multiples of this many 90 kHz ticks (100 us): exact through a microsecond time base."""
_SENT_HISTORY = 512
"""How many sent frames are remembered for mapping masks back to frames."""


@dataclass
class _Sent:
    index: int
    timestamp: float
    waiter: _Waiter | None = None


class _Waiter:
    """A :meth:`RemoteTracker.track_sync` call waiting for its frame's mask."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.result: RemoteMask | None = None


def send_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """Scale ``width x height`` so its shorter side is ``resolution`` (never up); even sizes for I420."""
    scale = min(1.0, resolution / max(1, min(width, height)))
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


class RemoteTracker:
    """Track a subject with SAM 2 running on a ``greencam serve`` server.

    Args:
        url: The server, e.g. ``http://gpu-box:8470`` or ``https://gpu-box:8470``.
        token: The server's bearer token.
        width: Width of the frames that will be submitted (prompts are in this frame's pixels).
        height: Height of those frames.
        on_event: Called with one human-readable line per event (connected, reconnecting...).
            It runs on the tracker's thread; keep it quick.
        cafile: A PEM CA bundle (or the server's self-signed certificate) to trust for https.
        ice_servers: STUN/TURN URLs for networks that need them, e.g.
            ``["turn:turn.example.org:3478?transport=udp"]`` (with ``turn_username``/``turn_password``).
        turn_username: Username for the TURN servers.
        turn_password: Password for the TURN servers.
        connect_timeout: Seconds one connection attempt may take.
        liveness_timeout: Seconds without any message from the server after which it counts as gone.
        max_backoff: Longest wait between two reconnection attempts, in seconds.
        pipeline_depth: Frames that may be on their way (sent, mask not back yet) before
            :attr:`busy` turns True. 1 behaves like a local tracker; 2 or more lets the
            network round trip overlap the server's model step.

    Use: :meth:`start` (connects, raises on errors that retrying cannot fix), then
    :meth:`submit` live frames and :meth:`poll` the masks that came back, or
    :meth:`track_sync` each frame of a file in order; :meth:`reselect` to prompt;
    :meth:`close` at the end.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        width: int,
        height: int,
        on_event: Callable[[str], None] | None = None,
        cafile: Path | None = None,
        ice_servers: list[str] | None = None,
        turn_username: str | None = None,
        turn_password: str | None = None,
        connect_timeout: float = 15.0,
        liveness_timeout: float = 4.0,
        max_backoff: float = 5.0,
        pipeline_depth: int = 1,
    ) -> None:
        if width <= 0 or height <= 0:
            raise ConfigError(f"frame size {width}x{height} must be positive")
        self.url = base_url(url)
        self._token = token
        self.width, self.height = int(width), int(height)
        self._on_event = on_event
        self._cafile = cafile
        self._ice_servers = list(ice_servers or [])
        self._turn_username, self._turn_password = turn_username, turn_password
        self.connect_timeout = connect_timeout
        self.liveness_timeout = liveness_timeout
        self.max_backoff = max_backoff
        self.resolution = 1024
        self.server_info: dict[str, Any] = {}
        self.session_id: str | None = None
        self.viewer_token: str | None = None
        self.state = "connecting"
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._supervisor: concurrent.futures.Future[None] | None = None
        self._frame_event: asyncio.Event | None = None
        self._slot: tuple[Frame, _Waiter | None] | None = None
        self._results: deque[RemoteMask] = deque(maxlen=64)
        self._sent: OrderedDict[int, _Sent] = OrderedDict()
        self._inflight: dict[int, float] = {}
        self.pipeline_depth = max(1, int(pipeline_depth))
        self._error: LinkError | None = None
        self._closing = False
        # Per-connection state (loop thread).
        self._pc: Any = None
        self._channel: Any = None
        self._track: Any = None
        self._session_url: str | None = None
        self._origin: int | None = None
        self._connected = False
        self._last_message = 0.0
        # Prompt (any thread, under _lock): the current subjects (None: none), the id of their last
        # change, and the id the server acknowledged. Every (re)send sends all of them.
        self._prompt: list[Prompt] | None = None
        self._prompt_id = 0
        self._last_logits: np.ndarray | None = None
        """The newest mask's logits (one plane per subject), for :meth:`subject_at`."""
        self._acked_id = 0
        self._prompt_sent_at = 0.0
        # Counters.
        self.submitted = 0
        self.dropped = 0
        self.masks = 0
        self.unmatched = 0
        self.reconnects = 0
        self.bytes_down = 0
        self._bytes_up_done = 0
        self._bytes_up_now = 0
        self.server_masks = 0
        self.server_dropped = 0
        self.rtt_ms: float | None = None
        self._latencies: deque[float] = deque(maxlen=600)
        self._median_latency = 1.0
        self._started_at = time.perf_counter()

    # ================================================================== public API
    def start(self) -> None:
        """Connect (blocks up to ``connect_timeout``); raises a LinkError subclass when it cannot."""
        if self._thread is not None:
            return
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            self._frame_event = asyncio.Event()
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="greencam-link", daemon=True)
        self._thread.start()
        ready.wait(5.0)
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(self._connect(), self._loop)
        try:
            fut.result(self.connect_timeout + 5.0)
        except LinkError:
            self.close()
            raise
        except TimeoutError:
            fut.cancel()
            self.close()
            raise LinkUnreachableError(f"no connection to {self.url} within {self.connect_timeout:g} s") from None
        self._started_at = time.perf_counter()
        self._supervisor = asyncio.run_coroutine_threadsafe(self._supervise(), self._loop)

    def submit(self, frame: Frame) -> None:
        """Offer ``frame`` (RGB uint8 ``(H, W, 3)``) for tracking; never blocks, never queues.

        Only the newest submitted frame waits to be sent; one replaced before it
        was sent is dropped and counted. While reconnecting frames are dropped.
        """
        self._raise_if_failed()
        self._put(frame, None)

    def poll(self) -> list[RemoteMask]:
        """The masks that came back since the last call, oldest first (empty while reconnecting)."""
        self._raise_if_failed()
        with self._lock:
            out = list(self._results)
            self._results.clear()
        return out

    def track_sync(self, frame: Frame, timeout: float = 60.0) -> RemoteMask:
        """Send ``frame`` and wait for its own mask (offline files: every frame, in order).

        Waits first for the connection and for the server to acknowledge a pending
        prompt, so a prompt always lands on the frame submitted after :meth:`reselect`.
        A frame whose mask does not come back within a few seconds (lost packet,
        server restart) is sent again, until ``timeout``. Masks returned here are not
        returned by :meth:`poll`.

        Raises:
            LinkError: the link failed, or no mask came back within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._raise_if_failed()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkError(f"no mask from {self.url} for frame {frame.index} within {timeout:g} s")
            if not self._ready_for_sync():
                time.sleep(0.02)
                continue
            waiter = _Waiter()
            self._put(frame, waiter)
            if waiter.event.wait(min(remaining, 5.0 + 2.0 * self._step_estimate())):
                assert waiter.result is not None
                result = waiter.result
                with self._lock:
                    prompted = self._prompt is not None
                if result.state == "waiting" and prompted:
                    continue  # a new session (server restart) that has not got the prompt yet: it is re-sent
                return result

    @property
    def busy(self) -> bool:
        """True while a submitted frame waits to be sent, or ``pipeline_depth`` frames await their masks.

        A frame whose mask has not come back within a few round trips (lost on the way, or
        dropped by the server for a newer one) stops counting. While the link is down it is
        False: frames submitted then are dropped (and counted).
        """
        with self._lock:
            if self._slot is not None and self._connected:
                return True
            if not self._connected:
                return False
            expiry = max(1.0, 3.0 * self._step_estimate())
            now = time.perf_counter()
            for key in [k for k, t in self._inflight.items() if now - t > expiry]:
                del self._inflight[key]
            return len(self._inflight) >= self.pipeline_depth

    def reselect(self, prompt: Prompt | Selection | None) -> None:
        """Prompt the server's tracker (in this client's frame pixels); a Selection is several subjects.

        None forgets them. It applies to the next frame the server tracks and is re-sent after a reconnection.
        """
        with self._lock:
            self._prompt = (
                list(prompt.prompts) if isinstance(prompt, Selection) else None if prompt is None else [prompt]
            )
            self._prompt_id += 1
        self._call(self._send_prompt)

    def add_subject(self, prompt: Prompt) -> None:
        """Track one more subject on the server, keeping the others (the first one is a selection)."""
        with self._lock:
            self._prompt = [*(self._prompt or []), prompt]
            self._prompt_id += 1
        self._call(self._send_prompt)

    def subject_at(self, x: float, y: float) -> int | None:
        """Index of the subject whose last mask covers pixel ``(x, y)`` of this client's frame most surely, or None."""
        with self._lock:
            logits = self._last_logits
        if logits is None:
            return None
        planes = logits if logits.ndim == 3 else logits[None]
        lh, lw = planes.shape[-2:]
        ix = min(lw - 1, max(0, int(x * lw / self.width)))
        iy = min(lh - 1, max(0, int(y * lh / self.height)))
        values = planes[:, iy, ix]
        best = int(values.argmax())
        return best if values[best] > 0 else None

    def drop_subject(self, index: int) -> int:
        """Stop tracking subject ``index`` (0-based, in selection order) on the server; the others keep
        tracking, with their memory. Returns how many are left.

        Raises:
            PromptError: there is no such subject.
        """
        with self._lock:
            prompts = list(self._prompt or [])
            if not 0 <= index < len(prompts):
                raise PromptError(f"no subject {index + 1} to drop: {len(prompts)} tracked")
            del prompts[index]
            self._prompt = prompts or None  # what a reconnection selects again
            self._prompt_id += 1
            pid = self._prompt_id
        self._call(lambda: self._send_drop(index, pid))
        return len(prompts)

    def stats(self) -> dict[str, Any]:
        """Counters of the link: frames, masks, drops, latency (ms), bandwidth (kbit/s), reconnects."""
        elapsed = max(1e-6, time.perf_counter() - self._started_at)
        with self._lock:
            lat = sorted(self._latencies)

        def pct(q: float) -> float | None:
            return round(percentile(lat, q) * 1000.0, 1) if lat else None

        return {
            "state": self.state,
            "server": self.url,
            "session": self.session_id,
            "submitted": self.submitted,
            "dropped": self.dropped,
            "masks": self.masks,
            "unmatched": self.unmatched,
            "server_masks": self.server_masks,
            "server_dropped": self.server_dropped,
            "reconnects": self.reconnects,
            "rtt_ms": self.rtt_ms,
            "latency_p50_ms": pct(50),
            "latency_p95_ms": pct(95),
            "uplink_kbps": round((self._bytes_up_done + self._bytes_up_now) * 8 / elapsed / 1000.0, 1),
            "downlink_kbps": round(self.bytes_down * 8 / elapsed / 1000.0, 1),
        }

    def close(self) -> None:
        """End the session (``DELETE``), close the connection and stop the thread."""
        self._closing = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if self._supervisor is not None:
            self._supervisor.cancel()
        with contextlib.suppress(Exception):  # closing is best effort
            asyncio.run_coroutine_threadsafe(self._disconnect(delete=True), loop).result(8.0)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5.0)

    def __enter__(self) -> RemoteTracker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ================================================================== helpers (caller side)
    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _call(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn)

    def _put(self, frame: Frame, waiter: _Waiter | None) -> None:
        with self._lock:
            if self._slot is not None:
                self.dropped += 1
            self._slot = (frame, waiter)
            self.submitted += 1
        event = self._frame_event
        if event is not None:
            self._call(event.set)

    def _ready_for_sync(self) -> bool:
        with self._lock:
            acked = self._acked_id == self._prompt_id
        return self._connected and acked

    def _step_estimate(self) -> float:
        """Median capture-to-mask latency in seconds (1 s before any mask came back)."""
        return self._median_latency

    def _emit(self, line: str) -> None:
        if self._on_event is not None:
            with contextlib.suppress(Exception):  # logging must never break the link
                self._on_event(line)

    # ================================================================== loop side: frames
    def _take_frame(self) -> tuple[Frame, _Waiter | None] | None:
        with self._lock:
            item, self._slot = self._slot, None
        return item

    def _remember(self, pts: int, frame: Frame, waiter: _Waiter | None) -> None:
        with self._lock:
            self._sent[pts] = _Sent(frame.index, frame.timestamp, waiter)
            self._inflight[pts] = time.perf_counter()
            while len(self._sent) > _SENT_HISTORY:
                self._sent.popitem(last=False)

    def _learn_origin(self, track: Any) -> None:
        """Work out the sender's random RTP timestamp origin (called when the sender asks for a frame).

        aiortc's sender asks its track for the next frame only after it sent every
        packet of the previous one, so at that moment its last RTP timestamp is
        ``origin + pts`` of the frame the track returned last.
        """
        if self._origin is not None or track is not self._track or track.last_pts is None:
            return
        sender = track.sender
        count = getattr(sender, "_RTCRtpSender__packet_count", 0)
        rtp = getattr(sender, "_RTCRtpSender__rtp_timestamp", None)
        if count and rtp is not None:
            self._origin = (int(rtp) - track.last_pts) & 0xFFFFFFFF

    # ================================================================== loop side: messages
    def _on_message(self, data: str | bytes) -> None:
        now = time.perf_counter()
        self._last_message = time.monotonic()
        self.bytes_down += len(data)
        if isinstance(data, bytes):
            self._on_mask(data, now)
            return
        try:
            msg = parse_text(data)
        except LinkProtocolError as e:
            self._emit(f"ignored a malformed message from the server: {e}")
            return
        kind = msg["type"]
        if kind == "pong":
            t = msg.get("t")
            if isinstance(t, int | float):
                self.rtt_ms = round((now - float(t)) * 1000.0, 1)
        elif kind == "state":
            self.server_masks = int(msg.get("masks") or 0)
            self.server_dropped = int(msg.get("dropped") or 0)
        elif kind == "ack":
            with self._lock:
                if msg.get("id") == self._prompt_id:
                    self._acked_id = self._prompt_id
        elif kind == "session":
            self.session_id = str(msg.get("id") or self.session_id)
            self.viewer_token = msg.get("viewer_token")
        elif kind == "error":
            self._emit(f"server: {msg.get('message')}")

    def _on_mask(self, data: bytes, now: float) -> None:
        try:
            m = decode_mask(data)
        except LinkProtocolError as e:
            self._emit(f"ignored a malformed mask from the server: {e}")
            return
        origin = self._origin
        if origin is None and self._track is not None:
            self._learn_origin(self._track)
            origin = self._origin
        if origin is None:
            self.unmatched += 1
            return
        pts = (m.tag - origin) & 0xFFFFFFFF
        with self._lock:
            # The server tracks only the newest frame: frames sent before this one are answered or never will be.
            for key in [k for k in self._inflight if k <= pts + 2]:
                del self._inflight[key]
            sent = None
            for key in (pts, pts - 1, pts + 1, pts - 2, pts + 2):  # absorb any rounding of the encoder's clock
                sent = self._sent.pop(key & 0xFFFFFFFF, None)
                if sent is not None:
                    break
        if sent is None:
            self.unmatched += 1
            return
        state = STATE_NAMES[m.state]
        waiting = state == "waiting"
        result = RemoteMask(
            frame_index=sent.index,
            timestamp=sent.timestamp,
            logits=None if waiting else logits_from_u8(m.probability),
            visible=state == "tracking",
            object_score=m.object_score,
            selected=not waiting,
            state=state,
            seq=m.seq,
            received=now,
        )
        self.masks += 1
        with self._lock:
            self._latencies.append(now - sent.timestamp)
            if self.masks % 8 == 1:
                ordered = sorted(self._latencies)
                self._median_latency = ordered[len(ordered) // 2]
        if not self._closing and self._connected:
            self.state = state
        if sent.waiter is not None:
            sent.waiter.result = result
            sent.waiter.event.set()
        else:
            with self._lock:
                self._results.append(result)
        if result.logits is not None:
            with self._lock:
                self._last_logits = result.logits

    def _send_json(self, msg: dict[str, Any] | str) -> None:
        ch = self._channel
        if ch is not None and ch.readyState == "open":
            ch.send(msg if isinstance(msg, str) else json.dumps(msg))

    def _send_drop(self, index: int, pid: int) -> None:
        if self._connected:  # otherwise the reconnection selects the subjects left
            self._send_json(drop_message(index + 1, pid))

    def _send_prompt(self) -> None:
        if not self._connected:
            return
        with self._lock:
            prompt, pid = self._prompt, self._prompt_id
            if self._acked_id == pid:
                return
        self._prompt_sent_at = time.monotonic()
        if not prompt:
            self._send_json({"type": "reset", "id": pid})
            return
        for i, subject in enumerate(prompt):  # in order on the channel; the last one carries the id to ack
            last = i == len(prompt) - 1
            self._send_json(prompt_message(subject, self.width, self.height, pid if last else None, add=i > 0))

    # ================================================================== loop side: connection
    async def _http(self, method: str, path: str, **kw: Any) -> tuple[int, str, Any]:
        """One HTTP request to the server: ``(status, body text, headers)``; errors as LinkError."""
        return await server_request(self.url, method, path, timeout=self.connect_timeout, cafile=self._cafile, **kw)

    async def _health(self) -> None:
        status, text, _ = await self._http("GET", "/health")
        try:
            info = json.loads(text)
        except ValueError:
            info = None
        if status != 200 or not isinstance(info, dict) or info.get("status") != "ok":
            raise LinkProtocolError(
                f"{self.url}/health answered {status} without greencam's JSON; is it greencam serve?"
            )
        self.server_info = info
        res = info.get("resolution")
        if isinstance(res, int) and 64 <= res <= 4096:
            self.resolution = res

    def _configuration(self) -> Any:
        return rtc.rtc_configuration(self._ice_servers, self._turn_username, self._turn_password)

    async def _connect(self) -> None:
        """One connection attempt: health, offer, answer, data channel open."""
        from aiortc import RTCSessionDescription

        await self._health()
        pc = rtc.new_peer_connection(self._ice_servers, self._turn_username, self._turn_password)
        self._pc = pc
        self._origin = None
        channel = pc.createDataChannel(CHANNEL_LABEL, ordered=False, maxRetransmits=0)
        opened = asyncio.Event()
        channel.on("open", opened.set)
        channel.on("message", self._on_message)
        self._channel = channel
        track = _frame_track(self)
        track.sender = pc.addTrack(track)
        self._track = track
        await pc.setLocalDescription(await pc.createOffer())  # gathers ICE candidates (aiortc does not trickle)
        status, text, headers = await self._http(
            "POST",
            "/whip",
            data=pc.localDescription.sdp.encode(),
            headers={"Content-Type": "application/sdp", **bearer_header(self._token)},
        )
        if status == 401:
            raise LinkAuthError(f"{self.url} refused the token (401); pass the token greencam serve printed")
        if status == 503:
            raise LinkFullError(f"{self.url} has no room: {text.strip() or 'server full (503)'}")
        if status != 201:
            raise LinkProtocolError(f"{self.url}/whip answered {status}: {text.strip()[:200]}")
        if not text.startswith("v=0"):
            raise LinkProtocolError(f"{self.url}/whip answered 201 without an SDP answer")
        location = headers.get("Location", "")
        self._session_url = location if location.startswith("/") else None
        self.session_id = location.rsplit("/", 1)[-1] or None
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
        except Exception as e:  # noqa: BLE001 - aiortc raises many types on malformed SDP
            raise LinkProtocolError(f"{self.url} sent a malformed SDP answer: {e}") from None
        try:
            await asyncio.wait_for(opened.wait(), self.connect_timeout)
        except TimeoutError:
            raise LinkUnreachableError(
                f"the WebRTC connection to {self.url} did not open within {self.connect_timeout:g} s "
                "(UDP blocked? see TURN in the README)"
            ) from None
        self._last_message = time.monotonic()
        self._connected = True
        self.state = "waiting"
        with self._lock:
            self._acked_id = 0 if self._prompt_id else self._acked_id
        self._send_prompt()
        self._emit(f"connected to {self.url} (session {self.session_id}, {self.server_info.get('model')})")

    async def _disconnect(self, *, delete: bool) -> None:
        self._connected = False
        pc, self._pc = self._pc, None
        track, self._track = self._track, None
        sender = getattr(track, "sender", None)
        if sender is not None:
            with contextlib.suppress(Exception):  # statistics are best effort
                stats = await asyncio.wait_for(sender.getStats(), 1.0)
                for s in stats.values():
                    if getattr(s, "type", "") == "outbound-rtp":
                        self._bytes_up_done += int(s.bytesSent)
        self._bytes_up_now = 0
        if delete and self._session_url is not None:
            with contextlib.suppress(Exception):  # the server may be gone
                await asyncio.wait_for(self._http("DELETE", self._session_url, headers=bearer_header(self._token)), 3.0)
        self._session_url = None
        if pc is not None:
            with contextlib.suppress(Exception):  # closing is best effort
                await asyncio.wait_for(pc.close(), 5.0)
        self._channel = None
        with self._lock:
            waiters = [s.waiter for s in self._sent.values() if s.waiter is not None]
            self._sent.clear()
            self._inflight.clear()
        del waiters  # their track_sync calls time out per try and re-send

    async def _supervise(self) -> None:
        """Ping, resend unacknowledged prompts, notice a vanished server and reconnect."""
        try:
            while not self._closing:
                await asyncio.sleep(0.5)
                pc = self._pc
                gone = pc is None or pc.connectionState in ("failed", "closed")
                silent = time.monotonic() - self._last_message > self.liveness_timeout
                if self._connected and not gone and not silent:
                    self._send_json({"type": "ping", "t": time.perf_counter()})
                    with self._lock:
                        unacked = self._acked_id != self._prompt_id
                    if unacked and time.monotonic() - self._prompt_sent_at > 0.5:
                        self._send_prompt()
                    await self._sample_uplink()
                    continue
                await self._reconnect("connection failed" if gone else f"no message for {self.liveness_timeout:g} s")
        except asyncio.CancelledError:
            pass

    async def _sample_uplink(self) -> None:
        track = self._track
        sender = getattr(track, "sender", None)
        if sender is None:
            return
        try:
            stats = await sender.getStats()
        except Exception:  # noqa: BLE001 - statistics are best effort
            return
        for s in stats.values():
            if getattr(s, "type", "") == "outbound-rtp":
                self._bytes_up_now = int(s.bytesSent)

    async def _reconnect(self, reason: str) -> None:
        self.state = "reconnecting"
        self._emit(f"lost the server ({reason}); reconnecting")
        with self._lock:
            self._results.clear()
        await self._disconnect(delete=False)
        delay = 0.25
        while not self._closing:
            try:
                await self._connect()
            except (LinkAuthError, LinkTLSError, LinkProtocolError) as e:
                await self._disconnect(delete=False)
                self._error = e
                self.state = "failed"
                self._emit(f"giving up: {e}")
                return
            except (LinkError, OSError) as e:
                await self._disconnect(delete=False)
                self.state = "reconnecting"
                if isinstance(e, LinkFullError):
                    self._emit(str(e))
                await asyncio.sleep(delay)
                delay = min(self.max_backoff, delay * 2)
                continue
            self.reconnects += 1
            return


def _frame_track(owner: RemoteTracker) -> Any:
    """The outgoing video track: the newest submitted frame, scaled for the model, with our own pts."""
    from aiortc import MediaStreamTrack

    class FrameTrack(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.sender: Any = None
            self.last_pts: int | None = None
            self._t0 = time.perf_counter()

        async def recv(self) -> Any:
            import av
            import cv2

            owner._learn_origin(self)
            event = owner._frame_event
            assert event is not None
            while True:
                item = owner._take_frame()
                if item is not None:
                    break
                event.clear()
                item = owner._take_frame()
                if item is not None:
                    break
                await event.wait()
            frame, waiter = item
            image = frame.image
            h, w = image.shape[:2]
            sw, sh = send_size(w, h, owner.resolution)
            if (sw, sh) != (w, h):
                image = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
            out = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            pts = int(round((time.perf_counter() - self._t0) * VIDEO_CLOCK))
            if self.last_pts is not None and pts <= self.last_pts:
                pts = self.last_pts + 1
            out.pts = pts
            out.time_base = Fraction(1, VIDEO_CLOCK)
            owner._remember(pts & 0xFFFFFFFF, frame, waiter)
            self.last_pts = pts
            return out

    return FrameTrack()
