"""The Ray Serve application of ``greencam serve --ray``: an HTTP ingress and the session replicas.

Importing this module imports Ray; only ``serve --ray`` does (see :mod:`greenscreen_cam.cluster`).

- :class:`SessionHost` (deployment ``sessions``): one per GPU. It loads SAM 2 once and hosts
  the serve library's :class:`~greenscreen_cam.link.server.Server`: the peer connections, the
  per-session trackers and the batched worker. Media flows straight between a camera and the
  replica that answered its offer; Ray only carries the offer and the answer.
  It also hosts the viewers (WHEP) of its sessions, with the library's
  :class:`~greenscreen_cam.link.web.ViewerHub`.
- :class:`Ingress` (deployment ``ingress``, FastAPI): the token, the request checks, the browser
  pages, the viewer endpoints and ``/health``; the same answers as plain ``serve``'s aiohttp routes.
- :class:`OwnerRouter`: Serve's request router for ``sessions``. A request about a session goes to
  the replica named in the session id; a new session goes to the least-loaded replica by the load
  each replica publishes (``record_routing_stats``).
- :func:`sessions_policy`: Serve's autoscaling policy for ``sessions``, on sessions, not requests.
- :class:`Directory`: a small actor where replicas publish their load once a second, for ``/health``,
  and where the ingress keeps the stable viewer links (a capture page that reconnects may land
  on another replica; its link follows it).

Secrets: the cluster token stays in the ingress (a replica's registry gets a random one; the
ingress tells a replica when a caller showed the cluster token). The token and the replicas'
secret settings (the TURN password) travel as objects in Ray's store, never as deployment
arguments, which Serve shows in its config and dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from ray import serve
from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.request_router.replica_wrapper import RunningReplica
from ray.serve._private.request_router.request_router import FIFOMixin, RequestRouter
from ray.serve.config import AutoscalingContext

from greenscreen_cam.cluster.routing import Load, desired_replicas, owner_of, rank_for_new_session, session_id

log = logging.getLogger("greencam.cluster")

APP_NAME = "greencam"
DIRECTORY_NAME = "greencam-directory"
NAMESPACE = "greencam"
SETUP_HOOK_ENV = "GREENCAM_RAY_SETUP"
"""Environment variable: ``module:function`` that every replica calls first (tests keep WebRTC on loopback with it)."""

OWNER_METHODS = frozenset({"close", "view", "end_view", "check_link"})
"""SessionHost methods whose first argument is a session (or viewer) id: they go to the replica it names."""
REPLICA_SECRETS = ("turn_password",)
"""Settings the replicas need that must not be deployment arguments: they go by Ray's object store."""
MAX_CLUSTER_LINKS = 1024
"""Stable viewer links the directory remembers at once (the oldest is forgotten first)."""


# --------------------------------------------------------------------------- directory


@ray.remote(num_cpus=0)
class Directory:
    """Where every replica publishes its load (``/health`` reads it; entries expire when a replica dies)."""

    def __init__(self) -> None:
        self._loads: dict[str, tuple[float, dict[str, Any]]] = {}
        self._links: dict[str, tuple[str, str]] = {}

    def publish(self, replica: str, load: dict[str, Any]) -> None:
        self._loads[replica] = (time.monotonic(), load)

    def forget(self, replica: str) -> None:
        self._loads.pop(replica, None)

    def snapshot(self, max_age: float = 3.0) -> dict[str, dict[str, Any]]:
        now = time.monotonic()
        self._loads = {k: v for k, v in self._loads.items() if now - v[0] <= max_age}
        return {k: v[1] for k, v in sorted(self._loads.items())}

    def bind_link(self, name: str, sid: str, secret: str) -> None:
        """Point the stable viewer link ``name`` (with ``secret``) at session ``sid``, wherever it is held."""
        from greenscreen_cam.link.web import remember_link

        remember_link(self._links, name, (sid, secret), limit=MAX_CLUSTER_LINKS)

    def link(self, name: str) -> tuple[str, str] | None:
        """``(session id, secret)`` of the stable viewer link ``name``; None when there is none."""
        return self._links.get(name)


