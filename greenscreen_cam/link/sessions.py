"""The sessions of ``greencam serve``: admission, tokens, and one object per connected camera.

:class:`SessionRegistry` holds the sessions and the plain async operations on them (open one from
an SDP offer, close it, set its prompt, report health). They take and return plain values and raise
:class:`~greenscreen_cam.errors.ServeRequestError` subclasses, never HTTP types: the aiohttp routes
in :mod:`greenscreen_cam.link.http` are one adapter over them, and another ingress can be a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenscreen_cam.errors import (
    LinkError,
    LinkProtocolError,
    OfferError,
    PromptError,
    ServeBadRequest,
    ServeBusy,
    ServeNotFound,
)
from greenscreen_cam.link import interop, rtc
from greenscreen_cam.link import sdp as sdp_rules
from greenscreen_cam.link.auth import Redactor, same_token
from greenscreen_cam.link.protocol import CHANNEL_LABEL, parse_prompt, parse_text, prompt_drop

if TYPE_CHECKING:
    from greenscreen_cam.config import ServeSettings
    from greenscreen_cam.link.sdp import Offer
    from greenscreen_cam.link.worker import ModelWorker

EventFn = Callable[[str], None]


def random_session_id() -> str:
    """A new session's id: 72 random bits, URL-safe base64 (never a dot)."""
    return secrets.token_urlsafe(9)


@dataclass(frozen=True)
class ServeLimits:
    """Tunables of ``greencam serve`` that are not user settings (tests and benchmarks change them).

    Attributes:
        idle_timeout: Seconds without a video frame or message after which a session is freed.
        max_body: Largest accepted request body in bytes (``413`` beyond).
        header_timeout: Seconds a connection may take to send a complete request head.
        keepalive_timeout: Seconds an idle keep-alive connection stays open.
        max_unauthenticated: Connections that have not yet shown a token, at most; beyond it the
            oldest idle one is closed.
        tick: Seconds between state messages (and idle checks).
    """

    idle_timeout: float = 5.0
    max_body: int = 64 * 1024
    header_timeout: float = 10.0
    keepalive_timeout: float = 15.0
    max_unauthenticated: int = 64
    tick: float = 1.0


def check_offer(sdp: str, *, viewer: bool) -> Offer:
    """Refuse an SDP offer that cannot be answered, with ServeBadRequest and a short reason.

    The one place every offer is checked before it is answered: a publisher's (``POST /whip``)
    and a viewer's (``POST /whep``, ``viewer=True``). The rules are in :mod:`greenscreen_cam.link.sdp`
    (fingerprint, codecs, ICE credentials, well-formed lines...); a publisher's video must send,
    a viewer's must receive.

    Returns:
        What the offer asks for (its DTLS setup, whether it bundles): the answer follows it.
    """
    offer = sdp_rules.check_offer(sdp)  # OfferError, a ServeBadRequest
    if viewer and not offer.receives_video():
        raise OfferError("bad SDP offer: a viewer's video section must receive (recvonly or sendrecv)")
    if not viewer and not offer.sends_video():
        raise OfferError("bad SDP offer: its video section does not send (sendonly or sendrecv)")
    return offer


