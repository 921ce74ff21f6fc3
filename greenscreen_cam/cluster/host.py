"""``greencam serve --ray``: connect to (or start) Ray, deploy the application, serve until stopped, clean up."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from greenscreen_cam.errors import ClusterError, ConfigError

Notify = Callable[[str], None]


def _import_ray() -> Any:
    try:
        import ray
        from ray import serve  # noqa: F401 - fails without the serve extra
    except ImportError:
        raise ClusterError(
            'greencam serve --ray needs Ray Serve: pip install "greencam[cluster]" (or make install)'
        ) from None
    return ray


def _replica_resources(ray: Any, device: str) -> tuple[float, float]:
    """``(num_gpus, num_cpus)`` per replica: one GPU each where the cluster has GPUs and the device allows."""
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    if device.startswith("cuda") or (device == "auto" and has_gpu):
        if not has_gpu:
            raise ClusterError(f"--device {device}: the Ray cluster has no GPU")
        return 1.0, 1.0
    return 0.0, 0.5


def _pin_to_loopback() -> None:
    """Keep a local Ray instance on 127.0.0.1: Ray replaces a loopback ``_node_ip_address`` by the
    machine's outward address, which a single-machine instance neither needs nor should expose."""
    from ray._private import services

    original = services.resolve_ip_for_localhost
    if getattr(original, "__name__", "") != "_keep_loopback":

        def _keep_loopback(host: str) -> str:
            return host if services.is_localhost(host) else original(host)

        services.resolve_ip_for_localhost = _keep_loopback


def _restore_handlers(handlers: dict[Any, Any]) -> None:
    """Give SIGINT/SIGTERM back to the CLI: ``ray.init`` installs its own handlers over them."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, handler in handlers.items():
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(sig, handler)


def _deploy(serve: Any, app: Any, stop: threading.Event) -> bool:
    """``serve.run`` on a helper thread, so that Ctrl-C during a slow start stops at once (False: stopped)."""
    from greenscreen_cam.cluster.deploy import APP_NAME

    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            failure.append(e)
        finally:
            done.set()

    threading.Thread(target=run, name="greencam-serve-deploy", daemon=True).start()
    while not done.wait(0.2):
        if stop.is_set():
            return False
    if failure:
        e = failure[0]
        raise ClusterError(f"the Serve application did not start: {str(e).splitlines()[-1] if str(e) else e!r}")
    return True


def run_cluster(
    settings: Any,
    *,
    token: str | None,
    random_weights: bool = False,
    stop: threading.Event,
    say: Notify,
    drain_s: float = 30.0,
) -> None:
    """Deploy ``greencam serve`` on Ray Serve and serve until ``stop`` is set.

    Args:
        settings: The :class:`~greenscreen_cam.config.ServeSettings` (``ray_address``, ``replicas``,
            ``min_replicas``/``max_replicas``, ``ray_cpus``, ``host``/``port`` of Serve's HTTP proxy;
            the rest means what it means for plain ``serve``, in every replica).
        token: The cluster token (None: a new one, reported once through ``say``).
        random_weights: Seeded random weights instead of a checkpoint (tests, benchmarks).
        stop: Set it to stop serving.
        say: One line per event for the user.
        drain_s: How long a replica being removed waits for its sessions to end.

    Raises:
        ClusterError: Ray is missing or unreachable, or the deployment failed.
    """
    host, port = settings.host, settings.port
    replicas, min_replicas, max_replicas = settings.replicas, settings.min_replicas, settings.max_replicas
    ray = _import_ray()
    from ray import serve

    from greenscreen_cam.cluster import deploy

    if replicas is None and not 1 <= min_replicas <= max_replicas:
        raise ConfigError(f"--min-replicas {min_replicas} / --max-replicas {max_replicas}: need 1 <= min <= max")
    if token is None:
        token = secrets.token_urlsafe(24)
        say(f"token (shown once; clients pass it with --token): {token}")
    address = settings.ray_address or os.environ.get("RAY_ADDRESS") or None
    started = address is None
    env = {k: os.environ[k] for k in ("PYTHONPATH", deploy.SETUP_HOOK_ENV) if k in os.environ}
    common: dict[str, Any] = {"namespace": deploy.NAMESPACE, "log_to_driver": False, "logging_level": logging.WARNING}
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if started:
            say("starting a local Ray instance (127.0.0.1 only)")
            _pin_to_loopback()
            for attempt in (1, 2):  # Ray gives its raylet a fixed 30 s to register: once more on a busy machine
                try:
                    ray.init(
                        address="local",
                        num_cpus=settings.ray_cpus,
                        include_dashboard=False,
                        _node_ip_address="127.0.0.1",
                        **common,
                    )
                    break
                except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for this timeout
                    if attempt == 2 or "timed out during startup" not in str(e):
                        raise
                    say("the local Ray instance was slow to start; trying once more")
                    ray.shutdown()
        else:
            say(f"joining the Ray cluster at {address}")
            ray.init(address=address, **common)
    except Exception as e:  # noqa: BLE001 - Ray raises many types (ConnectionError, RuntimeError, ...)
        raise ClusterError(
            f"cannot start or reach Ray ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e})"
        ) from None
    finally:
        _restore_handlers(handlers)
    directory = None
    try:
        gpus, cpus = _replica_resources(ray, str(settings.device))
        directory_cls: Any = deploy.Directory
        directory = directory_cls.options(name=deploy.DIRECTORY_NAME, get_if_exists=True).remote()
        token_ref = ray.put(token)
        secrets_ref = ray.put(deploy.replica_settings(settings)[1])  # the TURN password, by the store too
        serve.start(http_options={"host": host, "port": port}, logging_config={"enable_access_log": False})
        app = deploy.build_app(
            settings=settings,
            random_weights=random_weights,
            token_ref=token_ref,
            secrets_ref=secrets_ref,
            gpus_per_replica=gpus,
            cpus_per_replica=cpus,
            torch_threads=1 if gpus == 0 else None,
            drain_s=drain_s,
            env=env,
        )
        t0 = time.monotonic()
        if not _deploy(serve, app, stop):
            return
        shown = host if ":" not in host else f"[{host}]"
        url = f"http://{shown}:{port}"
        where = (
            f"{replicas} replicas" if replicas is not None else f"{min_replicas}-{max_replicas} replicas (autoscaled)"
        )
        say(
            f"serving on {url} through Ray Serve, {where}, ready in {time.monotonic() - t0:.0f} s (Ctrl-C to stop): "
            f"cameras connect with `greencam start --server {url} --token TOKEN`"
        )
        while not stop.wait(0.5):
            pass
    finally:
        say("stopping the application" + (" and the local Ray instance" if started else ""))
        with contextlib.suppress(Exception):
            serve.delete(deploy.APP_NAME)
        if started:
            with contextlib.suppress(Exception):
                serve.shutdown()
        if directory is not None:
            with contextlib.suppress(Exception):
                ray.kill(directory)
        ray.shutdown()