def _directory() -> Any:
    return ray.get_actor(DIRECTORY_NAME, namespace=NAMESPACE)


# --------------------------------------------------------------------------- routing


class OwnerRouter(FIFOMixin, RequestRouter):
    """Owner routing for session requests, least-loaded placement for new sessions.

    Serve's own routers have no session affinity (measured: 0 of 10 follow-ups reached the owner).
    """

    def initialize_state(self, **kwargs: Any) -> None:
        self._sent: dict[str, list[float]] = {}  # replica -> times new sessions were routed to it

    def _pending(self, rid: str, since: float) -> int:
        times = [t for t in self._sent.get(rid, []) if t > since and time.time() - t < 10.0]
        self._sent[rid] = times
        return len(times)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is None:
            return [candidate_replicas]
        pending_request.routing_context.should_backoff = True
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        method = pending_request.metadata.call_method
        if method in OWNER_METHODS:
            args = pending_request.args
            sid = args[0] if args else pending_request.kwargs.get("sid", "")
            owner = owner_of(str(sid))
            if owner in by_id:
                return [[by_id[owner]]]
            return [candidate_replicas]  # the owner is gone: any replica answers 404
        if method == "open":
            exclude = set(pending_request.kwargs.get("exclude") or ())
            ids = [rid for rid in by_id if rid not in exclude] or list(by_id)
            stats = {rid: by_id[rid].routing_stats or {} for rid in ids}
            loads = {rid: Load.from_dict(stats[rid]) for rid in ids}
            pending = {rid: self._pending(rid, float(stats[rid].get("t", 0.0))) for rid in ids}
            order = rank_for_new_session(loads, pending)
            self._sent.setdefault(order[0], []).append(time.time())
            return [[by_id[rid]] for rid in order]
        return [candidate_replicas]


