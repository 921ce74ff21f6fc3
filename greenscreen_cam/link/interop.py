"""What standard WHIP/WHEP clients (RFC 9725) need from aiortc's peer connections.

aiortc is imported lazily inside the functions (this module is cheap to import).

- :func:`prefer_dtls_server`: answer ``a=setup:passive`` to an ``actpass`` offer. aiortc's
  default is ``active`` (the DTLS client role), and as a DTLS client it offers only
  ECDHE-ECDSA cipher suites, so a peer whose certificate is RSA (GStreamer's ``webrtcbin``
  and most publishers built on it) fails the handshake with ``no shared cipher``. As the
  DTLS server aiortc picks the suite for its own ECDSA certificate, which every client
  supports, whatever key the client's certificate has. RFC 9725 expects the media server
  to support the server role.
- :func:`rtcp_age`: how long ago the peer last sent an RTCP report for media we send it,
  so that a WHEP viewer without a data channel counts as alive while its player reports.
- :func:`add_whip_http`: what RFC 9725 asks of the HTTP side: ``OPTIONS`` on the WHIP and
  WHEP URLs (``200``, CORS preflight, ``Accept-Post: application/sdp``), CORS headers on
  their answers, and ``WWW-Authenticate`` on every ``401``.
- :func:`stop_relay`: end a :class:`aiortc.contrib.media.MediaRelay`'s reading tasks when a
  session ends, so that none is left pending (``Task was destroyed but it is pending``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from typing import Any

RTCP_IDLE_S = 20.0
"""A viewer whose player sent no RTCP report for this long (and no data-channel message) is idle.

RFC 3550 spaces reports 2.5-7.5 s apart at the usual 5 s minimum (GStreamer's default);
browsers send one every second. Twenty seconds covers two missed reports."""


def prefer_dtls_server(pc: Any, offer_setup: str) -> bool:
    """Take the DTLS server role on every transport of ``pc`` when the offer lets us choose.

    Call it after ``setRemoteDescription(offer)`` and before ``createAnswer()``: the
    answer then says ``a=setup:passive``. An offer that says ``active`` already makes
    aiortc the server, and one that says ``passive`` needs us to be the client; both are
    left alone.

    Args:
        pc: The ``aiortc.RTCPeerConnection`` that holds the remote offer.
        offer_setup: The offer's ``a=setup`` value (``actpass``, ``active`` or ``passive``).

    Returns:
        True when the role was set (the offer said ``actpass``).
    """
    if offer_setup != "actpass":
        return False
    transports = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    for transport in transports:
        # aiortc's RTCDtlsTransport._set_role: its role is chosen only through this private setter
        if getattr(transport, "_role", None) == "auto":
            transport._set_role("server")
    return True


async def rtcp_age(pc: Any) -> float | None:
    """Seconds since the newest RTCP receiver report the peer sent about our media (None: none yet).

    aiortc records each report from the remote end as ``remote-inbound-rtp`` statistics on
    the sender it is about. A WHEP player sends one every second or few, whether or not it
    opened a data channel; aioice's consent checks (RFC 7675) fail the connection if the
    peer stops answering at all.
    """
    newest: datetime.datetime | None = None
    for sender in pc.getSenders():
        if sender.track is None and getattr(sender, "_ssrc", None) is None:
            continue
        with contextlib.suppress(Exception):  # a sender closing under us
            report = await sender.getStats()
            for stats in report.values():
                if getattr(stats, "type", None) == "remote-inbound-rtp":
                    ts = stats.timestamp
                    if newest is None or ts > newest:
                        newest = ts
    if newest is None:
        return None
    now = datetime.datetime.now(datetime.UTC) if newest.tzinfo is not None else datetime.datetime.now()
    return max(0.0, (now - newest).total_seconds())


async def stop_relay(relay: Any) -> int:
    """Cancel a ``MediaRelay``'s reading tasks once its session has ended, so none is destroyed pending.

    ``MediaRelay`` starts one task per source track that loops on ``source.recv()`` until the
    track ends. aiortc ends a received track only from its decoder thread, which starts when
    media flows: if the connection never came up (DTLS failed, the client vanished after
    its offer), the task waits for ever, and when the session is garbage-collected asyncio
    logs ``Task was destroyed but it is pending``. Call this after the peer connection is
    closed: nothing is left to relay.

    Args:
        relay: The ``aiortc.contrib.media.MediaRelay`` (None: nothing to do).

    Returns:
        How many tasks were still running and had to be cancelled.
    """
    tasks: dict[Any, asyncio.Future[None]] = getattr(relay, "_MediaRelay__tasks", None) or {}
    pending = [task for task in list(tasks.values()) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)


WHIP_PREFIXES = ("/whip", "/whep")
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "OPTIONS, POST, DELETE, PATCH",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, ETag, Accept-Post, WWW-Authenticate",
}
"""CORS for the WHIP/WHEP URLs. Authorisation is a bearer token in a header, never a cookie,
so a page from another origin gains nothing from it without the token."""
WWW_AUTHENTICATE = 'Bearer realm="greencam"'


def _whip_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in WHIP_PREFIXES)


def add_whip_http(app: Any) -> None:
    """Add ``OPTIONS`` routes, CORS headers and ``WWW-Authenticate`` to ``greencam serve``'s application.

    Call it once the WHIP and WHEP routes are added and before the application starts.

    - ``OPTIONS /whip``, ``/whip/<session>``, ``/whep/<route>``, ``/whep/<route>/<viewer>``:
      ``200`` with ``Accept-Post: application/sdp`` and the CORS preflight headers
      (no token needed: a preflight never carries one).
    - Every answer under ``/whip`` and ``/whep`` carries the CORS headers, so a browser
      client on another origin can read ``Location``.
    - Every ``401`` (from any route) says how to authenticate: ``WWW-Authenticate: Bearer``.

    Args:
        app: The ``aiohttp.web.Application``.
    """
    from aiohttp import web

    async def options(request: Any) -> Any:
        return web.Response(
            status=200,
            headers={**CORS_HEADERS, "Accept-Post": "application/sdp", "Access-Control-Max-Age": "86400"},
        )

    for path in ("/whip", "/whip/{sid}", "/whep/{session}", "/whep/{session}/{viewer}"):
        app.router.add_route("OPTIONS", path, options)

    async def on_prepare(request: Any, response: Any) -> None:
        if response.status == 401 and "WWW-Authenticate" not in response.headers:
            response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
        if _whip_path(request.path):
            for key, value in CORS_HEADERS.items():
                response.headers.setdefault(key, value)

    app.on_response_prepare.append(on_prepare)
