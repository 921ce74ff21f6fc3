"""``greencam serve``: one SAM 2 model on a GPU machine, tracking for many cameras elsewhere over WebRTC.

Signalling is WHIP-shaped (RFC 9725): a client ``POST``s its SDP offer to
``/whip`` with ``Authorization: Bearer TOKEN`` and gets ``201 Created``, the
SDP answer and ``Location: /whip/<session>``; ``DELETE /whip/<session>`` ends
the session. ``GET /health`` answers JSON. The wire format of the data channel
is in :mod:`greenscreen_cam.link.protocol` and ``docs/protocol.md``.

Threads: aiohttp and aiortc run on one asyncio loop; a single worker thread
runs the model. Each session keeps only the newest decoded frame of its camera
(older ones are dropped and counted); every worker step takes the newest frame
of every session that has one, runs the image encoder on them as one batch and
then each session's memory attention, mask decoder and memory encoder with its
own :class:`~greenscreen_cam.segmenter.StreamingTracker` (all trackers share the
one model).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greenscreen_cam.errors import ConfigError, PromptError
from greenscreen_cam.link.protocol import (
    CHANNEL_LABEL,
    DEFAULT_PORT,
    STATE_LOST,
    STATE_NAMES,
    STATE_TRACKING,
    STATE_WAITING,
    LinkError,
    LinkProtocolError,
    encode_mask,
    parse_prompt,
    parse_text,
    probability_u8,
)

if TYPE_CHECKING:
    import numpy as np
    from aiohttp import web

    from greenscreen_cam.prompt import Prompt
    from greenscreen_cam.segmenter import StreamingTracker, TrackResult

EventFn = Callable[[str], None]


@dataclass
class ServeOptions:
    """Settings of ``greencam serve``.

    Attributes:
        host: Address to bind (127.0.0.1 unless told otherwise; ``0.0.0.0`` for every interface).
        port: TCP port of the HTTP(S) signalling server (0 = any free port).
        token: The bearer token clients must send; None generates one (reported once).
        cert_file: PEM certificate for HTTPS (with ``key_file``); browsers need HTTPS beyond localhost.
        key_file: PEM private key for ``cert_file``.
        max_sessions: Sessions served at once; more get ``503``.
        model: Registry name of the SAM 2 model (``tiny``, ``small``, ...).
        checkpoint: Checkpoint file; None looks in the default checkpoint folder.
        resolution: Model input size in pixels; None = the device's default.
        device: ``auto``, ``cuda``, ``cuda:N``, ``mps`` or ``cpu``.
        random_weights: Seeded random weights instead of a checkpoint (tests, benchmarks).
        min_fps: A new session is refused (``503``) when the measured step time says each
            session would get fewer masks per second than this; 0 turns the check off.
        idle_timeout: Seconds without a video frame or message after which a session is freed.
        batch: Run the image encoder on all sessions' frames as one batch (False: one by one).
        max_body: Largest accepted request body in bytes (``413`` beyond).
        ice_servers: STUN/TURN URLs the server's side of each connection may use, e.g.
            ``["turn:turn.example.org:3478"]`` (only needed when the server itself sits behind NAT).
        turn_username: Username for those TURN servers.
        turn_password: Password for those TURN servers.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    max_sessions: int = 4
    model: str = "tiny"
    checkpoint: Path | None = None
    resolution: int | None = None
    device: str = "auto"
    random_weights: bool = False
    min_fps: float = 10.0
    idle_timeout: float = 5.0
    batch: bool = True
    max_body: int = 64 * 1024
    ice_servers: tuple[str, ...] = ()
    turn_username: str | None = None
    turn_password: str | None = None

    def validate(self) -> None:
        """Raise ConfigError on values that cannot work."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is not a TCP port (0-65535)")
        if self.max_sessions < 1:
            raise ConfigError(f"--max-sessions {self.max_sessions} must be at least 1")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("TLS needs both --cert-file and --key-file")
        if self.token is not None and not self.token.strip():
            raise ConfigError("--token is empty")
        if self.idle_timeout <= 0:
            raise ConfigError("the idle timeout must be > 0 seconds")


def _ssl_context(opts: ServeOptions) -> ssl.SSLContext | None:
    if opts.cert_file is None or opts.key_file is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(opts.cert_file), str(opts.key_file))
    except FileNotFoundError as e:
        raise ConfigError(f"TLS file not found: {e.filename}") from None
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(
            f"cannot load --cert-file {opts.cert_file} / --key-file {opts.key_file}: {e}; both must be PEM"
        ) from None
    return ctx


def load_serving_model(opts: ServeOptions) -> tuple[Any, str, str, int]:
    """Load SAM 2 as ``opts`` says: ``(model, model name, device, resolution)``."""
    from greenscreen_cam import models

    spec, dev, res = models.choose(opts.model, opts.device, opts.resolution)
    if opts.random_weights:
        # Exactly the weights of ``greencam start --random-weights`` (seed 0, through the real loader).
        import tempfile

        with tempfile.TemporaryDirectory(prefix="greencam-weights-") as tmp:
            path = models.save_random_checkpoint(spec, Path(tmp) / spec.filename)
            model = models.load_model(spec, path, device=dev, resolution=res)
    else:
        path = models.resolve_checkpoint(spec, opts.checkpoint)
        model = models.load_model(spec, path, device=dev, resolution=res)
    return model, spec.name, dev, res


# --------------------------------------------------------------------------- aiortc details


def use_marker_jitter_buffer(receiver: Any) -> bool:
    """Make aiortc's video receiver hand a frame to the decoder as soon as its last packet arrives.

    aiortc's jitter buffer only knows a frame is complete when the first packet of
    the *next* frame arrives, which delays every mask by one frame interval and
    would stall a client that waits for each frame's mask before sending the next
    (``RemoteTracker.track_sync``). RTP marks the last packet of a video frame
    (the marker bit), so a frame is complete when its run of packets ends with it.

    Returns:
        True when the receiver's buffer was replaced (False: not an aiortc video receiver we know).
    """
    from aiortc.jitterbuffer import JitterBuffer, JitterFrame

    class MarkerJitterBuffer(JitterBuffer):
        def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
            assert self._origin is not None
            timestamp = None
            packets: list[Any] = []
            for count in range(self.capacity):
                packet = self._packets[(self._origin + count) % self.capacity]
                if packet is None:
                    return None
                if timestamp is None:
                    timestamp = packet.timestamp
                elif packet.timestamp != timestamp:  # the next frame began: this one is complete
                    self.remove(count)
                    return JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)
                packets.append(packet)
                if packet.marker:  # the frame's last packet, and all before it are here
                    self.remove(count + 1)
                    return JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)
            return None

    attr = "_RTCRtpReceiver__jitter_buffer"
    old = getattr(receiver, attr, None)
    if type(old) is not JitterBuffer or not getattr(old, "_is_video", False):
        return False
    setattr(receiver, attr, MarkerJitterBuffer(capacity=old.capacity, is_video=True))
    return True


# --------------------------------------------------------------------------- the batched step


def track_batch(
    trackers: list[StreamingTracker],
    images: list[np.ndarray],
    prompts: list[Prompt | None],
    *,
    batch: bool = True,
) -> list[TrackResult | PromptError]:
    """One frame for each of several trackers that share one model.

    Args:
        trackers: One :class:`StreamingTracker` per session, all over the same model.
        images: Each session's newest frame, RGB uint8 ``(H, W, 3)`` (sizes may differ).
        prompts: A prompt (in that frame's pixels) to make it a conditioning frame, or None to track.
        batch: Run the image encoder on all frames as one batch; False runs it frame by frame.

    Returns:
        Per session its :class:`TrackResult`, or the PromptError its step raised.
    """
    import torch

    pre = [t.preprocess(img) for t, img in zip(trackers, images, strict=True)]
    if batch and len(pre) > 1:
        encoded = trackers[0].encode(torch.cat(pre, dim=0))
    else:
        encoded = [t.encode(p)[0] for t, p in zip(trackers, pre, strict=True)]
    out: list[TrackResult | PromptError] = []
    for t, enc, img, prompt in zip(trackers, encoded, images, prompts, strict=True):
        try:
            out.append(t.step_encoded(enc, img.shape[:2], prompt))
        except PromptError as e:
            out.append(e)
    return out


# --------------------------------------------------------------------------- sessions


class Session:
    """One connected camera: its peer connection, its tracker and its newest frame.

    Public API (used by the browser pages in :mod:`greenscreen_cam.link.web`):
    ``id``, ``viewer_token``, :meth:`relay_track`, :meth:`add_mask_listener`,
    :meth:`remove_mask_listener`. Everything else belongs to the server.
    """

    def __init__(self, server: Server, pc: Any, tracker: StreamingTracker) -> None:
        self.id = secrets.token_urlsafe(9)
        self.viewer_token = secrets.token_urlsafe(18)
        self.server = server
        self.pc = pc
        self.tracker = tracker
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
        # Guarded by server._cond:
        self._slot: tuple[Any, int] | None = None
        self._prompt_msg: dict[str, Any] | None = None
        self._reset = False
        self._seq = 0

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
        use_marker_jitter_buffer(self.receiver)
        self._relay = MediaRelay()
        self._reader = asyncio.ensure_future(self._read(self._relay.subscribe(track, buffered=True)))

    def _rtp_origin(self) -> int:
        """The RTP timestamp aiortc's receiver subtracted from the frames' pts (0 when unknown)."""
        mapper = getattr(self.receiver, "_RTCRtpReceiver__timestamp_mapper", None)
        origin = getattr(mapper, "_origin", None)
        return int(origin) if origin is not None else 0

    async def _read(self, track: Any) -> None:
        """Drain the track as fast as frames arrive, keeping only the newest (so aiortc's queue never grows)."""
        from aiortc.mediastreams import MediaStreamError

        try:
            while not self.closed:
                frame = await track.recv()
                tag = (int(frame.pts or 0) + self._rtp_origin()) & 0xFFFFFFFF
                self.last_activity = time.monotonic()
                self.server._put_frame(self, frame, tag)
        except (MediaStreamError, asyncio.CancelledError):
            pass
        except Exception as e:  # noqa: BLE001 - one broken session must not stop the server
            self.server.emit(f"session {self.id}: video reader stopped ({type(e).__name__}: {e})")
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
            elif kind == "prompt":
                parse_prompt(msg, 1000, 1000)  # check it now (scaling keeps its proportions)
                self.server._set_prompt(self, msg, reset=False)
                if "id" in msg:
                    self.send_json({"type": "ack", "id": msg["id"]})
            elif kind == "reset":
                self.server._set_prompt(self, None, reset=True)
                if "id" in msg:
                    self.send_json({"type": "ack", "id": msg["id"]})
            else:
                raise LinkProtocolError(f"unknown message type {kind!r}")
        except (LinkProtocolError, PromptError) as e:
            self.server.emit(f"session {self.id}: bad message: {e}")
            self.send_json({"type": "error", "message": str(e)})
        except Exception as e:  # noqa: BLE001 - a peer must not be able to break the loop
            self.server.emit(f"session {self.id}: message failed: {type(e).__name__}: {e}")

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
                self.server.emit(f"session {self.id}: mask listener failed ({type(e).__name__}: {e})")
                self.remove_mask_listener(fn)

    async def close(self) -> None:
        self.closed = True
        if self._reader is not None:
            self._reader.cancel()
        with contextlib.suppress(Exception):  # closing is best effort
            await asyncio.wait_for(self.pc.close(), 5.0)
        from greenscreen_cam.link import interop  # whip: no relay task left pending

        await interop.stop_relay(self._relay)
        self._listeners.clear()


# --------------------------------------------------------------------------- server


class Server:
    """The running ``greencam serve``: sessions, the shared model, and the worker that steps them.

    Public API (used by the browser pages): ``sessions``, :meth:`check_token`,
    ``max_sessions``, ``model_name``, ``device``, ``resolution``.
    """

    def __init__(
        self,
        model: Any,
        opts: ServeOptions,
        token: str,
        *,
        model_name: str,
        device: str,
        resolution: int,
        on_event: EventFn | None = None,
    ) -> None:
        from greenscreen_cam import models

        self.model = model
        self.opts = opts
        self.sessions: dict[str, Session] = {}
        self.max_sessions = opts.max_sessions
        self.model_name = model_name
        self.device = device
        self.resolution = resolution
        self.autocast = models.autocast_dtype(device)
        self._token = token
        self._on_event = on_event
        self.loop: asyncio.AbstractEventLoop | None = None
        self._cond = threading.Condition()
        self._running = False
        self._worker: threading.Thread | None = None
        self._retired: list[Session] = []
        self.step_times: dict[int, float] = {}
        """EWMA of the step wall time in seconds, per batch size."""
        self.steps = 0
        self.started = time.monotonic()

    # -------------------------------------------------------------- public API
    def check_token(self, token: str) -> bool:
        """True when ``token`` is the server's token (constant-time comparison)."""
        return hmac.compare_digest(token.encode("utf-8", "replace"), self._token.encode("utf-8"))

    def emit(self, line: str) -> None:
        if self._on_event is not None:
            with contextlib.suppress(Exception):  # logging must never break serving
                self._on_event(line)

    # -------------------------------------------------------------- admission
    def predicted_fps(self, sessions: int) -> float | None:
        """Masks per second each of ``sessions`` sessions would get, from measured step times (None: unknown)."""
        if not self.step_times or sessions < 1:
            return None
        if sessions in self.step_times:
            t = self.step_times[sessions]
        else:
            n = max((k for k in self.step_times if k <= sessions), default=min(self.step_times))
            t = self.step_times[n] * sessions / n
        return 1.0 / t if t > 0 else None

    def admission_refusal(self) -> str | None:
        """Why a new session cannot be admitted now (None: it can)."""
        n = len(self.sessions)
        if n >= self.max_sessions:
            return f"server full: {n} of {self.max_sessions} sessions in use (--max-sessions)"
        if self.opts.min_fps > 0 and n > 0:
            fps = self.predicted_fps(n + 1)
            if fps is not None and fps < self.opts.min_fps:
                return (
                    f"server busy: with {n + 1} sessions each would get about {fps:.1f} masks/s, "
                    f"below the {self.opts.min_fps:g} fps floor"
                )
        return None

    # -------------------------------------------------------------- frames and prompts (loop side)
    def _put_frame(self, session: Session, frame: Any, tag: int) -> None:
        with self._cond:
            if session._slot is not None:
                session.dropped += 1
            session._slot = (frame, tag)
            session.frames_in += 1
            self._cond.notify()

    def _set_prompt(self, session: Session, msg: dict[str, Any] | None, *, reset: bool) -> None:
        with self._cond:
            session._prompt_msg = msg
            session._reset = reset

    # -------------------------------------------------------------- worker
    def start_worker(self) -> None:
        self._running = True
        self._worker = threading.Thread(target=self._work, name="greencam-serve-model", daemon=True)
        self._worker.start()

    def stop_worker(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=30.0)

    def _post(self, session: Session, message: bytes, state: str) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(session.deliver, message, state)

    def _work(self) -> None:
        while True:
            with self._cond:
                while (
                    self._running and not self._retired and not any(s._slot is not None for s in self.sessions.values())
                ):
                    self._cond.wait(0.2)
                if not self._running:
                    return
                retired, self._retired = self._retired, []
                jobs = []
                for s in list(self.sessions.values()):
                    if s._slot is None or s.closed:
                        continue
                    frame, tag = s._slot
                    jobs.append((s, frame, tag, s._prompt_msg, s._reset))
                    s._slot, s._prompt_msg, s._reset = None, None, False
            for s in retired:
                with contextlib.suppress(Exception):
                    s.tracker.reset()  # frees the session's memory now, not at garbage collection
            if jobs:
                try:
                    self._step(jobs)
                except Exception as e:  # noqa: BLE001 - keep serving the other sessions
                    self.emit(f"model step failed: {type(e).__name__}: {e}")
                    for s, *_ in jobs:
                        self._post_error(s, f"the server's model step failed ({type(e).__name__})")

    def _post_error(self, session: Session, message: str) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(session.send_json, {"type": "error", "message": message})

    def _waiting_mask(self, session: Session, tag: int) -> None:
        import numpy as np

        side = self.resolution // 4
        session._seq += 1
        msg = encode_mask(tag, session._seq, STATE_WAITING, 0.0, np.zeros((side, side), np.uint8))
        self._post(session, msg, STATE_NAMES[STATE_WAITING])

    def _step(self, jobs: list[tuple[Session, Any, int, dict[str, Any] | None, bool]]) -> None:
        """One worker step: the newest frame of every session with one, through the model."""
        active: list[tuple[Session, int, tuple[int, int], Any, Any]] = []
        for s, frame, tag, prompt_msg, reset in jobs:
            if reset:
                s.tracker.reset()
            image = frame.to_ndarray(format="rgb24")
            h, w = image.shape[:2]
            prompt = None
            if prompt_msg is not None:
                try:
                    prompt = parse_prompt(prompt_msg, w, h)
                except (LinkProtocolError, PromptError) as e:
                    self._post_error(s, str(e))
            if prompt is None and not s.tracker.is_prompted:
                self._waiting_mask(s, tag)
                continue
            active.append((s, tag, (h, w), image, prompt))
        if not active:
            return
        start = time.perf_counter()
        results = track_batch(
            [s.tracker for s, *_ in active],
            [image for _, _, _, image, _ in active],
            [prompt for *_, prompt in active],
            batch=self.opts.batch,
        )
        for (s, tag, _, _, _), result in zip(active, results, strict=True):
            if isinstance(result, PromptError):
                self._post_error(s, str(result))
                continue
            state = STATE_TRACKING if result.visible else STATE_LOST
            s._seq += 1
            msg = encode_mask(tag, s._seq, state, result.object_score, probability_u8(result.low_res_numpy()))
            self._post(s, msg, STATE_NAMES[state])
        elapsed = time.perf_counter() - start
        n = len(active)
        old = self.step_times.get(n)
        self.step_times[n] = elapsed if old is None else 0.8 * old + 0.2 * elapsed
        self.steps += 1

    # -------------------------------------------------------------- sessions (loop side)
    async def open_session(self, offer_sdp: str) -> tuple[Session, str]:
        """Create a session from an SDP offer: ``(session, answer SDP)``; raises LinkProtocolError on a bad offer."""
        from aiortc import RTCPeerConnection, RTCSessionDescription

        from greenscreen_cam.link import interop, sdp  # whip: standard WHIP clients (issue 18)
        from greenscreen_cam.segmenter import StreamingTracker

        offer = sdp.check_offer(offer_sdp, max_bytes=self.opts.max_body)  # OfferError -> 400
        if not offer.sends_video():
            raise LinkProtocolError("bad SDP offer: its video section does not send (sendonly or sendrecv)")
        pc = RTCPeerConnection(self._rtc_configuration())
        session = Session(self, pc, StreamingTracker(self.model, autocast=self.autocast))

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
                await self.close_session(session, f"connection {pc.connectionState}")

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            interop.prefer_dtls_server(pc, offer.setup)  # whip: a=setup:passive, RSA clients can connect
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:  # noqa: BLE001 - aiortc raises many types on malformed SDP
            session.closed = True
            await pc.close()
            reason = str(e).splitlines()[0] if str(e) else f"not valid SDP ({type(e).__name__})"
            raise LinkProtocolError(f"bad SDP offer: {reason}") from None
        with self._cond:  # the worker iterates the sessions under this lock
            self.sessions[session.id] = session
        return session, sdp.fix_answer(pc.localDescription.sdp, offer)

    def _rtc_configuration(self) -> Any:
        from aiortc import RTCConfiguration, RTCIceServer

        servers = [
            RTCIceServer(urls=u, username=self.opts.turn_username, credential=self.opts.turn_password)
            for u in self.opts.ice_servers
        ]
        # An empty list, not None: aiortc would otherwise ask Google's public STUN server (and wait up
        # to 5 s for it where UDP is filtered).
        return RTCConfiguration(iceServers=servers)

    async def close_session(self, session: Session, reason: str) -> None:
        if session.closed:
            return
        session.closed = True
        with self._cond:
            self.sessions.pop(session.id, None)
            session._slot = None
            self._retired.append(session)
            self._cond.notify()
        self.emit(
            f"session {session.id} ended ({reason}): {session.frames_in} frames, "
            f"{session.masks_sent} masks, {session.dropped} dropped"
        )
        await session.close()

    async def _tick(self) -> None:
        """Once a second: state messages, and freeing sessions that went silent."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for s in list(self.sessions.values()):
                if now - s.last_activity > self.opts.idle_timeout:
                    await self.close_session(s, f"no video or message for {self.opts.idle_timeout:g} s")
                    continue
                s.send_json({"type": "state", "state": s.state, "masks": s.masks_sent, "dropped": s.dropped})

    # -------------------------------------------------------------- HTTP
    def _bearer(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return None

    def _refuse(self, request: web.Request, status: int, reason: str) -> web.Response:
        from aiohttp import web

        self.emit(f"{status} {request.method} {request.path} from {request.remote}: {reason}")
        headers = {"WWW-Authenticate": 'Bearer realm="greencam"'} if status == 401 else None
        return web.Response(status=status, text=reason + "\n", headers=headers)

    def _authorized(self, request: web.Request) -> str | None:
        """None when the request carries the server token, else the reason to refuse it."""
        token = self._bearer(request)
        if token is None:
            return "no bearer token (send Authorization: Bearer TOKEN)"
        if not self.check_token(token):
            return "wrong token"
        return None

    async def handle_whip(self, request: web.Request) -> web.Response:
        from aiohttp import web

        why = self._authorized(request)
        if why is not None:
            return self._refuse(request, 401, why)
        if request.content_type != "application/sdp":
            return self._refuse(request, 400, f"Content-Type must be application/sdp, not {request.content_type!r}")
        if request.content_length is not None and request.content_length > self.opts.max_body:
            return self._refuse(request, 413, f"offer of {request.content_length} bytes is over {self.opts.max_body}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(request, 413, f"offer is over {self.opts.max_body} bytes")
        try:
            offer = body.decode("utf-8")
        except UnicodeDecodeError:
            return self._refuse(request, 400, "the offer is not UTF-8 text")
        refusal = self.admission_refusal()
        if refusal is not None:
            return self._refuse(request, 503, refusal)
        try:
            session, answer = await self.open_session(offer)
        except LinkProtocolError as e:
            return self._refuse(request, 400, str(e))
        self.emit(f"session {session.id} started from {request.remote} ({len(self.sessions)}/{self.max_sessions})")
        return web.Response(
            status=201,
            text=answer,
            content_type="application/sdp",
            headers={"Location": f"/whip/{session.id}"},
        )

    async def handle_delete(self, request: web.Request) -> web.Response:
        from aiohttp import web

        why = self._authorized(request)
        if why is not None:
            return self._refuse(request, 401, why)
        session = self.sessions.get(request.match_info["sid"])
        if session is None:
            return self._refuse(request, 404, "no such session")
        await self.close_session(session, "ended by the client")
        return web.Response(status=200, text="ended\n")

    async def handle_health(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.json_response(
            {
                "status": "ok",
                "sessions": len(self.sessions),
                "max_sessions": self.max_sessions,
                "model": self.model_name,
                "device": self.device,
                "resolution": self.resolution,
                "step_ms": {str(n): round(t * 1000.0, 1) for n, t in sorted(self.step_times.items())},
            }
        )

    async def serve(
        self,
        ssl_context: ssl.SSLContext | None,
        *,
        ready: Callable[[str], None] | None,
        stop: threading.Event | None,
    ) -> None:
        """Serve until ``stop`` is set (or the task is cancelled), then close every session."""
        from aiohttp import web

        self.loop = asyncio.get_running_loop()
        self.start_worker()
        app = create_app(self)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        ticker: asyncio.Task[None] | None = None
        try:
            site = web.TCPSite(runner, self.opts.host, self.opts.port, ssl_context=ssl_context)
            try:
                await site.start()
            except OSError as e:
                raise LinkError(
                    f"cannot listen on {self.opts.host}:{self.opts.port} ({e.strerror or e}); "
                    "choose another --port or --host"
                ) from None
            port = runner.addresses[0][1] if runner.addresses else self.opts.port
            host = self.opts.host if ":" not in self.opts.host else f"[{self.opts.host}]"
            url = f"{'https' if ssl_context else 'http'}://{host}:{port}"
            self.emit(
                f"serving SAM 2 {self.model_name} @ {self.resolution} px on {self.device} at {url} "
                f"(up to {self.max_sessions} sessions)"
            )
            ticker = asyncio.ensure_future(self._tick())
            if ready is not None:
                ready(url)
            while stop is None or not stop.is_set():
                await asyncio.sleep(0.1)
        finally:
            if ticker is not None:
                ticker.cancel()
            for s in list(self.sessions.values()):
                await self.close_session(s, "server stopping")
            await runner.cleanup()
            self.stop_worker()

    def release(self) -> None:
        """Drop the model and every tracker (frees GPU memory)."""
        self.sessions.clear()
        self._retired.clear()
        device = self.device
        self.model = None
        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def create_app(server: Server) -> web.Application:
    """The aiohttp application of ``server``: WHIP signalling, health, and the browser pages."""
    from aiohttp import web

    from greenscreen_cam.link import interop
    from greenscreen_cam.link import web as pages

    @web.middleware
    async def errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return server._refuse(request, 413, f"body is over {server.opts.max_body} bytes")
        except web.HTTPException as e:
            if e.status >= 400:
                server.emit(f"{e.status} {request.method} {request.path} from {request.remote}: {e.reason}")
            raise
        except Exception as e:  # noqa: BLE001 - one bad request must not stop the server
            server.emit(f"500 {request.method} {request.path}: {type(e).__name__}: {e}")
            return web.Response(status=500, text="internal error\n")

    app = web.Application(client_max_size=server.opts.max_body, middlewares=[errors])
    app.router.add_post("/whip", server.handle_whip)
    app.router.add_delete("/whip/{sid}", server.handle_delete)
    app.router.add_get("/health", server.handle_health)
    pages.add_routes(app, server)
    interop.add_whip_http(app)  # whip: OPTIONS, CORS, WWW-Authenticate (RFC 9725)
    return app


def run_server(
    opts: ServeOptions,
    *,
    on_event: EventFn | None = None,
    ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    model: Any = None,
) -> None:
    """Load SAM 2 once and serve sessions until ``stop`` is set (or Ctrl-C), then free everything.

    Args:
        opts: The settings.
        on_event: Called with one human-readable line per event (start, sessions, refused
            requests). A generated token is reported here once, in full; tokens are never
            logged otherwise.
        ready: Called with the base URL (e.g. ``http://127.0.0.1:8470``) once the server listens.
        stop: Set it (from any thread, or a signal handler) to stop serving.
        model: An already loaded SAM 2 model to serve instead of loading one (tests,
            benchmarks); ``opts.model``/``opts.resolution`` must describe it.

    Raises:
        ConfigError: bad options or TLS files. LinkError: the port cannot be bound.
        CheckpointError, DeviceError: as for ``greencam start``.
    """
    opts.validate()
    ssl_context = _ssl_context(opts)
    token = opts.token
    if token is None:
        token = secrets.token_urlsafe(24)
        if on_event is not None:
            on_event(f"token (shown once; clients pass it with --token): {token}")
    if model is None:
        model, name, device, resolution = load_serving_model(opts)
    else:
        name = opts.model
        device = str(getattr(model, "device", opts.device))
        resolution = int(getattr(model, "image_size", opts.resolution or 1024))
    server = Server(model, opts, token, model_name=name, device=device, resolution=resolution, on_event=on_event)
    try:
        asyncio.run(server.serve(ssl_context, ready=ready, stop=stop))
    except KeyboardInterrupt:
        pass
    finally:
        server.release()