def sessions_policy(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    """Serve autoscaling on the sessions replicas publish (``record_autoscaling_stats``), not on requests."""
    metrics = ctx.aggregated_metrics or {}
    per_replica = {str(k): float(v) for k, v in (metrics.get("sessions") or {}).items()}
    capacity = int(ctx.policy_state.get("capacity") or 0)
    if not capacity:
        caps = (metrics.get("max_sessions") or {}).values()
        capacity = int(max(caps, default=1))
    want = desired_replicas(
        per_replica,
        capacity,
        current=ctx.current_num_replicas,
        min_replicas=ctx.capacity_adjusted_min_replicas,
        max_replicas=ctx.capacity_adjusted_max_replicas,
    )
    return want, {"capacity": capacity}


# --------------------------------------------------------------------------- session replicas


def _run_setup_hook() -> None:
    hook = os.environ.get(SETUP_HOOK_ENV)
    if hook:
        module, _, name = hook.partition(":")
        getattr(importlib.import_module(module), name)()


def replica_settings(settings: Any) -> tuple[Any, dict[str, Any]]:
    """``(settings, secrets)``: the replicas' copy of the settings, every secret blanked, and the secrets they need.

    The copy is a deployment argument (Serve shows those in its config and dashboard); the
    secrets go by Ray's object store. The replicas need no token (the ingress checks it).
    """
    needed = {k: getattr(settings, k) for k in REPLICA_SECRETS}
    return dataclasses.replace(settings, token=None, token_file=None, **dict.fromkeys(REPLICA_SECRETS)), needed


Answer = dict[str, Any]


class SessionHost:
    """One session replica: the serve library's registry, worker and viewers, with their operations as Serve methods.

    Every method answers a plain dict ``{"status": HTTP status, ...}`` (the ingress turns it into a
    response; statuses come from :func:`greenscreen_cam.link.auth.status_of`, as in plain ``serve``),
    and names the replica (``"replica"``) so that callers can see where it ran. ``publisher=True``:
    the ingress checked that the caller showed the cluster token (which never reaches a replica).

    Args:
        settings: The serve settings with their secrets blanked (:func:`replica_settings`).
        hidden: ``[object ref]`` of the secret settings the replica needs (``{"turn_password": ...}``).
    """

    def __init__(
        self, settings: Any, hidden: list[Any], random_weights: bool, torch_threads: int | None, drain_s: float
    ) -> None:
        _run_setup_hook()
        from greenscreen_cam.link.sessions import SessionRegistry, random_session_id
        from greenscreen_cam.link.web import ViewerHub, random_viewer_id
        from greenscreen_cam.link.worker import ModelWorker, load_serving_model

        settings = dataclasses.replace(settings, **ray.get(hidden[0]))

        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.replica = serve.get_replica_context().replica_id.unique_id
        model, name, device, resolution = load_serving_model(settings, random_weights=random_weights)
        self.worker = ModelWorker(model, model_name=name, device=device, resolution=resolution)
        # The ingress checks the cluster token; a replica is reached only through Ray, so its
        # registry gets a random token nobody knows (the cluster token never travels to replicas).
        # Session and viewer ids name the replica, so that follow-up requests find it (OwnerRouter).
        self.registry = SessionRegistry(
            settings,
            secrets.token_urlsafe(32),
            self.worker,
            on_event=lambda line: log.info("replica %s: %s", self.replica, line),
            new_session_id=lambda: session_id(self.replica, random_session_id()),
        )
        self.viewers = ViewerHub(self.registry, new_viewer_id=lambda: session_id(self.replica, random_viewer_id()))
        self.worker.on_event = self.registry.emit
        self.drain_s = drain_s
        self.draining = False
        self._publisher: asyncio.Task[None] | None = None

    async def _ensure_started(self) -> None:
        """Start the worker and the timers on the replica's own event loop (the first call does)."""
        if self._publisher is not None:
            return
        self._publisher = asyncio.ensure_future(self._publish())
        await self.registry.start()

    async def _publish(self) -> None:
        directory = None
        while True:
            try:
                directory = directory or _directory()
                directory.publish.remote(self.replica, self.load_dict())
            except Exception:  # noqa: BLE001 - the directory comes and goes with the host process
                directory = None
            await asyncio.sleep(1.0)

    def load(self) -> Load:
        r = self.registry
        return Load(
            sessions=r.in_use,
            max_sessions=r.max_sessions,
            step_ms={n: t * 1000.0 for n, t in self.worker.measured_step_times().items()},
            draining=self.draining,
        )

    def load_dict(self) -> dict[str, Any]:
        return {
            **self.load().as_dict(),
            "replica": self.replica,
            "device": self.worker.device,
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "t": time.time(),
        }

    async def _answer(self, op: Callable[[], Awaitable[Answer]]) -> Answer:
        """``op()``'s answer, or the refusal of the domain error it raised, naming this replica."""
        from greenscreen_cam.errors import LinkProtocolError, PromptError, ServeRequestError
        from greenscreen_cam.link.auth import status_of

        await self._ensure_started()
        try:
            answer = await op()
        except (ServeRequestError, LinkProtocolError, PromptError) as e:
            answer = {"status": status_of(e), "reason": str(e)}
        return {**answer, "replica": self.replica}

    # -------------------------------------------------------------- Serve hooks
    async def check_health(self) -> None:
        await self._ensure_started()
        if self.worker.stopped_unexpectedly:
            raise RuntimeError("the model worker stopped")

    def record_routing_stats(self) -> dict[str, Any]:
        return self.load_dict()

    def record_autoscaling_stats(self) -> dict[str, float]:
        load = self.load()
        return {"sessions": float(load.sessions), "max_sessions": float(load.max_sessions)}

    # -------------------------------------------------------------- session operations
    async def open(self, offer: str, exclude: Sequence[str] = ()) -> Answer:
        """A new session from an SDP offer: 201 with the answer and the session id, 503 when full, 400 on a bad offer."""
        from greenscreen_cam.errors import ServeBusy

        async def op() -> Answer:
            r = self.registry
            if self.draining:
                raise ServeBusy(f"replica {self.replica} is draining")
            session, answer = await r.open_session(offer)
            r.emit(f"session {session.id} started ({len(r.sessions)}/{r.max_sessions})")
            return {"status": 201, "sdp": answer, "sid": session.id}

        return await self._answer(op)

    async def close(self, sid: str) -> Answer:
        """End session ``sid``: 200, or 404 when this replica does not hold it."""

        async def op() -> Answer:
            await self.registry.close_session(sid, "ended by the client")
            return {"status": 200}

        return await self._answer(op)

    async def view(self, sid: str, offer: Any) -> Answer:
        """A viewer's offer (a :class:`~greenscreen_cam.link.web.ViewerOffer`) for session ``sid``.

        :meth:`ViewerHub.offer_viewer`: 201 with the answer SDP and the viewer's ``location``; 404,
        401, 413, 415, 400 or 503 as in plain ``serve``.
        """

        async def op() -> Answer:
            viewer, answer = await self.viewers.offer_viewer(offer)
            return {"status": 201, "sdp": answer, "location": viewer.location}

        return await self._answer(op)

    async def end_view(
        self, viewer_id: str, route: str, token: str, publisher: bool = False, link: tuple[str, str] | None = None
    ) -> Answer:
        """A viewer's ``DELETE /whep/<route>/<viewer_id>`` (:meth:`ViewerHub.end_viewer`): 200, 404 or 401."""

        async def op() -> Answer:
            await self.viewers.end_viewer(route, viewer_id, token, publisher=publisher, link=link)
            return {"status": 200}

        return await self._answer(op)

    async def check_link(self, sid: str, name: str, secret: str) -> Answer:
        """May stable link ``name`` show session ``sid``? (:meth:`ViewerHub.check_link`): 200 with its path, 400 or 404."""

        async def op() -> Answer:
            return {"status": 200, "path": self.viewers.check_link(sid, name, secret)}

        return await self._answer(op)

    async def stats(self) -> dict[str, Any]:
        await self._ensure_started()
        return self.load_dict()

    async def __del__(self) -> None:
        """Drain on removal (scale-down, shutdown): take no new session, wait for the held ones to end."""
        self.draining = True
        deadline = time.monotonic() + self.drain_s
        while self.registry.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if self._publisher is not None:
            self._publisher.cancel()
        await self.viewers.close_all()
        await self.registry.stop()  # closes what is left ("server stopping") and stops the worker
        with contextlib.suppress(Exception):
            _directory().forget.remote(self.replica)


# --------------------------------------------------------------------------- ingress

api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


def _text(status: int, reason: str) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="greencam"'} if status == 401 else None
    return PlainTextResponse(reason + "\n", status_code=status, headers=headers)


class _IngressBase:
    """The cluster's HTTP face: WHIP and WHEP signalling, viewer links, ``/health`` and the browser pages.

    Thin over SessionHost's methods, which are thin over the serve library's plain methods (the
    same ones plain ``serve``'s aiohttp routes call), so both give the same answers.
    """

    def __init__(self, hosts: Any, secret: list[Any], max_body: int) -> None:
        self.hosts = hosts
        # The token arrives as an object in Ray's store (a reference, not a value, in the deployment's
        # arguments): it never shows in Serve's config, the dashboard or a log.
        token = ray.get(secret[0])
        self._token: str = token
        self.max_body = max_body
        self._dir: Any = None

    def _directory(self) -> Any:
        if self._dir is None:
            self._dir = _directory()
        return self._dir

    def _refuse(self, request: Request, status: int, reason: str) -> Response:
        from greenscreen_cam.link.auth import escape

        client = request.client.host if request.client else "?"
        log.info("%d %s %s from %s: %s", status, request.method, escape(request.url.path, 80), client, escape(reason))
        return _text(status, escape(reason))

    def _authorized(self, request: Request) -> str | None:
        from greenscreen_cam.link.auth import bearer_token, same_token

        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            return "no bearer token (send Authorization: Bearer TOKEN)"
        if not same_token(token, self._token):
            return "wrong token"
        return None

    def _viewer_token(self, request: Request) -> tuple[str, bool]:
        """``(token for the replica, publisher)``: the cluster token is checked here and never sent on."""
        from greenscreen_cam.link.auth import bearer_token, same_token

        token = bearer_token(request.headers.get("authorization")) or ""
        return ("", True) if same_token(token, self._token) else (token, False)

    @staticmethod
    def _declared_size(request: Request) -> int | None:
        size = request.headers.get("content-length")
        return int(size) if size is not None and size.isdigit() else None

    @staticmethod
    async def _read(request: Request, limit: int) -> bytes:
        """The request body, at most ``limit`` bytes (reads no further)."""
        chunks, total = [], 0
        async for chunk in request.stream():
            chunks.append(chunk)
            total += len(chunk)
            if total >= limit:
                break
        return b"".join(chunks)[:limit]

    async def _body(self, request: Request) -> bytes | str:
        """The request body, or why it is refused (over ``max_body``: read no further than that)."""
        size = self._declared_size(request)
        if size is not None and size > self.max_body:
            return f"body of {size} bytes is over {self.max_body}"
        body = await self._read(request, self.max_body + 1)
        if len(body) > self.max_body:
            return f"body is over {self.max_body} bytes"
        return body

    async def _ask(self, method: str, *args: Any, failed: tuple[int, str]) -> Answer:
        """SessionHost ``method(*args)`` (routed by its first argument); ``failed`` when its replica died under it."""
        try:
            answer: Answer = await getattr(self.hosts, method).remote(*args)
        except Exception as e:  # noqa: BLE001 - the replica died: what it held is gone with it
            log.warning("a session replica failed %s (%s)", method, type(e).__name__)
            return {"status": failed[0], "reason": failed[1]}
        return answer

    async def _link(self, route: str) -> tuple[str, str] | None:
        """``(session id, secret)`` when ``route`` is a stable viewer link's name (None: a session id, or unknown)."""
        from greenscreen_cam.link.web import LINK_PART

        if not LINK_PART.match(route):
            return None
        try:
            link: tuple[str, str] | None = await self._directory().link.remote(route)
        except Exception:  # noqa: BLE001 - no directory: no links (the viewer page retries on 404)
            self._dir = None
            return None
        return link

    async def whip(self, request: Request) -> Response:
        why = self._authorized(request)
        if why is not None:
            return self._refuse(request, 401, why)
        from greenscreen_cam.link.auth import escape, media_type

        # aiohttp's content_type: the media type without parameters, octet-stream when absent.
        ctype = media_type(request.headers.get("content-type"), "application/octet-stream")
        if ctype != "application/sdp":
            return self._refuse(request, 400, f"Content-Type must be application/sdp, not {escape(ctype, 60)!r}")
        body = await self._body(request)
        if isinstance(body, str):
            return self._refuse(request, 413, body)
        try:
            offer = body.decode("utf-8")
        except UnicodeDecodeError:
            return self._refuse(request, 400, "the offer is not UTF-8 text")
        tried: list[str] = []
        answer: Answer = {"status": 503, "reason": "no session replica is running"}
        for _ in range(8):  # each try excludes the replicas that said they were full
            try:
                answer = await self.hosts.open.remote(offer, exclude=tried)
            except Exception as e:  # noqa: BLE001 - a replica died under the call: Serve routes the next try elsewhere
                log.warning("a session replica failed an offer (%s); trying another", type(e).__name__)
                answer = {"status": 503, "reason": "no session replica could take the offer"}
                await asyncio.sleep(0.2)
                continue
            if answer["status"] != 503 or answer.get("replica") in tried:
                break
            tried.append(answer["replica"])
        if answer["status"] != 201:
            return self._refuse(request, answer["status"], answer["reason"])
        return Response(
            answer["sdp"],
            status_code=201,
            media_type="application/sdp",
            headers={"Location": f"/whip/{answer['sid']}"},
        )

    async def delete(self, sid: str, request: Request) -> Response:
        why = self._authorized(request)
        if why is not None:
            return self._refuse(request, 401, why)
        if owner_of(sid) is None:
            return self._refuse(request, 404, "no such session")
        answer = await self._ask("close", sid, failed=(404, "no such session"))
        if answer["status"] != 200:
            return self._refuse(request, answer["status"], answer["reason"])
        return PlainTextResponse("ended\n", status_code=200)

    async def whep(self, route: str, request: Request) -> Response:
        """A viewer's offer: to the replica holding the session (of the link) at ``route``."""
        from greenscreen_cam.link.auth import media_type
        from greenscreen_cam.link.web import MAX_OFFER_BYTES, ViewerOffer

        token, publisher = self._viewer_token(request)
        size = self._declared_size(request)
        body = b"" if size is not None and size > MAX_OFFER_BYTES else await self._read(request, MAX_OFFER_BYTES + 1)
        link = await self._link(route)
        sid = link[0] if link is not None else route  # unknown: any replica says 404 as plain serve would
        ctype = media_type(request.headers.get("content-type"))
        offer = ViewerOffer(route, token, body, ctype, declared_size=size, publisher=publisher, link=link)
        answer = await self._ask("view", sid, offer, failed=(503, "the session's replica failed"))
        if answer["status"] != 201:
            return self._refuse(request, answer["status"], answer["reason"])
        return Response(
            answer["sdp"], status_code=201, media_type="application/sdp", headers={"Location": answer["location"]}
        )

    async def whep_delete(self, route: str, viewer: str, request: Request) -> Response:
        """A viewer's ``DELETE``: to the replica its id names."""
        token, publisher = self._viewer_token(request)
        link = await self._link(route)
        answer = await self._ask("end_view", viewer, route, token, publisher, link, failed=(404, "no such viewer"))
        if answer["status"] != 200:
            return self._refuse(request, answer["status"], answer["reason"])
        return PlainTextResponse("closed\n", status_code=200)

    async def viewer_link(self, request: Request) -> Response:
        """``POST /web/viewer-link``: checked by the session's replica, kept in the directory for every replica."""
        from greenscreen_cam.errors import ServeRequestError
        from greenscreen_cam.link.auth import status_of
        from greenscreen_cam.link.web import MAX_LINK_BODY, check_publisher, parse_link_request

        try:
            check_publisher(self._authorized(request) is None)
            sid, name, secret = parse_link_request(await self._read(request, MAX_LINK_BODY + 1))
        except ServeRequestError as e:
            return self._refuse(request, status_of(e), str(e))
        answer = await self._ask("check_link", sid, name, secret, failed=(404, "no such session"))
        if answer["status"] != 200:
            return self._refuse(request, answer["status"], answer["reason"])
        try:
            await self._directory().bind_link.remote(name, sid, secret)
        except Exception:  # noqa: BLE001 - the directory comes and goes with the host process
            self._dir = None
            return self._refuse(request, 503, "the cluster's directory is not reachable; retry")
        return JSONResponse({"path": answer["path"]})

    async def health(self) -> Response:
        snapshot: dict[str, dict[str, Any]] = await self._directory().snapshot.remote()
        replicas = [
            {
                k: v[k]
                for k in ("replica", "sessions", "max_sessions", "free", "step_ms", "draining", "device", "node", "pid")
            }
            for v in snapshot.values()
        ]
        return JSONResponse(
            {
                "status": "ok" if replicas else "starting",
                "replicas": replicas,
                "sessions": sum(r["sessions"] for r in replicas),
                "max_sessions": sum(r["max_sessions"] for r in replicas),
                "free": sum(r["free"] for r in replicas),
            }
        )

    def page(self, name: str) -> Response:
        """A browser page (``index.html``, ``view.html``) or one of its files, with plain serve's headers."""
        from greenscreen_cam.link.web import NO_CACHE, PAGE_HEADERS, STATIC_TYPES, read_static

        data = read_static(name)
        if data is None:
            return _text(404, "no such file")
        headers = PAGE_HEADERS if name in ("index.html", "view.html") else NO_CACHE
        return Response(data, media_type=STATIC_TYPES[name[name.rindex(".") :]], headers=headers)


# FastAPI routes are module functions over the replica's instance: Serve's class-based views do not
# survive being pickled into the replica process.
def _me() -> _IngressBase:
    me: Any = serve.get_replica_context().servable_object
    return cast(_IngressBase, me)


@api.post("/whip")
async def _whip(request: Request) -> Response:
    return await _me().whip(request)


@api.delete("/whip/{sid}")
async def _delete(sid: str, request: Request) -> Response:
    return await _me().delete(sid, request)


@api.post("/whep/{route}")
async def _whep(route: str, request: Request) -> Response:
    return await _me().whep(route, request)


@api.delete("/whep/{route}/{viewer}")
async def _whep_delete(route: str, viewer: str, request: Request) -> Response:
    return await _me().whep_delete(route, viewer, request)


@api.post("/web/viewer-link")
async def _viewer_link(request: Request) -> Response:
    return await _me().viewer_link(request)


@api.get("/health")
async def _health() -> Response:
    return await _me().health()


@api.get("/")
async def _capture_page() -> Response:
    return _me().page("index.html")


@api.get("/view/{route}")
async def _view_page(route: str) -> Response:
    return _me().page("view.html")


@api.get("/web/{name}")
async def _static(name: str) -> Response:
    return _me().page(name)


@serve.ingress(api)
class Ingress(_IngressBase):
    """The ingress deployment (:class:`_IngressBase` with the FastAPI routes above)."""


# --------------------------------------------------------------------------- the application


def build_app(
    *,
    settings: Any,
    random_weights: bool,
    token_ref: Any,
    secrets_ref: Any,
    gpus_per_replica: float,
    cpus_per_replica: float,
    torch_threads: int | None,
    drain_s: float,
    env: dict[str, str],
) -> Any:
    """The Serve application: ``ingress`` over ``sessions`` (``settings.replicas``, or autoscaled between the bounds).

    ``token_ref``: the cluster token in Ray's object store; ``secrets_ref``: the replicas' secret
    settings there (``replica_settings(settings)[1]``). Neither value is a deployment argument.
    """
    from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, RequestRouterConfig

    from greenscreen_cam.link.sessions import ServeLimits

    scaling: dict[str, Any]
    if settings.replicas is not None:
        scaling = {"num_replicas": settings.replicas}
    else:
        scaling = {
            "autoscaling_config": AutoscalingConfig(
                min_replicas=settings.min_replicas,
                max_replicas=settings.max_replicas,
                initial_replicas=settings.min_replicas,
                upscale_delay_s=1.0,
                downscale_delay_s=30.0,
                metrics_interval_s=1.0,
                look_back_period_s=2.0,
                policy=AutoscalingPolicy(policy_function=sessions_policy),
            )
        }
    actor_options: dict[str, Any] = {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica}
    if env:
        actor_options["runtime_env"] = {"env_vars": env}
    deployment: Any = serve.deployment  # its overloads hide .bind/.options from mypy
    router_config: Any = RequestRouterConfig
    router = router_config(
        **{
            "request_router_class": OwnerRouter,
            "request_routing_stats_period_s": 1.0,
            "request_routing_stats_timeout_s": 5.0,
        }
    )
    # No secret in the deployment arguments (Serve shows them): the replicas get theirs by the store.
    public, _ = replica_settings(settings)
    hosts = deployment(
        SessionHost,
        name="sessions",
        ray_actor_options=actor_options,
        max_ongoing_requests=1000,
        health_check_period_s=2.0,
        health_check_timeout_s=30.0,
        graceful_shutdown_timeout_s=drain_s + 10.0,
        graceful_shutdown_wait_loop_s=0.5,
        request_router_config=router,
        **scaling,
    ).bind(public, [secrets_ref], random_weights, torch_threads, drain_s)
    ingress = deployment(Ingress, name="ingress", ray_actor_options={"num_cpus": 0})
    return ingress.options(max_ongoing_requests=1000).bind(hosts, [token_ref], ServeLimits().max_body)
