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

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greenscreen_cam.config import ServeSettings, Settings
from greenscreen_cam.errors import ConfigError
from greenscreen_cam.prompt import Prompt, Selection, build_prompt
from greenscreen_cam.tracking import LoadOptions, ModelChoice, Tracker, load_model, resolve_model

__all__ = ["ModelChoice", "check_start", "load_tracker", "open_pipeline", "resolve_model", "run_serve"]

if TYPE_CHECKING:
    from greenscreen_cam.pipeline import Pipeline

Notify = Callable[[str], None]


def load_tracker(choice: ModelChoice, *, profile: bool = False, compile_mode: bool | str = False) -> Tracker:
    """Load the model (slow) through the tracker backend registry and make one tracker over it.

    Args:
        choice: What :func:`resolve_model` checked.
        profile: Record per-stage times (benchmarks).
        compile_mode: ``torch.compile`` the image encoder: True, or a compile mode such as
            ``"reduce-overhead"`` (CUDA graphs).

    Raises:
        GreencamError: as :func:`greenscreen_cam.tracking.load_model`.
    """
    loaded = load_model(choice, options=LoadOptions(compile_mode=compile_mode))
    return loaded.new_tracker(profile=profile)


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


def check_start(s: Settings) -> tuple[Prompt | Selection | None, ModelChoice | None]:
    """Every check that needs no device: settings, prompt syntax, model and checkpoint, output paths."""
    from greenscreen_cam.sinks import check_outputs

    s.validate()
    prompt = build_prompt(s.bbox, s.points, s.negative_points)
    if s.server and isinstance(prompt, Selection):
        raise ConfigError("several subjects are tracked locally only; give one --bbox/--point with --server")
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
                from greenscreen_cam.frame_size import EvenSizeSink, even_size

                vw, vh, rounded = even_size(src.width, src.height)  # 4:2:0 needs even sizes (Chrome refuses odd)
                if rounded:
                    say(rounded)
                vcam = EvenSizeSink(
                    VirtualCameraSink(vw, vh, src.fps, device=s.virtual_device, backend=virtual_backend), vw, vh
                )
                sinks.append(vcam)
                say(f"sending to virtual camera {vcam.device} ({vw}x{vh} @ {src.fps:g} fps)")
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
            if isinstance(prompt, Selection):
                from greenscreen_cam.multi import MultiTracker

                tracker = MultiTracker(getattr(tracker, "model"), autocast=getattr(tracker, "autocast", None))  # noqa: B009
                say(f"tracking {len(prompt)} subjects (one image encoding per frame, the key keeps them all)")
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
        if run_mode(s) == "live":
            _open_control(stack, pipeline, s, say)
        yield pipeline
        if not pipeline.stats.completed:
            sink.abort()
            if matte is not None:
                matte.abort()
            if file_outputs(s) or matte is not None:
                say("the run did not complete: output files were not written (any earlier file is unchanged)")


def _open_control(stack: ExitStack, pipeline: Any, s: Settings, say: Notify) -> None:
    """Listen for ``greencam ctl`` on the user's control socket; a second greencam runs without one."""
    from greenscreen_cam.compositor import make_background
    from greenscreen_cam.control import ControlServer, Dispatcher, PipelineControl
    from greenscreen_cam.errors import ControlError

    try:
        server = ControlServer(Dispatcher(PipelineControl(pipeline, make_background), s)).start()
    except ControlError as e:
        say(f"control: {e}; greencam ctl will not reach this one")
        return
    stack.callback(server.close)
    say(f"control: greencam ctl talks to this camera ({server.path})")


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


def run_serve(s: ServeSettings, *, stop: Any, say: Notify, random_weights: bool = False) -> None:
    """``greencam serve``: load SAM 2 once and serve sessions until ``stop`` (a threading.Event) is set."""
    from greenscreen_cam.link.server import ServeOptions, run_server

    s.validate()
    opts = ServeOptions(
        host=s.host,
        port=s.port,
        token=read_token(s),
        cert_file=Path(s.cert_file).expanduser() if s.cert_file else None,
        key_file=Path(s.key_file).expanduser() if s.key_file else None,
        max_sessions=s.max_sessions,
        model=s.model,
        checkpoint=Path(s.checkpoint).expanduser() if s.checkpoint else None,
        resolution=s.resolution,
        device=s.device,
        random_weights=random_weights,
        min_fps=s.min_fps,
        ice_servers=tuple(s.ice_servers),
        turn_username=s.turn_username,
        turn_password=s.turn_password,
    )

    def ready(url: str) -> None:
        say(
            f"serving on {url} (Ctrl-C to stop): cameras connect with `greencam start --server {url} --token TOKEN`,"
            f" browsers open {url}/?token=TOKEN"
        )

    run_server(opts, on_event=say, ready=ready, stop=stop)
