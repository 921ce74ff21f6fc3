"""Hosting the ``greencam serve`` application on a TCP socket, hardened against hostile clients.

:func:`serve_app` listens with aiohttp's ``AppRunner``/``TCPSite`` and adds what aiohttp leaves
out: a header read timeout, a cap on connections that have not yet shown a token (the oldest idle
one is closed first, so ``/health`` stays reachable), and one escaped, redacted line instead of a
traceback when the low-level HTTP parser refuses a request (its message can hold the raw request
line, ``?token=`` included). The caller owns the loop; nothing here calls ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from greenscreen_cam.errors import ConfigError, LinkError
from greenscreen_cam.link.auth import escape
from greenscreen_cam.link.http import LIMITS, REGISTRY
from greenscreen_cam.link.sessions import ServeLimits

EventFn = Callable[[str], None]


def ssl_context(cert_file: str | None, key_file: str | None) -> ssl.SSLContext | None:
    """The server's TLS context from PEM files (None without them); ConfigError when they cannot be loaded."""
    if not cert_file or not key_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as e:
        raise ConfigError(f"TLS file not found: {e.filename}") from None
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(
            f"cannot load --cert-file {cert_file} / --key-file {key_file}: {e}; both must be PEM"
        ) from None
    return ctx


class _LineLogger(logging.Logger):
    """aiohttp's server logger, replaced: warnings and errors become one escaped line, never a traceback."""

    def __init__(self, emit: EventFn) -> None:
        super().__init__("greencam.serve.http", logging.WARNING)
        self.propagate = False
        self._emit = emit

    def _log(self, level: int, msg: object, args: Any, exc_info: Any = None, *a: Any, **kw: Any) -> None:
        if level < logging.WARNING:
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = str(msg)
        exc = exc_info if isinstance(exc_info, BaseException) else None
        self._emit(f"http: {text}" + (f" ({type(exc).__name__})" if exc is not None else ""))


class ConnectionGuard:
    """Tracks the server's connections: header deadline and the cap on unauthenticated ones."""

    def __init__(self, limits: ServeLimits, emit: EventFn) -> None:
        self.limits = limits
        self.emit = emit
        self._timers: dict[Any, asyncio.TimerHandle] = {}
        self._unauthenticated: dict[Any, None] = {}
        self.timed_out = 0
        self.evicted = 0

    def opened(self, h: Any) -> None:
        loop = asyncio.get_running_loop()
        self._timers[h] = loop.call_later(self.limits.header_timeout, self._expire, h)
        self._unauthenticated[h] = None
        if len(self._unauthenticated) > self.limits.max_unauthenticated:
            # aiohttp's RequestHandler._current_request (no public way to ask whether a connection is mid-request)
            victim = next((o for o in self._unauthenticated if o is not h and o._current_request is None), None)
            if victim is None:
                victim = h  # every other one is busy with a request: refuse the newcomer
            self.evicted += 1
            self._forget(victim)
            victim.force_close()

    def head_complete(self, h: Any) -> None:
        timer = self._timers.pop(h, None)
        if timer is not None:
            timer.cancel()

    def authenticated(self, h: Any) -> None:
        self._unauthenticated.pop(h, None)

    def closed(self, h: Any) -> None:
        self._forget(h)

    def _forget(self, h: Any) -> None:
        self.head_complete(h)
        self._unauthenticated.pop(h, None)

    def _expire(self, h: Any) -> None:
        if self._timers.pop(h, None) is not None:
            self.timed_out += 1
            self._unauthenticated.pop(h, None)
            h.force_close()


def _handler_class(guard: ConnectionGuard) -> type[RequestHandler]:
    class GuardedHandler(RequestHandler):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            guard.opened(self)

        def connection_lost(self, exc: BaseException | None) -> None:
            guard.closed(self)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._request_count:
                guard.head_complete(self)

        def mark_authenticated(self) -> None:
            guard.authenticated(self)

        def handle_error(
            self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
        ) -> web.StreamResponse:
            reason = getattr(exc, "message", None) or message or (type(exc).__name__ if exc else "error")
            reason = escape(" ".join(p.strip() for p in str(reason).splitlines() if p.strip()) or "error", 160)
            guard.emit(f"{status} bad HTTP request from {request.remote}: {reason}")
            if request.writer.output_size > 0:
                raise ConnectionError("response already sent; cannot send the error")
            phrase = _phrase(status)
            text = "malformed HTTP request" if status < 500 else "internal error"
            resp = web.Response(status=status, text=f"{status} {phrase}: {text}\n", content_type="text/plain")
            resp.force_close()
            return resp

    return GuardedHandler


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` whose connections are guarded (see :class:`ConnectionGuard`)."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        handler_class = _handler_class(self.guard)

        class GuardedServer(web.Server):
            def __call__(self) -> RequestHandler:
                return handler_class(self, loop=self._loop, **self._kwargs)

        server.__class__ = GuardedServer
        return server


async def serve_app(
    app: web.Application,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    ready: Callable[[str], None] | None = None,
    until: Awaitable[Any] | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` until ``until`` completes (or the task is cancelled), then clean up.

    Args:
        app: From :func:`greenscreen_cam.link.http.create_app`.
        host: Address to bind.
        port: TCP port (0 = any free port).
        ssl_context: Serve https with it.
        ready: Called with the base URL (e.g. ``http://127.0.0.1:8470``) once the server listens.
        until: Awaited while serving; None serves until cancelled.

    Raises:
        LinkError: the port cannot be bound.
    """
    registry = app.get(REGISTRY)
    limits = app.get(LIMITS) or ServeLimits()

    def emit(line: str) -> None:
        if registry is not None:
            registry.emit(line)

    guard = ConnectionGuard(limits, emit)
    runner = GuardedRunner(
        app,
        guard,
        access_log=None,
        handle_signals=False,
        logger=_LineLogger(emit),
        keepalive_timeout=limits.keepalive_timeout,
        shutdown_timeout=5.0,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as e:
            raise LinkError(
                f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host"
            ) from None
        bound = runner.addresses[0][1] if runner.addresses else port
        shown = host if ":" not in host else f"[{host}]"
        url = f"{'https' if ssl_context else 'http'}://{shown}:{bound}"
        if registry is not None:
            w = registry.worker
            emit(
                f"serving SAM 2 {w.model_name} @ {w.resolution} px on {w.device} at {url} "
                f"(up to {registry.max_sessions} sessions)"
            )
        if ready is not None:
            ready(url)
        if until is None:
            await asyncio.Event().wait()
        else:
            await until
    finally:
        await runner.cleanup()


def _phrase(status: int) -> str:
    """The reason phrase of ``status`` ("Error" for a code that HTTPStatus does not name)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