class Session:
    """One connected camera: its peer connection, data channel and frame reader.

    Public API (used by the browser pages in :mod:`greenscreen_cam.link.web`):
    ``id``, ``viewer_token``, :meth:`relay_track`, :meth:`add_mask_listener`,
    :meth:`remove_mask_listener`. Everything else belongs to the registry.
    """

    def __init__(self, registry: SessionRegistry, pc: Any) -> None:
        self.id = registry.new_session_id()
        self.viewer_token = secrets.token_urlsafe(18)
        self.registry = registry
        self.pc = pc
        self.created = time.monotonic()
        self.last_activity = self.created
        self.source_track: Any = None
        self.receiver: Any = None
        self.channel: Any = None
        self.state = "waiting"
        self.frames_in = 0
        self.dropped = 0
        self.masks_sent = 0
        self.bytes_down = 0
        self.closed = False
        self._relay: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[bytes], None]] = []

    # -------------------------------------------------------------- public API
    def relay_track(self) -> Any:
        """A new aiortc ``MediaStreamTrack`` that follows the camera's incoming video (newest frame only).

        Raises:
            LinkError: the session has no video track yet.
        """
        if self.source_track is None or self._relay is None:
            raise LinkError(f"session {self.id} has no video yet")
        return self._relay.subscribe(self.source_track, buffered=False)

    def add_mask_listener(self, fn: Callable[[bytes], None]) -> None:
        """Call ``fn(message)`` (on the server's event loop) with every binary mask message this session sends."""
        self._listeners.append(fn)

    def remove_mask_listener(self, fn: Callable[[bytes], None]) -> None:
        """Stop calling ``fn``; unknown listeners are ignored."""
        if fn in self._listeners:
            self._listeners.remove(fn)

    # -------------------------------------------------------------- loop side
    def attach_track(self, track: Any) -> None:
        """Start reading the camera ``track`` (called on the loop when the offer's video arrives)."""
        from aiortc.contrib.media import MediaRelay

        if self.source_track is not None:
            return
        self.source_track = track
        self.receiver = next((t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track), None)
        rtc.use_marker_jitter_buffer(self.receiver)
        self._relay = MediaRelay()
        self._reader = asyncio.ensure_future(self._read(self._relay.subscribe(track, buffered=True)))

    async def _read(self, track: Any) -> None:
        """Drain the track as fast as frames arrive, keeping only the newest (so aiortc's queue never grows)."""
        from aiortc.mediastreams import MediaStreamError

        try:
            while not self.closed:
                frame = await track.recv()
                tag = (int(frame.pts or 0) + rtc.rtp_origin(self.receiver)) & 0xFFFFFFFF
                self.last_activity = time.monotonic()
                self.frames_in += 1
                if self.registry.worker.put_frame(self.id, frame, tag):
                    self.dropped += 1
        except (MediaStreamError, asyncio.CancelledError):
            pass
        except Exception as e:  # noqa: BLE001 - one broken session must not stop the server
            self.registry.emit(f"session {self.id}: video reader stopped ({type(e).__name__}: {e})")
        finally:
            track.stop()

    def attach_channel(self, channel: Any) -> None:
        if channel.label != CHANNEL_LABEL or self.channel is not None:
            return
        self.channel = channel
        channel.on("message", self._on_message)
        self.send_json({"type": "session", "id": self.id, "viewer_token": self.viewer_token})

    def send_json(self, msg: dict[str, Any]) -> None:
        ch = self.channel
        if ch is not None and ch.readyState == "open":
            data = json.dumps(msg)
            ch.send(data)
            self.bytes_down += len(data)

    def _on_message(self, data: str | bytes) -> None:
        self.last_activity = time.monotonic()
        if isinstance(data, bytes):
            self.send_json({"type": "error", "message": "binary messages are not accepted"})
            return
        try:
            msg = parse_text(data)
            kind = msg["type"]
            if kind == "ping":
                self.send_json({"type": "pong", "t": msg.get("t")})
            elif kind in ("prompt", "reset"):
                self.registry.set_prompt(self.id, msg if kind == "prompt" else None)
                if "id" in msg:
                    self.send_json({"type": "ack", "id": msg["id"]})
            else:
                raise LinkProtocolError(f"unknown message type {kind!r}")
        except (LinkProtocolError, PromptError, ServeBadRequest) as e:
            self.registry.emit(f"session {self.id}: bad message: {e}")
            self.send_json({"type": "error", "message": str(e)})
        except Exception as e:  # noqa: BLE001 - a peer must not be able to break the loop
            self.registry.emit(f"session {self.id}: message failed: {type(e).__name__}: {e}")

    def deliver(self, message: bytes, state: str) -> None:
        """Send one mask message to the camera's data channel and every mask listener (loop thread)."""
        if self.closed:
            return
        self.state = state
        ch = self.channel
        if ch is not None and ch.readyState == "open":
            try:
                ch.send(message)
            except Exception:  # noqa: BLE001 - a channel closing under us
                pass
            else:
                self.masks_sent += 1
                self.bytes_down += len(message)
        for fn in list(self._listeners):
            try:
                fn(message)
            except Exception as e:  # noqa: BLE001 - a broken viewer must not stop the camera's masks
                self.registry.emit(f"session {self.id}: mask listener failed ({type(e).__name__}: {e})")
                self.remove_mask_listener(fn)

    def post_error(self, message: str) -> None:
        """Tell the camera's client about a problem with its prompt or step (loop thread)."""
        if not self.closed:
            self.send_json({"type": "error", "message": message})

    async def close(self) -> None:
        self.closed = True
        if self._reader is not None:
            self._reader.cancel()
        with contextlib.suppress(Exception):  # closing is best effort
            await asyncio.wait_for(self.pc.close(), 5.0)
        await interop.stop_relay(self._relay)  # no relay task left pending (never-connected sessions)
        self._listeners.clear()


