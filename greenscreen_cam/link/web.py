"""Browser pages of ``greencam serve``: the capture page, the OBS viewer page and its WHEP endpoint.

Routes added to the server's aiohttp application:

- ``GET /``: the capture page (``greenscreen_cam/web/index.html``). It publishes the camera
  over ``POST /whip`` like the CLI client and keys the frames in the browser.
- ``GET /web/<file>``: the page's static files (HTML, CSS, JavaScript modules), read with
  :mod:`importlib.resources` so they work from a wheel; nothing comes from a CDN.
- ``GET /view/<session or link name>?token=VIEWER_TOKEN``: the receive-only viewer page for
  OBS's Browser Source (OBS cannot set headers, so its token is in the URL).
- ``POST /whep/<session>`` (``Content-Type: application/sdp``, ``Authorization: Bearer TOKEN``):
  WHEP-shaped receive-only WebRTC. The answer carries the publisher's video (relayed, newest
  frame only) and the session's mask messages on the viewer's ``greencam`` data channel.
  ``201`` with ``Location: /whep/<session>/<viewer>``; ``DELETE`` there ends it.
- ``POST /web/viewer-link`` (publisher token): binds a stable viewer link
  ``/view/<name>?token=<secret>`` (name and secret drawn by the capture page and kept in its
  browser) to the page's current session. The capture page re-binds it after every
  reconnect, also after a server restart, so the link pasted into OBS keeps working.

Tokens: a viewer connection accepts the session's own viewer token, a stable link's secret,
or the server's publisher token (which can do everything anyway). Viewer tokens and link
secrets never publish: ``POST /whip`` checks only the publisher token.

The aiohttp handlers here are thin: the work is in :class:`ViewerHub`'s plain methods
(:meth:`~ViewerHub.offer_viewer`, :meth:`~ViewerHub.end_viewer`, :meth:`~ViewerHub.check_link`,
:func:`parse_link_request`), which the cluster's ingress and replicas
(:mod:`greenscreen_cam.cluster.deploy`) call too. There the ingress checks the publisher token
and says so (``publisher=True``), and keeps the stable links itself (``link=``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from greenscreen_cam.errors import (
    LinkError,
    LinkProtocolError,
    ServeBadRequest,
    ServeBusy,
    ServeNotFound,
    ServeRequestError,
    ServeTooLarge,
    ServeUnauthorized,
    ServeUnsupportedType,
)
from greenscreen_cam.link import interop, rtc
from greenscreen_cam.link.auth import bearer_token, escape, media_type, same_token, status_of
from greenscreen_cam.link.sdp import fix_answer
from greenscreen_cam.link.sessions import check_offer

logger = logging.getLogger(__name__)

MAX_OFFER_BYTES = 64 * 1024
"""A viewer's SDP offer is a few kB; larger bodies get 413."""
MAX_VIEWERS_PER_SESSION = 4
"""Each viewer costs one video encode on the server: more get 503."""
MAX_BUFFERED_BYTES = 512 * 1024
"""Mask messages are dropped for a viewer whose data channel has this much still unsent."""
WATCH_INTERVAL_S = 1.0
"""How often a viewer checks that its session still exists and that it is still there itself."""
VIEWER_IDLE_S = 10.0
"""A viewer that sent nothing (its page pings every 2 s) for this long is closed: a closed
browser tab does not always say goodbye, and aiortc would otherwise keep encoding for it."""

MAX_LINKS = 64
"""Stable viewer links remembered at once (the oldest is forgotten first)."""
MAX_LINK_BODY = 1024
"""Largest ``POST /web/viewer-link`` body; a longer one is a bad request."""
LINK_PART = re.compile(r"^[A-Za-z0-9_-]{12,64}$")
"""What a stable link's name and secret look like (the capture page draws them at random)."""
STATIC_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
"""What a static file name may look like (anything else is 404 before the file system is asked)."""

