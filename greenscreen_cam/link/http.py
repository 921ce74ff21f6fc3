"""The aiohttp adapter of ``greencam serve``: routes over the session operations, and the app factory.

The handlers only translate: a request into a call on :class:`~greenscreen_cam.link.sessions.SessionRegistry`
(or the viewer hub of :mod:`greenscreen_cam.link.web`), and a
:class:`~greenscreen_cam.errors.ServeRequestError` into its status (:data:`STATUS`). The factory
:func:`create_app` hangs the worker's start and the sessions' clean-up on the application's
startup, shutdown and cleanup hooks; whoever hosts the application owns its loop
(:func:`greenscreen_cam.link.host.serve_app`, a test's ``TestServer``, another ingress).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from greenscreen_cam.errors import (
    LinkProtocolError,
    PromptError,
    ServeBadRequest,
    ServeRequestError,
    ServeTooLarge,
    ServeUnauthorized,
)
from greenscreen_cam.link import web as pages
from greenscreen_cam.link.auth import bearer_token, escape, status_of
from greenscreen_cam.link.sessions import ServeLimits, SessionRegistry
from greenscreen_cam.link.worker import ModelWorker, load_serving_model

EventFn = Callable[[str], None]
REGISTRY: web.AppKey[SessionRegistry] = web.AppKey("greencam_registry", SessionRegistry)
"""Where :func:`create_app` keeps the registry: ``app[REGISTRY]``."""
LIMITS: web.AppKey[ServeLimits] = web.AppKey("greencam_limits", ServeLimits)


def _mark_authenticated(request: web.Request) -> None:
    """Tell the connection guard (see :mod:`greenscreen_cam.link.host`) that this connection showed a token."""
    mark = getattr(request.protocol, "mark_authenticated", None)
    if callable(mark):
        mark()


def require_token(request: web.Request, registry: SessionRegistry) -> None:
    """Raise ServeUnauthorized unless the request carries the server token."""
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise ServeUnauthorized("no bearer token (send Authorization: Bearer TOKEN)")
    if not registry.check_token(token):
        raise ServeUnauthorized("wrong token")
    _mark_authenticated(request)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (ServeTooLarge beyond)."""
    if request.content_length is not None and request.content_length > limit:
        raise ServeTooLarge(f"body of {request.content_length} bytes is over {limit}")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise ServeTooLarge(f"body is over {limit} bytes")
    return body


async def read_offer(request: web.Request, limit: int) -> str:
    """An SDP offer from the body (``application/sdp``, UTF-8, at most ``limit`` bytes)."""
    if request.content_type != "application/sdp":
        raise ServeBadRequest(f"Content-Type must be application/sdp, not {escape(request.content_type, 60)!r}")
    try:
        return (await read_body(request, limit)).decode("utf-8")
    except UnicodeDecodeError:
        raise ServeBadRequest("the offer is not UTF-8 text") from None


class Routes:
    """The WHIP signalling and health routes over one registry."""

    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry

    async def whip(self, request: web.Request) -> web.Response:
        r = self.registry
        require_token(request, r)
        offer = await read_offer(request, r.limits.max_body)
        session, answer = await r.open_session(offer)
        r.emit(f"session {session.id} started from {request.remote} ({len(r.sessions)}/{r.max_sessions})")
        return web.Response(
            status=201, text=answer, content_type="application/sdp", headers={"Location": f"/whip/{session.id}"}
        )

    async def delete(self, request: web.Request) -> web.Response:
        require_token(request, self.registry)
        await self.registry.close_session(request.match_info["sid"], "ended by the client")
        return web.Response(status=200, text="ended\n")

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(self.registry.health())


def error_middleware(registry: SessionRegistry) -> Any:
    """Map domain errors to their status with one escaped, redacted log line; never a traceback."""

    def refuse(request: web.Request, status: int, reason: str) -> web.Response:
        registry.emit(f"{status} {request.method} {request.path} from {request.remote}: {reason}")
        headers = {"WWW-Authenticate": 'Bearer realm="greencam"'} if status == 401 else None
        return web.Response(status=status, text=escape(reason) + "\n", headers=headers)

    @web.middleware
    async def errors(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except (ServeRequestError, LinkProtocolError, PromptError) as e:
            return refuse(request, status_of(e), str(e))
        except web.HTTPRequestEntityTooLarge:
            return refuse(request, 413, f"body is over {registry.limits.max_body} bytes")
        except web.HTTPException as e:
            if e.status >= 400:
                registry.emit(f"{e.status} {request.method} {request.path} from {request.remote}: {e.reason}")
            raise
        except Exception as e:  # noqa: BLE001 - one bad request must not stop the server
            # The type only: an exception's text can hold server paths or request data.
            registry.emit(f"500 {request.method} {request.path}: internal error ({type(e).__name__})")
            return web.Response(status=500, text="internal error\n")

    return errors


def create_app(
    settings: Any,
    *,
    token: str,
    model: Any = None,
    random_weights: bool = False,
    limits: ServeLimits | None = None,
    batch: bool = True,
    on_event: EventFn | None = None,
) -> web.Application:
    """The aiohttp application of ``greencam serve``: WHIP signalling, health, and the browser pages.

    The model is loaded here (slow; checkpoint and device errors come out at once); the worker
    starts on ``app.on_startup`` and every session and viewer is closed on ``on_shutdown``, the
    model freed on ``on_cleanup``. The application never runs a loop itself.

    Args:
        settings: A :class:`~greenscreen_cam.config.ServeSettings`.
        token: The publisher token clients must send (required; a host may generate one).
        model: An already loaded SAM 2 model to serve instead of loading one (tests, benchmarks);
            ``settings.model``/``settings.resolution`` must describe it.
        random_weights: Seeded random weights instead of a checkpoint (tests, benchmarks).
        limits: Tunables (idle timeout, body size, connection limits).
        batch: Run the image encoder on all sessions' frames as one batch (False: one by one).
        on_event: One human-readable line per event (start, sessions, refused requests); escaped
            and redacted, never a token.

    Raises:
        ConfigError, CheckpointError, DeviceError: as for ``greencam start``.
    """
    limits = limits or ServeLimits()
    if model is None:
        model, name, device, resolution = load_serving_model(settings, random_weights=random_weights)
    else:
        name = settings.model
        device = str(getattr(model, "device", settings.device))
        resolution = int(getattr(model, "image_size", settings.resolution or 1024))
    worker = ModelWorker(model, model_name=name, device=device, resolution=resolution, batch=batch)
    registry = SessionRegistry(settings, token, worker, limits=limits, on_event=on_event)
    worker.on_event = registry.emit

    app = web.Application(client_max_size=limits.max_body, middlewares=[error_middleware(registry)])
    app[REGISTRY] = registry
    app[LIMITS] = limits
    routes = Routes(registry)
    app.router.add_post("/whip", routes.whip)
    app.router.add_delete("/whip/{sid}", routes.delete)
    app.router.add_get("/health", routes.health)
    pages.add_routes(app, registry)

    async def on_startup(app: web.Application) -> None:
        await registry.start()

    async def on_shutdown(app: web.Application) -> None:
        await registry.stop()

    async def on_cleanup(app: web.Application) -> None:
        worker.stop()
        worker.release()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
