"""``greencam serve`` as a library: one SAM 2 model on a GPU machine, tracking for many cameras over WebRTC.

Signalling is WHIP-shaped (RFC 9725): a client ``POST``s its SDP offer to ``/whip`` with
``Authorization: Bearer TOKEN`` and gets ``201 Created``, the SDP answer and
``Location: /whip/<session>``; ``DELETE /whip/<session>`` ends the session. ``GET /health``
answers JSON. The wire format of the data channel is in :mod:`greenscreen_cam.link.protocol`
and ``docs/protocol.md``.

One object per job, each with its own state (this module only gathers their public names):

- :mod:`~greenscreen_cam.link.sessions`: :class:`SessionRegistry` (sessions, admission, the
  token) and its plain async session operations; :class:`Session` (one camera).
- :mod:`~greenscreen_cam.link.worker`: :class:`ModelWorker` (the model and the batched step on
  its own thread), :func:`load_serving_model`, :func:`track_batch`.
- :mod:`~greenscreen_cam.link.rtc`: the one peer-connection builder and aiortc details.
- :mod:`~greenscreen_cam.link.http`: the aiohttp adapter and :func:`create_app`.
- :mod:`~greenscreen_cam.link.host`: :func:`serve_app`, a hardened ``AppRunner`` + ``TCPSite`` host.
- :mod:`~greenscreen_cam.link.web`: the browser pages and the WHEP viewers.

Embedding it::

    app = create_app(ServeSettings(port=0), token=token)     # loads the model
    await serve_app(app, "127.0.0.1", 8470, until=stop_event.wait())

or hand ``app`` to any aiohttp host (``web.run_app``, ``aiohttp.test_utils.TestServer``).
"""

from __future__ import annotations

from greenscreen_cam.link.host import serve_app, ssl_context
from greenscreen_cam.link.http import REGISTRY, create_app, status_of
from greenscreen_cam.link.rtc import new_peer_connection, rtc_configuration, use_marker_jitter_buffer
from greenscreen_cam.link.sessions import ServeLimits, Session, SessionRegistry
from greenscreen_cam.link.worker import ModelWorker, load_serving_model, track_batch

__all__ = [
    "REGISTRY",
    "ModelWorker",
    "ServeLimits",
    "Session",
    "SessionRegistry",
    "create_app",
    "load_serving_model",
    "new_peer_connection",
    "rtc_configuration",
    "serve_app",
    "ssl_context",
    "status_of",
    "track_batch",
    "use_marker_jitter_buffer",
]
