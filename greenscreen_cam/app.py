"""Application wiring: settings -> opened source, model, tracker, compositor, sinks -> a ready Pipeline.

:func:`open_pipeline` is the one place that assembles ``greencam start``; the
``bench`` command and ``greencam serve`` reuse its pieces (:func:`resolve_model`,
:func:`load_tracker`). It checks everything that is cheap to check before
anything slow or physical happens: settings, the prompt's syntax, the model name
and checkpoint file, and every output path (an existing file is refused unless
``--overwrite``); then it opens the camera and the outputs, and only then loads
SAM 2. Every device it opened is released when the ``with`` block ends, and file
outputs are committed only when the run completed (see
:class:`~greenscreen_cam.media.sinks.VideoFileSink`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greenscreen_cam.config import ServeSettings, Settings
from greenscreen_cam.errors import ConfigError
from greenscreen_cam.track.prompt import Prompt, Selection, build_prompt
from greenscreen_cam.track.tracking import AsyncTracking, LoadOptions, ModelChoice, Tracker, load_model, resolve_model

__all__ = ["ModelChoice", "check_start", "load_tracker", "open_pipeline", "resolve_model", "run_serve"]

if TYPE_CHECKING:
    from greenscreen_cam.link.sessions import ServeLimits
    from greenscreen_cam.live.audio_sync import AudioFollower
    from greenscreen_cam.live.idle import IdleGate
    from greenscreen_cam.live.pipeline import Pipeline
    from greenscreen_cam.media.outputs import OutputContext, Policy

Notify = Callable[[str], None]


def load_tracker(
    choice: ModelChoice, *, profile: bool = False, compile_mode: bool | str = False, notify: Notify | None = None
) -> Tracker:
    """Load the model (slow) through the tracker backend registry and make one tracker over it.

    Args:
        choice: What :func:`resolve_model` checked.
        profile: Record per-stage times (benchmarks).
        compile_mode: ``torch.compile`` the image encoder: True, or a compile mode such as
            ``"reduce-overhead"`` (CUDA graphs).
        notify: Receives progress lines while loading (the OpenVINO engine's first conversion).

    Raises:
        GreencamError: as :func:`greenscreen_cam.track.tracking.load_model`.
    """
    loaded = load_model(choice, options=LoadOptions(compile_mode=compile_mode, notify=notify))
    return loaded.new_tracker(profile=profile)


def run_mode(s: Settings) -> str:
    """``live`` for a camera or ``--realtime`` (the tracker shares the CPU with capture), else ``offline``."""
    from greenscreen_cam.media.sources import is_camera

    return "live" if s.realtime or is_camera(s.source) else "offline"


def configure_threads(mode: str) -> None:
    """The thread policy for the run mode (see :mod:`greenscreen_cam.live.threads`)."""
    from greenscreen_cam.live.threads import configure_threads as apply

    apply("live" if mode == "live" else "offline")


def file_outputs(s: Settings) -> list[Path]:
    """The ``--output`` targets that write a file (see :mod:`greenscreen_cam.media.outputs`).

    Raises:
        SinkError: an ``--output SCHEME://...`` that no registered output handles.
    """
    from greenscreen_cam.media import outputs

    return [t.path for t in outputs.parse_outputs(s.outputs) if t.path is not None and outputs.writes_file(t)]


def sink_policy(mode: str) -> str:
    """How each output takes frames in a run of ``mode`` (see :mod:`greenscreen_cam.media.outputs`).

    ``block`` offline (every frame reaches every output, files included), ``drop`` live (each
    output takes the newest frame on its own thread; what it cannot take is dropped and counted).
    """
    return "block" if mode == "offline" else "drop"


def check_start(s: Settings) -> tuple[Prompt | Selection | None, ModelChoice | None]:
    """Every check that needs no device: settings, prompt syntax, model and checkpoint, output paths."""
    from greenscreen_cam.media.sinks import check_outputs

    s.validate()
    prompt = build_prompt(s.bbox, s.points, s.negative_points)
    if s.server:
        from greenscreen_cam.link.urls import base_url

        base_url(s.server)  # a malformed --server is refused here, not after a DNS look-up
    files = file_outputs(s)  # an --output no registered kind handles is refused here
    choice = None if s.server else resolve_model(s)
    check_outputs(
        files,
        Path(s.matte_output).expanduser() if s.matte_output else None,
        overwrite=s.overwrite,
        sources=[s.source],
    )
    return prompt, choice


@contextmanager
def open_pipeline(
    s: Settings,
    *,
    virtual_backend: str | None = None,
    on_event: Notify | None = None,
    on_status: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[Pipeline]:
    """Open everything ``greencam start`` needs and yield the ready :class:`~greenscreen_cam.live.pipeline.Pipeline`.

    Leaving the block releases every device. File outputs are kept only when
    the pipeline's run completed (``pipeline.stats.completed``): an interrupted
    or failed run leaves any earlier file untouched and no partial file (telling
    the user is the caller's part).

    Raises:
        GreencamError: any problem the user can fix, before anything slow happens where possible.
    """
    from greenscreen_cam.key.compositor import Compositor, make_background
    from greenscreen_cam.live.pipeline import Pipeline
    from greenscreen_cam.media import outputs
    from greenscreen_cam.media.sinks import MatteWriter, MultiSink, PreviewSink
    from greenscreen_cam.media.sources import open_source

    say = on_event or (lambda m: None)
    mode = run_mode(s)
    configure_threads(mode)  # before torch is imported (check_start resolves the device)
    policy: Any = sink_policy(mode)
    prompt, choice = check_start(s)
    with ExitStack() as stack:
        bg = make_background(s.background, s.rgb)
        stack.callback(bg.close)
        src = open_source(
            s.source,
            width=s.width,
            height=s.height,
            fps=s.fps,
            fourcc=s.fourcc,
            realtime=s.realtime,
            reconnect_timeout=s.reconnect_timeout,
        )
        stack.callback(src.close)
        for note in getattr(src, "negotiated", []):
            say(f"camera: {note}")
        if prompt is not None:
            prompt.validate(src.width, src.height)
        preview = stack.enter_context(PreviewSink()) if s.preview else None
        if prompt is None and not s.auto and preview is not None:
            first = src.read()
            if first is not None:
                box = preview.select_box(first.image)
                if box is not None:
                    prompt = Prompt.from_box(box)
        # Every output opens before the slow model load, so a missing device is reported at once.
        sinks: list[Any] = []
        sink = stack.enter_context(MultiSink(sinks))  # owns every output opened below, even if a later one fails
        ctx = outputs.OutputContext(
            src.width,
            src.height,
            src.fps,
            overwrite=s.overwrite,
            virtual_device=s.virtual_device,
            virtual_backend=virtual_backend,
            say=say,
        )
        virtual_devices: list[str] = []
        for target in outputs.parse_outputs(s.outputs):
            opened = outputs.open_output(target, ctx)
            sinks.append(_threaded(opened, target.text, policy, file=outputs.writes_file(target), ctx=ctx))
            if target.kind == "virtual":
                virtual_devices.append(str(getattr(opened, "device", "") or ""))
        matte = (
            stack.enter_context(
                _threaded(
                    MatteWriter(Path(s.matte_output).expanduser(), overwrite=s.overwrite),
                    "matte",
                    policy,
                    file=True,
                    ctx=ctx,
                )
            )
            if s.matte_output
            else None
        )
        tracker: Tracker | AsyncTracking
        if choice is not None:
            say(f"loading {choice.describe()} ...")
            tracker = load_tracker(choice, notify=say)
            if isinstance(prompt, Selection) or s.preview:  # the preview's r adds subjects
                from greenscreen_cam.track.multi import MultiTracker

                tracker = MultiTracker(
                    getattr(tracker, "model"),  # noqa: B009
                    autocast=getattr(tracker, "autocast", None),
                    engine=getattr(tracker, "engine", None),
                )
            if isinstance(prompt, Selection):
                say(f"tracking {len(prompt)} subjects (one image encoding per frame, the key keeps them all)")
        else:
            tracker = stack.enter_context(_open_remote(s, src.width, src.height, say))
        gate = (
            _open_idle(stack, s, src, virtual_devices, keep_on=bool(preview or matte or file_outputs(s)), say=say)
            if mode == "live"
            else None
        )
        follower = _open_audio(stack, s, say) if mode == "live" else None
        pipeline = Pipeline(
            src,
            tracker,
            Compositor(
                s, bg, device=choice.device if choice is not None and choice.device.startswith("cuda") else None
            ),
            sink,
            prompt=prompt,
            auto=bool(s.auto) or prompt is None,
            matte=matte,
            preview=preview,
            max_frames=s.max_frames,
            sync=s.sync,
            max_delay=_max_delay_ms(s, follower) / 1000.0,
            flow=s.flow,
            lost_after=s.lost_after,
            on_status=_with_audio(on_status, follower),
            on_event=say,
            idle=gate,
            steady_delay=follower is not None,  # a delayed microphone wants a steady picture delay
        )
        if follower is not None:
            follower.stats = pipeline.stats  # greencam ctl status shows the delay in force
        if run_mode(s) == "live":
            _open_control(stack, pipeline, s, say)
        yield pipeline
        if not pipeline.stats.completed:  # the caller says so (greencam start: "interrupted after ...")
            sink.abort()
            if matte is not None:
                matte.abort()


def _open_audio(stack: ExitStack, s: Settings, say: Notify) -> AudioFollower | None:
    """``--audio-delay``: the started greencam microphone follower, unloaded when the run ends; None when off."""
    from greenscreen_cam.config import parse_audio_delay
    from greenscreen_cam.live.audio_sync import open_follower

    follower = open_follower(parse_audio_delay(s.audio_delay), s.microphone, say)
    if follower is not None:
        stack.callback(follower.close)
    return follower


def _max_delay_ms(s: Settings, follower: AudioFollower | None) -> float:
    """``--max-delay`` in force: as given, else what the sound's delay allows (see ``default_max_delay``)."""
    from greenscreen_cam.live.audio_sync import default_max_delay

    if s.max_delay is not None:
        return s.max_delay
    return default_max_delay(None if follower is None else follower.delay)


def _with_audio(
    on_status: Callable[[dict[str, Any]], None] | None, follower: AudioFollower | None
) -> Callable[[dict[str, Any]], None] | None:
    if follower is None:
        return on_status

    def both(snapshot: dict[str, Any]) -> None:
        follower.update(snapshot)
        if on_status is not None:
            on_status(snapshot)

    return both


def _threaded(sink: Any, name: str, policy: Policy, *, file: bool, ctx: OutputContext) -> Any:
    """``sink`` on a thread of its own; a file written live keeps about a second of frames (``buffer``)."""
    from greenscreen_cam.media import outputs

    if file and policy == "drop":
        depth = outputs.buffer_depth(ctx.width, ctx.height, ctx.fps)
        return outputs.ThreadedSink(sink, name=name, policy="buffer", depth=depth)
    return outputs.ThreadedSink(sink, name=name, policy=policy)


def _open_idle(
    stack: ExitStack, s: Settings, src: Any, devices: list[str], *, keep_on: bool, say: Notify
) -> IdleGate | None:
    """The gate that idles a live run while no app has the virtual camera open, or None (and why, when it matters).

    Idle needs a camera (it is released while idle), exactly one virtual camera whose device file
    can be watched (Linux), and no recording, matte or preview (those want every frame).
    """
    import sys

    from greenscreen_cam.live.idle import IdleGate, ViewerWatch, support

    if s.idle == "never" or not devices or not callable(getattr(src, "suspend", None)):
        return None
    if keep_on:
        say("idle: stays off while recording to a file, writing mattes or showing the preview")
        return None
    ok, why = support(sys.platform, devices[0] if len(devices) == 1 else None)
    if not ok:
        say(why)
        return None
    device = devices[0]
    if not os.path.exists(device):
        say(f"idle: cannot watch {device} for apps that open it; the camera stays on")
        return None
    gate = IdleGate(hold_off=s.idle_after)
    watch = ViewerWatch(device, on_change=gate.update).start()
    stack.callback(watch.close)
    say(
        f"idle: the camera and SAM 2 pause {s.idle_after:g} s after the last app closes {device}, "
        "and resume when one opens it (--idle never keeps them on)"
    )
    return gate


def _open_control(stack: ExitStack, pipeline: Any, s: Settings, say: Notify) -> None:
    """Listen for ``greencam ctl`` on the user's control socket; a second greencam runs without one."""
    from greenscreen_cam.errors import ControlError
    from greenscreen_cam.key.compositor import make_background
    from greenscreen_cam.live.control import ControlServer, Dispatcher, PipelineControl

    try:
        server = ControlServer(Dispatcher(PipelineControl(pipeline, make_background), s)).start()
    except ControlError as e:
        say(f"control: {e}; greencam ctl will not reach this one")
        return
    stack.callback(server.close)
    say(f"control: greencam ctl talks to this camera ({server.path})")


@contextmanager
def _open_remote(s: Settings, width: int, height: int, say: Notify) -> Iterator[AsyncTracking]:
    """Connect to ``greencam serve`` at ``s.server``; the remote tracker is closed on exit."""
    from greenscreen_cam.link.client import RemoteTracker

    assert s.server is not None
    assert s.token is not None  # Settings.validate
    remote = RemoteTracker(
        s.server,
        s.token,
        width=width,
        height=height,
        on_event=say,
        cafile=Path(s.cafile).expanduser() if s.cafile else None,
        ice_servers=list(s.ice_servers),
        turn_username=s.turn_username,
        turn_password=s.turn_password,
    )
    say(f"connecting to {s.server} ...")
    remote.start()
    try:
        yield remote
    finally:
        remote.close()


def read_token(s: ServeSettings) -> str | None:
    """The server token: ``--token``, the first line of ``--token-file``, or None (one is generated).

    ``--token-file`` wins over a token from ``GREENCAM_TOKEN`` (a flag overrides the environment);
    ``--token`` and ``--token-file`` together are refused.
    """
    if s.token_file is None:
        return s.token
    if s.token and s.token != os.environ.get("GREENCAM_TOKEN"):
        raise ConfigError("use either --token or --token-file, not both")
    path = Path(s.token_file).expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip().splitlines()[0].strip()
    except (OSError, UnicodeDecodeError, IndexError) as e:
        reason = "it is empty" if isinstance(e, IndexError) else str(e)
        raise ConfigError(f"cannot read a token from --token-file {path}: {reason}") from None
    if not token:
        raise ConfigError(f"--token-file {path} starts with an empty line")
    return token


def run_serve(
    s: ServeSettings,
    *,
    say: Notify,
    random_weights: bool = False,
    model: Any = None,
    ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    limits: ServeLimits | None = None,
    batch: bool = True,
) -> None:
    """``greencam serve``: a thin host around :func:`greenscreen_cam.link.http.create_app`.

    Loads SAM 2 once and serves until SIGINT/SIGTERM (when called on the main thread) or until
    ``stop`` is set from another thread, then closes every session and frees the model. When the
    user gave no token, one is generated here and reported once through ``say``.

    Args:
        s: The settings.
        say: One line per event (already escaped and redacted).
        random_weights: Seeded random weights instead of a checkpoint (tests, benchmarks).
        model: An already loaded model (tests, benchmarks).
        ready: Called with the base URL once the server listens (default: a line through ``say``).
        stop: Set it from any thread to stop serving.
        limits: Server tunables (tests).
        batch: Batch the image encoder over sessions.
    """
    import asyncio
    import secrets
    import signal

    from greenscreen_cam.link.host import serve_app, ssl_context
    from greenscreen_cam.link.http import create_app

    s.validate()
    if s.ray:
        run_serve_on_ray(s, stop=stop, say=say, random_weights=random_weights)
        return
    token = read_token(s)
    tls = ssl_context(
        s.cert_file and str(Path(s.cert_file).expanduser()), s.key_file and str(Path(s.key_file).expanduser())
    )
    if token is None:
        token = secrets.token_urlsafe(24)
        say(f"token (shown once; clients pass it with --token): {token}")
    application = create_app(
        s, token=token, model=model, random_weights=random_weights, limits=limits, batch=batch, on_event=say
    )

    def announce(url: str) -> None:
        say(
            f"serving on {url} (Ctrl-C to stop): cameras connect with `greencam start --server {url} --token TOKEN`,"
            f" browsers open {url}/?token=TOKEN"
        )

    async def host() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, done.set)
        if stop is not None:

            def wake() -> None:
                stop.wait()
                with suppress(RuntimeError):  # the loop is gone already
                    loop.call_soon_threadsafe(done.set)

            threading.Thread(target=wake, name="greencam-serve-stop", daemon=True).start()
        await serve_app(application, s.host, s.port, ssl_context=tls, ready=ready or announce, until=done.wait())

    asyncio.run(host())


def run_serve_on_ray(
    s: ServeSettings, *, stop: threading.Event | None, say: Notify, random_weights: bool = False
) -> None:
    """``greencam serve --ray``: the same sessions, hosted by Ray Serve replicas (greenscreen_cam/cluster).

    Serves until SIGINT/SIGTERM (on the main thread) or until ``stop`` is set.
    """
    import signal

    from greenscreen_cam.cluster.host import run_cluster

    if s.cert_file:
        raise ConfigError("--ray serves plain HTTP: put TLS on a proxy or load balancer in front of Serve's port")
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        run_cluster(s, token=read_token(s), random_weights=random_weights, stop=stop, say=say)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
