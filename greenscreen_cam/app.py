"""Application wiring: settings -> opened source, model, tracker, compositor, sinks -> a ready Pipeline.

:func:`open_pipeline` is the one place that assembles ``greencam start``; the
``bench`` command and ``greencam serve`` reuse its pieces (:func:`resolve_model`,
:func:`load_tracker`). It checks everything that is cheap to check before
anything slow or physical happens: settings, the prompt's syntax, the model name
and checkpoint file, and every output path (an existing file is refused unless
``--overwrite``); then it opens the camera and the outputs, and only then loads
SAM 2. Every device it opened is released when the ``with`` block ends, and file
outputs are committed only when the run completed (see
:class:`~greenscreen_cam.sinks.VideoFileSink`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greenscreen_cam.config import ModelSettings, ServeSettings, Settings
from greenscreen_cam.errors import ConfigError
from greenscreen_cam.prompt import Prompt, build_prompt

if TYPE_CHECKING:
    from greenscreen_cam.link.sessions import ServeLimits
    from greenscreen_cam.models import ModelSpec
    from greenscreen_cam.pipeline import Pipeline
    from greenscreen_cam.segmenter import StreamingTracker

Notify = Callable[[str], None]


@dataclass(frozen=True)
class ModelChoice:
    """A checked model selection: registry entry, torch device, input size and checkpoint file."""

    spec: ModelSpec
    device: str
    resolution: int
    checkpoint: Path
    captured: bool = False
    """Replay the steady-state step as a CUDA graph (``--compile``, see :func:`greenscreen_cam.steady.resolve_compile`)."""

    def describe(self) -> str:
        return f"SAM 2 {self.spec.name} at {self.resolution} px on {self.device}"


def resolve_model(s: ModelSettings, *, random_weights: Path | None = None) -> ModelChoice:
    """Check the model name, device, resolution and checkpoint file (fast: nothing is loaded).

    With ``random_weights`` (a folder), a checkpoint of seeded random weights is
    written there instead of looking for the real file (tests and benchmarks).
    """
    from greenscreen_cam import models
    from greenscreen_cam.steady import resolve_compile

    spec, dev, res = models.choose(s.model, s.device, s.resolution)
    captured = resolve_compile(s.compile, dev)
    if random_weights is not None:
        path = models.save_random_checkpoint(spec, random_weights / spec.filename)
    else:
        path = models.resolve_checkpoint(spec, Path(s.checkpoint) if s.checkpoint else None)
    return ModelChoice(spec, dev, res, path, captured)


def load_tracker(choice: ModelChoice, *, profile: bool = False, compile_mode: bool | str = False) -> StreamingTracker:
    """Load SAM 2 (slow) and wrap it in a StreamingTracker.

    Args:
        choice: What :func:`resolve_model` checked.
        profile: Record per-stage times (benchmarks).
        compile_mode: ``torch.compile`` the image encoder: True, or a compile mode such as
            ``"reduce-overhead"`` (CUDA graphs).
    """
    from greenscreen_cam import models
    from greenscreen_cam.segmenter import StreamingTracker

    net = models.load_model(choice.spec, choice.checkpoint, device=choice.device, resolution=choice.resolution)
    if compile_mode:
        import torch

        from greenscreen_cam.paths import user_cache_dir

        # Inductor's compiled kernels go to the user's cache folder, so a second start reuses them.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(user_cache_dir() / "inductor"))
        mode = compile_mode if isinstance(compile_mode, str) else None
        net.image_encoder.forward = torch.compile(net.image_encoder.forward, dynamic=False, mode=mode)
    tracker = StreamingTracker(
        net, autocast=models.autocast_dtype(choice.device), profile=profile, captured=choice.captured
    )
    if choice.captured:
        tracker.prepare()  # capture now, before the pipeline starts, never on a live frame
    return tracker


def run_mode(s: Settings) -> str:
    """``live`` for a camera or ``--realtime`` (the tracker shares the CPU with capture), else ``offline``."""
    from greenscreen_cam.sources import is_camera

    return "live" if s.realtime or is_camera(s.source) else "offline"


def configure_threads(mode: str) -> None:
    """The thread policy for the run mode (see :mod:`greenscreen_cam.threads`)."""
    from greenscreen_cam.threads import configure_threads as apply

    apply("live" if mode == "live" else "offline")


def file_outputs(s: Settings) -> list[Path]:
    """The ``--output`` targets that are files (everything but ``virtual``)."""
    return [Path(o).expanduser() for o in s.outputs if o != "virtual"]


def check_start(s: Settings) -> tuple[Prompt | None, ModelChoice | None]:
    """Every check that needs no device: settings, prompt syntax, model and checkpoint, output paths."""
    from greenscreen_cam.sinks import check_outputs

    s.validate()
    prompt = build_prompt(s.bbox, s.points, s.negative_points)
    choice = None if s.server else resolve_model(s)
    check_outputs(
        file_outputs(s),
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
    """Open everything ``greencam start`` needs and yield the ready :class:`~greenscreen_cam.pipeline.Pipeline`.

    Leaving the block releases every device. File outputs are kept only when
    the pipeline's run completed (``pipeline.stats.completed``): an interrupted
    or failed run leaves any earlier file untouched and no partial file.

    Raises:
        GreencamError: any problem the user can fix, before anything slow happens where possible.
    """
    from greenscreen_cam.compositor import Compositor, make_background
    from greenscreen_cam.pipeline import Pipeline
    from greenscreen_cam.sinks import MatteWriter, MultiSink, PreviewSink, VideoFileSink, VirtualCameraSink
    from greenscreen_cam.sources import open_source

    say = on_event or (lambda m: None)
    configure_threads(run_mode(s))  # before torch is imported (check_start resolves the device)
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
        for target in s.outputs:
            if target == "virtual":
                vcam = VirtualCameraSink(
                    src.width, src.height, src.fps, device=s.virtual_device, backend=virtual_backend
                )
                sinks.append(vcam)
                say(f"sending to virtual camera {vcam.device} ({src.width}x{src.height} @ {src.fps:g} fps)")
            else:
                path = Path(target).expanduser()
                sinks.append(VideoFileSink(path, src.width, src.height, src.fps, overwrite=s.overwrite))
        matte = (
            stack.enter_context(MatteWriter(Path(s.matte_output).expanduser(), overwrite=s.overwrite))
            if s.matte_output
            else None
        )
        tracker = None
        remote = None
        if choice is not None:
            say(f"loading {choice.describe()} ...")
            tracker = load_tracker(choice)
        else:
            remote = stack.enter_context(_open_remote(s, src.width, src.height, say))
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
            max_delay=s.max_delay / 1000.0,
            flow=s.flow,
            lost_after=s.lost_after,
            remote=remote,
            on_status=on_status,
            on_event=say,
        )
        if remote is not None and prompt is not None:
            remote.reselect(prompt)
        yield pipeline
        if not pipeline.stats.completed:
            sink.abort()
            if matte is not None:
                matte.abort()
            if file_outputs(s) or matte is not None:
                say("the run did not complete: output files were not written (any earlier file is unchanged)")


@contextmanager
def _open_remote(s: Settings, width: int, height: int, say: Notify) -> Iterator[Any]:
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
    """The server token: ``--token``, the first line of ``--token-file``, or None (one is generated)."""
    if s.token_file is None:
        return s.token
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