class SessionRegistry:
    """The sessions of one server, their admission and the server token.

    Public API (also used by the browser pages): ``sessions``, :attr:`in_use`, :meth:`check_token`,
    :meth:`emit`, :meth:`new_peer_connection`, ``max_sessions``; the session operations :meth:`open_session`,
    :meth:`close_session`, :meth:`set_prompt`, :meth:`health`; :meth:`start` and :meth:`stop`.

    Args:
        settings: The server's settings (``max_sessions``, ``min_fps``, ICE servers).
        token: The publisher token (required: the host reads or makes it, never the library).
        worker: The model worker the sessions' frames go to.
        limits: Tunables (idle timeout...).
        on_event: One line per event; every line is escaped and redacted first.
        new_session_id: Makes each new session's id (default :func:`random_session_id`); a cluster
            replica names itself in it (``<replica>.<key>``), so that requests find their owner.
    """

    def __init__(
        self,
        settings: ServeSettings,
        token: str,
        worker: ModelWorker,
        *,
        limits: ServeLimits | None = None,
        on_event: EventFn | None = None,
        new_session_id: Callable[[], str] = random_session_id,
    ) -> None:
        if not token or not token.strip():
            raise ValueError("a server token is required")
        self.settings = settings
        self.worker = worker
        self.limits = limits or ServeLimits()
        self.sessions: dict[str, Session] = {}
        self.max_sessions = settings.max_sessions
        self.redactor = Redactor([token, settings.turn_password])
        self._token = token
        self._on_event = on_event
        self.new_session_id = new_session_id
        self._opening = 0
        self._ticker: asyncio.Task[None] | None = None
        self.started = time.monotonic()

    # -------------------------------------------------------------- tokens and events
    def check_token(self, token: str | None) -> bool:
        """True when ``token`` is the server's token (constant-time comparison)."""
        return same_token(token, self._token)

    def emit(self, line: str) -> None:
        """Report one event line, escaped and with every secret removed."""
        if self._on_event is not None:
            with contextlib.suppress(Exception):  # logging must never break serving
                self._on_event(self.redactor.clean(line))

    def new_peer_connection(self) -> Any:
        """An ``RTCPeerConnection`` with the server's ICE servers (none by default)."""
        s = self.settings
        return rtc.new_peer_connection(s.ice_servers, s.turn_username, s.turn_password)

    # -------------------------------------------------------------- admission
    @property
    def in_use(self) -> int:
        """Sessions held now, counting those still being opened (their slots are reserved)."""
        return len(self.sessions) + self._opening

    def admission_refusal(self) -> str | None:
        """Why a new session cannot be admitted now (None: it can); sessions still opening count."""
        n = self.in_use
        if n >= self.max_sessions:
            return f"server full: {n} of {self.max_sessions} sessions in use (--max-sessions)"
        min_fps = self.settings.min_fps
        if min_fps > 0 and n > 0:
            fps = self.worker.predicted_fps(n + 1)
            if fps is not None and fps < min_fps:
                return (
                    f"server busy: with {n + 1} sessions each would get about {fps:.1f} masks/s, "
                    f"below the {min_fps:g} fps floor"
                )
        return None

    # -------------------------------------------------------------- session operations
    async def open_session(self, offer_sdp: str) -> tuple[Session, str]:
        """Create a session from an SDP offer: ``(session, answer SDP)``.

        The slot is reserved before anything is awaited and released on every failure, so parallel
        offers never make more sessions than ``max_sessions`` (or than ``min_fps`` allows).

        Raises:
            ServeBusy: no room. ServeBadRequest: the offer cannot be answered.
        """
        from aiortc import RTCSessionDescription

        refusal = self.admission_refusal()
        if refusal is not None:
            raise ServeBusy(refusal)
        self._opening += 1  # no await between the check and this line
        try:
            offer = check_offer(offer_sdp, viewer=False)
            pc = self.new_peer_connection()
            session = Session(self, pc)

            @pc.on("track")
            def on_track(track: Any) -> None:
                if track.kind == "video":
                    session.attach_track(track)

            @pc.on("datachannel")
            def on_datachannel(channel: Any) -> None:
                session.attach_channel(channel)

            @pc.on("connectionstatechange")
            async def on_state() -> None:
                if pc.connectionState in ("failed", "closed") and session.id in self.sessions:
                    with contextlib.suppress(ServeNotFound):  # closed meanwhile
                        await self.close_session(session.id, f"connection {pc.connectionState}")

            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
                interop.prefer_dtls_server(pc, offer.setup)  # a=setup:passive: RSA-certificate clients connect
                await pc.setLocalDescription(await pc.createAnswer())
            except Exception as e:  # noqa: BLE001 - aiortc raises many types on malformed SDP
                session.closed = True
                await pc.close()
                await interop.stop_relay(session._relay)  # the track may have arrived before the failure
                reason = str(e).splitlines()[0] if str(e) else f"not valid SDP ({type(e).__name__})"
                raise ServeBadRequest(f"bad SDP offer: {reason}") from None
            self.worker.add(session.id, session.deliver, session.post_error)
            self.sessions[session.id] = session
        finally:
            self._opening -= 1
        return session, sdp_rules.fix_answer(pc.localDescription.sdp, offer)

    async def close_session(self, session_id: str, reason: str) -> None:
        """End session ``session_id``; ServeNotFound when there is none."""
        session = self.sessions.pop(session_id, None)
        if session is None or session.closed:
            raise ServeNotFound("no such session")
        session.closed = True
        self.worker.remove(session.id)
        self.emit(
            f"session {session.id} ended ({reason}): {session.frames_in} frames, "
            f"{session.masks_sent} masks, {session.dropped} dropped"
        )
        await session.close()

    def set_prompt(self, session_id: str, msg: dict[str, Any] | None) -> None:
        """Select the subject on the session's next frame (a ``prompt`` message), or None to reset.

        A prompt with ``"add": true`` adds a subject and keeps the others; ``"drop": n`` stops
        tracking subject ``n``; any other replaces them all.

        Raises:
            ServeNotFound: no such session. LinkProtocolError/PromptError: a malformed prompt, an
            added subject beyond the most one session may track, or a drop of a subject not there.
        """
        if session_id not in self.sessions:
            raise ServeNotFound("no such session")
        if msg is not None and prompt_drop(msg) is None:
            parse_prompt(msg, 1000, 1000)  # check it now (scaling keeps its proportions)
        self.worker.set_prompt(session_id, msg)

    def health(self) -> dict[str, Any]:
        """What ``GET /health`` answers (no secrets)."""
        w = self.worker
        return {
            "status": "ok",
            "sessions": len(self.sessions),
            "max_sessions": self.max_sessions,
            "model": w.model_name,
            "device": w.device,
            "resolution": w.resolution,
            "step_ms": {str(n): round(t * 1000.0, 1) for n, t in sorted(w.measured_step_times().items())},
        }

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start the worker and the once-a-second tick (the application's startup hook)."""
        self.worker.start(asyncio.get_running_loop())
        self._ticker = asyncio.ensure_future(self._tick())

    async def stop(self) -> None:
        """Close every session and stop the worker (the application's shutdown/cleanup hook)."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for sid in list(self.sessions):
            with contextlib.suppress(ServeNotFound):
                await self.close_session(sid, "server stopping")
        self.worker.stop()

    async def _tick(self) -> None:
        """State messages, and freeing sessions that went silent."""
        idle = self.limits.idle_timeout
        while True:
            await asyncio.sleep(self.limits.tick)
            now = time.monotonic()
            for s in list(self.sessions.values()):
                if now - s.last_activity > idle:
                    with contextlib.suppress(ServeNotFound):
                        await self.close_session(s.id, f"no video or message for {idle:g} s")
                    continue
                s.send_json({"type": "state", "state": s.state, "masks": s.masks_sent, "dropped": s.dropped})