Link = tuple[str, str]
"""A stable viewer link's ``(session id, secret)``."""

STATIC_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# Pages and modules are small and change with greencam's version: let the browser revalidate.
NO_CACHE = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
PAGE_HEADERS = {
    **NO_CACHE,
    "Referrer-Policy": "no-referrer",  # the viewer URL carries a token
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; media-src 'self' blob: mediastream:; frame-ancestors 'none'"
    ),
}


@dataclass
class Viewer:
    """One receive-only peer connection watching a session."""

    id: str
    session_id: str
    pc: Any
    route: str = ""
    track: Any = None
    channel: Any = None
    listener: Any = None
    session: Any = None
    watch: asyncio.Task | None = None
    closed: bool = False
    last_seen: float = 0.0
    sent: int = 0
    dropped: int = 0

    @property
    def location(self) -> str:
        """Where the viewer's ``DELETE`` goes (the WHEP ``Location``)."""
        return f"/whep/{self.route}/{self.id}"


@dataclass(frozen=True)
class ViewerOffer:
    """A viewer's ``POST /whep/<route>`` as plain values (what :meth:`ViewerHub.offer_viewer` takes).

    Attributes:
        route: A session id or a stable link's name.
        token: The bearer token ("" for none).
        body: The offer as read: at most ``MAX_OFFER_BYTES + 1`` bytes (b"" when not read because
            ``declared_size`` is already over).
        content_type: The request's media type, without parameters, lower case.
        declared_size: Its ``Content-Length`` (None when it sent none).
        publisher: The caller showed the publisher token (checked by the caller: a cluster's ingress).
        link: ``(session id, secret)`` the caller resolved ``route`` to (None: the hub's own links).
    """

    route: str
    token: str
    body: bytes
    content_type: str
    declared_size: int | None = None
    publisher: bool = False
    link: Link | None = None


def random_viewer_id() -> str:
    """A new viewer's id: 96 random bits, URL-safe base64 (never a dot)."""
    return secrets.token_urlsafe(12)


def remember_link(links: dict[str, Link], name: str, link: Link, limit: int = MAX_LINKS) -> None:
    """Point ``name`` at ``link`` in ``links``, forgetting the oldest names beyond ``limit``."""
    links.pop(name, None)
    links[name] = link
    while len(links) > limit:
        links.pop(next(iter(links)))


def check_publisher(publisher: bool) -> None:
    """ServeUnauthorized unless the caller showed the publisher token (binding a link needs it)."""
    if not publisher:
        raise ServeUnauthorized("binding a viewer link needs the publisher token")


def parse_link_request(body: bytes) -> tuple[str, str, str]:
    """``(session id, name, secret)`` of a ``POST /web/viewer-link`` body (read up to ``MAX_LINK_BODY + 1`` bytes).

    Raises:
        ServeBadRequest: not that JSON object, or too long.
    """
    try:
        if len(body) > MAX_LINK_BODY:
            raise ValueError("too long")
        msg = json.loads(body)
        sid, name, secret = msg["session"], msg["name"], msg["secret"]
        if not all(isinstance(v, str) for v in (sid, name, secret)):
            raise ValueError("not strings")
    except (ValueError, KeyError, TypeError):
        raise ServeBadRequest('send JSON {"session": id, "name": str, "secret": str}') from None
    return sid, name, secret


def read_static(name: str) -> bytes | None:
    """The bytes of ``greenscreen_cam/web/<name>``, or None when there is no such plain file.

    Args:
        name: A file name without folders (``"capture.js"``), at most 64 characters; anything
            else gives None without asking the file system.
    """
    if not STATIC_NAME.match(name) or name.endswith(".py"):
        return None
    if not any(name.endswith(ext) for ext in STATIC_TYPES):
        return None
    try:
        ref = resources.files("greenscreen_cam.web").joinpath(name)
        if not ref.is_file():
            return None
        return ref.read_bytes()
    except OSError:  # the error's text holds the server path: say nothing but "not here"
        return None


Handler = Callable[[Any, Any], Awaitable[Any]]


def _answers_errors(fn: Handler) -> Handler:
    """An aiohttp handler of the hub that answers a ServeRequestError with its status and one log line."""

    @functools.wraps(fn)
    async def wrapper(self: ViewerHub, request: Any) -> Any:
        from aiohttp import web

        try:
            return await fn(self, request)
        except (ServeRequestError, LinkProtocolError) as e:  # LinkProtocolError: e.g. a malformed offer
            status = status_of(e)
            self._event(f"{status} {request.method} {request.path} from {request.remote}: {e}")
            headers = {"WWW-Authenticate": 'Bearer realm="greencam"'} if status == 401 else None
            return web.Response(status=status, text=escape(str(e)) + "\n", headers=headers)

    return wrapper


class ViewerHub:
    """Owns the viewer peer connections of one server (created by :func:`add_routes`).

    Args:
        server: The session registry (see :func:`add_routes` for what the hub uses of it).
        new_viewer_id: Makes each viewer's id (default :func:`random_viewer_id`); a cluster
            replica names itself in it, so that a viewer's ``DELETE`` finds it.
    """

    def __init__(self, server: Any, new_viewer_id: Callable[[], str] = random_viewer_id) -> None:
        self.server = server
        self.new_viewer_id = new_viewer_id
        self._emit = getattr(server, "emit", None)
        self.viewers: dict[str, Viewer] = {}
        # Stable viewer links: name -> (session id, secret). The capture page binds its link
        # to each new session (after a reconnect or a server restart), so the URL in OBS
        # keeps working; the viewer page retries while the link points at no live session.
        self.links: dict[str, Link] = {}

    def _event(self, line: str) -> None:
        """One line for the operator: through the server's event output when it has one."""
        if callable(self._emit):
            self._emit(line)
        else:
            logger.info("%s", line)

    # ---------------------------------------------------------------- pages

    def _new_peer_connection(self) -> Any:
        """The server's peer-connection builder (its ICE servers); none given: no ICE server at all."""
        make = getattr(self.server, "new_peer_connection", None)
        return make() if callable(make) else rtc.new_peer_connection()

    async def capture_page(self, request: Any) -> Any:
        return self._file_response("index.html", PAGE_HEADERS)

    async def view_page(self, request: Any) -> Any:
        return self._file_response("view.html", PAGE_HEADERS)

    async def static(self, request: Any) -> Any:
        return self._file_response(request.match_info["name"], NO_CACHE)

    def _file_response(self, name: str, headers: dict[str, str]) -> Any:
        from aiohttp import web

        body = read_static(name)
        if body is None:
            raise web.HTTPNotFound(text="no such file\n")
        ext = name[name.rindex(".") :]
        return web.Response(body=body, content_type=STATIC_TYPES[ext], headers=headers)

    # ---------------------------------------------------------------- WHEP

    def _authorized(self, token: str, session: Any, secret: str = "", publisher: bool = False) -> bool:
        """The session's viewer token, the stable link's secret, or the publisher token."""
        if publisher:
            return True
        if not token:
            return False
        for valid in (getattr(session, "viewer_token", None) or "", secret):
            if same_token(token, valid):
                return True
        return bool(self.server.check_token(token))

    def _resolve(self, route: str, link: Link | None = None) -> Link:
        """``(session id, link secret)`` for a ``/whep/<route>``: a stable link's name or a session id.

        ``link``: what the caller resolved ``route`` to itself (a cluster keeps its links in one place).
        """
        if link is None:
            link = self.links.get(route)
        return link if link is not None else (route, "")

    @_answers_errors
    async def whep_post(self, request: Any) -> Any:
        from aiohttp import web

        size = request.content_length
        body = b"" if size is not None and size > MAX_OFFER_BYTES else await request.content.read(MAX_OFFER_BYTES + 1)
        offer = ViewerOffer(
            request.match_info["session"],
            bearer_token(request.headers.get("Authorization")) or "",
            body,
            media_type(request.headers.get("Content-Type")),
            declared_size=size,
        )
        viewer, answer = await self.offer_viewer(offer)
        return web.Response(
            status=201, text=answer, content_type="application/sdp", headers={"Location": viewer.location}
        )

    async def offer_viewer(self, offer: ViewerOffer) -> tuple[Viewer, str]:
        """A ``POST /whep/<route>``: its checks in plain serve's order, then :meth:`open_viewer`.

        Returns:
            ``(viewer, answer SDP)``; its ``Location`` is ``viewer.location``.

        Raises:
            ServeNotFound, ServeUnauthorized (first: nothing more is said to a stranger),
            ServeTooLarge, ServeUnsupportedType, ServeBadRequest, ServeBusy.
        """
        o = offer
        self._check_viewer(o.route, o.token, o.publisher, o.link)
        if o.declared_size is not None and o.declared_size > MAX_OFFER_BYTES:
            raise ServeTooLarge(f"offer of {o.declared_size} bytes is over {MAX_OFFER_BYTES}")
        if len(o.body) > MAX_OFFER_BYTES:
            raise ServeTooLarge(f"offer is over {MAX_OFFER_BYTES} bytes")
        if o.content_type != "application/sdp":
            raise ServeUnsupportedType("send the offer as application/sdp")
        sdp = o.body.decode("utf-8", errors="replace")
        return await self.open_viewer(o.route, o.token, sdp, publisher=o.publisher, link=o.link)

    def _check_viewer(
        self, route: str, token: str, publisher: bool = False, link: Link | None = None
    ) -> tuple[str, Any]:
        """``(session id, session)`` a viewer with ``token`` may watch at ``route``; ServeNotFound/ServeUnauthorized."""
        session_id, secret = self._resolve(route, link)
        session = self.server.sessions.get(session_id)
        if session is None:
            # Also for a stable link not bound yet (e.g. just after a server restart): the viewer
            # page keeps retrying on 404. Session ids and link names are random (72+ bits), so
            # a 404 tells a prober nothing useful, and nothing is shown without the right token.
            raise ServeNotFound("no live session here yet (it starts when the capture page connects)")
        if not self._authorized(token, session, secret, publisher):
            raise ServeUnauthorized("wrong viewer token")
        return session_id, session

    async def open_viewer(
        self, route: str, token: str, sdp: str, *, publisher: bool = False, link: Link | None = None
    ) -> tuple[Viewer, str]:
        """Attach a receive-only viewer to the session at ``route`` (a session id or a stable link name).

        ``publisher`` and ``link``: as in :class:`ViewerOffer`.

        Returns:
            ``(viewer, answer SDP)``.

        Raises:
            ServeNotFound, ServeUnauthorized, ServeBadRequest, ServeBusy.
        """
        session_id, session = self._check_viewer(route, token, publisher, link)
        offer = check_offer(sdp, viewer=True)
        if sum(1 for v in self.viewers.values() if v.session_id == session_id) >= MAX_VIEWERS_PER_SESSION:
            raise ServeBusy(f"this session already has {MAX_VIEWERS_PER_SESSION} viewers (each costs a video encode)")
        try:
            track = session.relay_track()
        except LinkError as e:  # the camera has sent no video yet
            raise ServeBusy(f"no video to view yet ({e}); retry in a moment") from None
        try:
            viewer, answer = await self._answer(session, session_id, sdp, track, offer.setup)
            answer = fix_answer(answer, offer)  # whip: BUNDLE only when offered
        except ValueError as e:
            raise ServeBadRequest(f"bad SDP offer: {e}") from None
        viewer.route = route
        return viewer, answer

    async def _answer(
        self, session: Any, session_id: str, sdp: str, track: Any, setup: str = "actpass"
    ) -> tuple[Viewer, str]:
        """Answer a viewer's offer with ``track`` (the session's relayed video) and its masks."""
        from aiortc import RTCSessionDescription

        pc = self._new_peer_connection()
        viewer = Viewer(
            id=self.new_viewer_id(),
            session_id=session_id,
            pc=pc,
            session=session,
            track=track,
            last_seen=time.monotonic(),
        )
        self.viewers[viewer.id] = viewer
        loop = asyncio.get_running_loop()

        def forward(message: bytes) -> None:
            # Mask listeners may be called from the tracking thread: hop onto the loop.
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                self._send(viewer, message)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(self._send, viewer, message)

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if viewer.channel is not None:
                return
            viewer.channel = channel

            @channel.on("message")
            def on_message(message: Any) -> None:
                viewer.last_seen = time.monotonic()
                if isinstance(message, str) and len(message) < 1024:
                    with contextlib.suppress(ValueError, TypeError, AttributeError):
                        msg = json.loads(message)
                        if msg.get("type") == "ping":
                            channel.send(json.dumps({"type": "pong", "t": msg.get("t")}))

            @channel.on("close")
            def on_close() -> None:
                asyncio.ensure_future(self.close_viewer(viewer.id, "data channel closed"))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close_viewer(viewer.id, f"connection {pc.connectionState}")

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            pc.addTrack(track)
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "video":
                    transceiver.direction = "sendonly"
            interop.prefer_dtls_server(pc, setup)  # whip: a=setup:passive, RSA-certificate players connect
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:
            await self.close_viewer(viewer.id)
            raise ValueError(str(e) or type(e).__name__) from None
        viewer.listener = forward
        session.add_mask_listener(forward)
        viewer.watch = asyncio.create_task(self._watch(viewer))
        self._event(f"viewer {viewer.id[:4]}… joined session {session_id[:8]}")
        return viewer, pc.localDescription.sdp

    def _send(self, viewer: Viewer, message: bytes) -> None:
        channel = viewer.channel
        if viewer.closed or channel is None or channel.readyState != "open":
            return
        if channel.bufferedAmount > MAX_BUFFERED_BYTES:
            viewer.dropped += 1
            return
        try:
            channel.send(message)
            viewer.sent += 1
        except Exception:  # a channel closing under us: the state callback cleans up
            viewer.dropped += 1

    async def _watch(self, viewer: Viewer) -> None:
        """Close the viewer when its publisher's session ends or when it has been silent too long."""
        while not viewer.closed:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if self.server.sessions.get(viewer.session_id) is not viewer.session:
                await self.close_viewer(viewer.id, "its session ended")
                return
            # whip: a player's RTCP reports count as activity too (a WHEP player may open no channel)
            age = await interop.rtcp_age(viewer.pc)
            reporting = age is not None and age < interop.RTCP_IDLE_S
            if not reporting and time.monotonic() - viewer.last_seen > VIEWER_IDLE_S:
                await self.close_viewer(viewer.id, f"silent for {VIEWER_IDLE_S:g} s")
                return

    async def close_viewer(self, viewer_id: str, reason: str = "closed") -> bool:
        """Close one viewer's peer connection and stop its relay; False when it was not open."""
        viewer = self.viewers.pop(viewer_id, None)
        if viewer is None or viewer.closed:
            return False
        viewer.closed = True
        if viewer.listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                viewer.session.remove_mask_listener(viewer.listener)
        if viewer.track is not None:
            viewer.track.stop()
        if viewer.watch is not None and viewer.watch is not asyncio.current_task():
            viewer.watch.cancel()
        await viewer.pc.close()
        self._event(
            f"viewer {viewer.id[:4]}… left session {viewer.session_id[:8]} "
            f"({reason}; {viewer.sent} masks sent, {viewer.dropped} dropped)"
        )
        return True

    @_answers_errors
    async def bind_link(self, request: Any) -> Any:
        """``POST /web/viewer-link`` (publisher token): point a stable viewer link at a session.

        Body: JSON ``{"session": id, "name": str, "secret": str}``; name and secret are 12-64
        characters of ``A-Za-z0-9_-``. The viewer then opens ``/view/<name>?token=<secret>``.
        """
        from aiohttp import web

        check_publisher(bool(self.server.check_token(bearer_token(request.headers.get("Authorization")))))
        sid, name, secret = parse_link_request(await request.content.read(MAX_LINK_BODY + 1))
        return web.json_response({"path": self.bind(sid, name, secret)})

    def check_link(self, sid: str, name: str, secret: str) -> str:
        """May the stable viewer link ``name`` (with ``secret``) show session ``sid``? Its path when it may.

        Raises:
            ServeBadRequest: a malformed or taken name. ServeNotFound: no such session here.
        """
        if not LINK_PART.match(name) or not LINK_PART.match(secret):
            raise ServeBadRequest("name and secret must be 12-64 characters of A-Za-z0-9_-")
        if name in self.server.sessions:
            raise ServeBadRequest("that name is taken")
        if sid not in self.server.sessions:
            raise ServeNotFound("no such session")
        self._event(f"viewer link {name[:4]}… now shows session {sid[:8]}")
        return f"/view/{name}"

    def bind(self, sid: str, name: str, secret: str) -> str:
        """Point the stable viewer link ``name`` (with ``secret``) at session ``sid``; its path.

        Raises:
            ServeBadRequest: a malformed or taken name. ServeNotFound: no such session.
        """
        path = self.check_link(sid, name, secret)
        remember_link(self.links, name, (sid, secret))
        return path

    @_answers_errors
    async def whep_delete(self, request: Any) -> Any:
        from aiohttp import web

        token = bearer_token(request.headers.get("Authorization")) or ""
        await self.end_viewer(request.match_info["session"], request.match_info["viewer"], token)
        return web.Response(status=200, text="closed\n")

    async def end_viewer(
        self, route: str, viewer_id: str, token: str, *, publisher: bool = False, link: Link | None = None
    ) -> None:
        """End viewer ``viewer_id`` of ``route`` for a client holding ``token``; ServeNotFound/ServeUnauthorized.

        ``publisher`` and ``link``: as in :class:`ViewerOffer`.
        """
        viewer = self.viewers.get(viewer_id)
        if viewer is None or viewer.route != route:
            raise ServeNotFound("no such viewer")
        if not self._authorized(token, viewer.session, self._resolve(viewer.route, link)[1], publisher):
            raise ServeUnauthorized("wrong token")
        await self.close_viewer(viewer.id, "ended by the viewer")

    async def close_all(self, app: Any = None) -> None:
        """Close every viewer (the application's shutdown hook)."""
        for viewer_id in list(self.viewers):
            await self.close_viewer(viewer_id)


def add_routes(app: Any, server: Any) -> ViewerHub:
    """Add the browser pages and the viewer (WHEP) endpoint to the server's aiohttp application.

    Args:
        app: The ``aiohttp.web.Application`` of ``greencam serve`` (not yet started).
        server: The server object: ``sessions`` (dict id -> session), ``check_token(token) -> bool``;
            each session has ``id``, ``viewer_token``, ``relay_track()``,
            ``add_mask_listener(fn)`` and ``remove_mask_listener(fn)``.

    Returns:
        The :class:`ViewerHub` holding the viewer connections.
    """
    hub = ViewerHub(server)
    app.router.add_get("/", hub.capture_page)
    app.router.add_get("/web/{name}", hub.static)
    app.router.add_post("/web/viewer-link", hub.bind_link)
    app.router.add_get("/view/{session}", hub.view_page)
    app.router.add_post("/whep/{session}", hub.whep_post)
    app.router.add_delete("/whep/{session}/{viewer}", hub.whep_delete)
    app.on_shutdown.append(hub.close_all)
    return hub
