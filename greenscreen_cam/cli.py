"""The ``greencam`` command line: parse, print, exit codes.

Commands are thin. Their options are derived from the settings dataclasses of
:mod:`greenscreen_cam.config` (one definition per setting) by
:func:`settings_options`; the application itself is assembled by
:mod:`greenscreen_cam.app`. Every :class:`~greenscreen_cam.errors.GreencamError`
becomes one line on stderr and its exit code. torch, sam2 and pyvirtualcam are
imported only inside the commands that need them, so ``greencam --help`` and
``greencam devices`` start fast.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
from rich.console import Console
from rich.table import Table

from greenscreen_cam import __version__
from greenscreen_cam.cli_help import BENCH_EPILOG, CTL_EPILOG, SERVE_EPILOG, START_EPILOG
from greenscreen_cam.config import (
    GROUPS,
    SYNC_MODES,
    ModelSettings,
    ServeSettings,
    Settings,
    defaults_toml,
    flag_of,
    load_settings,
    settings_fields,
    to_toml,
)
from greenscreen_cam.errors import ConfigError, GreencamError
from greenscreen_cam.live.status import StatusLine

# greencam reports every file and camera problem in its own one line: FFmpeg's messages inside
# OpenCV ("moov atom not found") stay quiet unless the user asks for them (OPENCV_FFMPEG_LOGLEVEL=24).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def _flags_show_no_metavar() -> None:
    """Typer prints a flag's type in ``--help`` (``--json <bool>``) as if it took a value: a flag shows none."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "greencam_flags", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich.greencam_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_metavar()

app = typer.Typer(
    name="greencam",
    help=(
        "A virtual green screen for video calls: SAM 2 tracks you, everything else turns chroma green "
        "RGB(0,175,57), and the frames go to a virtual webcam.\n\n"
        "Quick start:  greencam download tiny  then  greencam start --bbox 400,80,480,640  "
        "and pick the virtual camera in Zoom / OBS / Meet."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


def fail(error: GreencamError) -> None:
    err.print(f"[bold red]greencam: error:[/] {error}", soft_wrap=True, markup=True)
    raise typer.Exit(error.exit_code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn domain errors into one stderr line + exit code; Ctrl-C into exit 130."""
    try:
        yield
    except GreencamError as e:
        fail(e)
    except KeyboardInterrupt:
        err.print("greencam: interrupted")
        raise typer.Exit(130) from None


def _print_version(value: bool) -> None:
    if value:
        out.print(f"greencam {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """greencam: a virtual green screen for video calls."""


# --------------------------------------------------------------------------- options from settings

_CONFIG_PARAM = inspect.Parameter(
    "config",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Settings file (TOML, YAML or JSON); flags override it.", show_default=False
        ),
    ],
)


def _option(f: Any, hint: Any) -> inspect.Parameter:
    """One settings field -> a Typer option whose default None means "not given on the command line"."""
    meta = f.metadata
    flags = tuple(meta.get("flags") or ())
    base = hint if not (hasattr(hint, "__args__") and type(None) in hint.__args__) else hint.__args__[0]
    if base is bool:
        long = flag_of(f)
        flags = (f"{long}/--no-{long[2:]}",) + tuple(x for x in flags if not x.startswith("--"))
    elif not flags:
        flags = (flag_of(f),)
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    shown = "" if default in (None, [], "") else f" (default: {_fmt_default(default)})"
    if meta.get("shown_default"):
        shown = f" (default: {meta['shown_default']})"
    option = typer.Option(
        *flags,
        help=meta.get("help", "") + shown,
        show_default=False,
        rich_help_panel=meta.get("group"),
        envvar=meta.get("envvar"),
        metavar=meta.get("metavar"),
    )
    if base is list or str(base).startswith("list"):
        annotation: Any = Annotated[list[str] | None, option]
    else:
        annotation = Annotated[base | None, option]
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def _fmt_default(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_options(
    cls: type[Any], *, only: Sequence[str] | None = None, layered: bool = True
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command one option per field of the settings class ``cls`` (or the fields in ``only``).

    The command receives ``settings`` (an instance of ``cls``) built from
    defaults < ``configs/default.toml`` < the user's config file (or ``--config``)
    < flags; with ``layered=False`` only defaults < flags (benchmarks stay reproducible).
    """
    hints = get_type_hints(cls)
    chosen = settings_fields(cls, only)

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(command).parameters.values() if p.name != "settings"]
        own_hints = get_type_hints(command, include_extras=True)
        own = [p.replace(annotation=own_hints.get(p.name, p.annotation)) for p in own]
        ordered = sorted(chosen, key=lambda f: GROUPS.index(f.metadata["group"]))  # stable within a group
        extra = [_option(f, hints[f.name]) for f in ordered]
        params = own + extra + ([_CONFIG_PARAM] if layered else [])
        names = [f.name for f in chosen]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            config = kwargs.pop("config", None)
            flags = {name: kwargs.pop(name) for name in names}
            with user_errors():
                if layered:
                    settings = load_settings(config, flags, cls=cls)
                else:
                    settings = load_settings(None, flags, cls=cls, defaults_file=None, user_file=None)
            command(settings=settings, **kwargs)

        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__
        return wrapper

    return decorate


# --------------------------------------------------------------------------- start


@app.command(epilog=START_EPILOG)
@settings_options(Settings)
def start(
    settings: Settings,
    virtual_backend: Annotated[str | None, typer.Option(hidden=True, help="pyvirtualcam backend name.")] = None,
) -> None:
    """Key the webcam (or a file) live and send it to the virtual camera."""
    from greenscreen_cam.app import open_pipeline

    _quiet_opencv_warnings()
    with _tracker_steps_end_before_exit(), user_errors(), StatusLine(err, settings) as status:
        with (
            open_pipeline(
                settings, virtual_backend=virtual_backend, on_event=status.event, on_status=status.show
            ) as pipeline,
            stop_on_signals(pipeline.stop) as signals,
        ):
            offline = not pipeline.source.live
            total = expected_frames(getattr(pipeline.source, "frame_count", None), settings.max_frames)
            if offline:
                status.begin_job(total)
            summary = pipeline.run()
        if offline and not summary["completed"]:
            # An offline job that was stopped (Ctrl-C, SIGTERM, q) did not do its work: no success exit.
            status.interrupted(summary, total, unwritten_outputs(settings))
            raise typer.Exit(128 + (signals[0] if signals else signal.SIGINT))
        status.summary(summary)
        if summary["frames_out"] and not summary.get("keyed_frames", 1):
            status.event(
                "warning: no subject was found in any frame, so every frame is the plain key colour; "
                "select one with --bbox X,Y,W,H or --point X,Y (or face the camera for --auto)"
            )


@contextmanager
def _tracker_steps_end_before_exit(timeout: float = 10.0) -> Iterator[None]:
    """After the run (devices released, summary printed), wait for a tracker step still running.

    The live tracker runs on a daemon thread (``greencam-tracker``, see
    :class:`~greenscreen_cam.key.sync.ThreadedTracker`) that a stop does not wait for; a process that
    exits while torch runs there aborts ("terminate called without an active exception").
    """
    try:
        yield
    finally:
        import threading
        import time

        deadline = time.monotonic() + timeout
        for thread in threading.enumerate():
            if thread.daemon and thread.name == "greencam-tracker":
                thread.join(max(0.0, deadline - time.monotonic()))


def expected_frames(frame_count: int | None, max_frames: int | None) -> int | None:
    """How many frames an offline job will output: the source's length, capped by ``--max-frames``."""
    if frame_count is None:
        return max_frames
    return min(frame_count, max_frames) if max_frames else frame_count


def unwritten_outputs(settings: Settings) -> list[str]:
    """The file outputs (``--output`` files, ``--matte-output``) an interrupted offline job did not write."""
    names = [str(o) for o in settings.outputs if o != "virtual"]
    if settings.matte_output:
        names.append(str(settings.matte_output).rstrip("/") + "/")
    return names


def _quiet_opencv_warnings() -> None:
    """OpenCV's own warnings ("write FFmpeg: Failed to write frame") duplicate greencam's errors: errors only.

    ``OPENCV_LOG_LEVEL`` set by the user wins.
    """
    if "OPENCV_LOG_LEVEL" in os.environ:
        return
    import cv2

    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is not None:
        logging.setLogLevel(logging.LOG_LEVEL_ERROR)


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[list[int]]:
    """SIGINT/SIGTERM ask the loop to stop and release the devices; a second Ctrl-C exits at once.

    Yields the list of the signal numbers received (empty while none came).
    """
    previous: dict[int, Any] = {}
    hits: list[int] = []

    def handler(signum: int, frame: object) -> None:
        hits.append(signum)
        if len(hits) == 1:
            stop()
            return
        os.write(2, b"\ngreencam: interrupted again: exiting now\n")
        os._exit(130)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(ValueError):  # not the main thread (e.g. some test runners)
            previous[sig] = signal.signal(sig, handler)
    try:
        yield hits
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


# --------------------------------------------------------------------------- serve


@app.command(epilog=SERVE_EPILOG)
@settings_options(ServeSettings)
def serve(
    settings: ServeSettings,
    random_weights: Annotated[
        bool, typer.Option("--random-weights", hidden=True, help="Seeded random weights (tests and benchmarks).")
    ] = False,
) -> None:
    """Serve SAM 2 to cameras elsewhere over WebRTC (greencam start --server, or the browser page)."""
    from greenscreen_cam.app import run_serve

    with user_errors():  # run_serve stops on SIGINT/SIGTERM itself
        run_serve(settings, random_weights=random_weights, say=_say)


def _say(message: str) -> None:
    err.print(f"greencam: {message}", soft_wrap=True, markup=False)


# --------------------------------------------------------------------------- devices


@app.command(epilog="Examples:\n\n  greencam devices\n\n  greencam devices --json")
def devices(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List cameras, virtual cameras and microphones (with the greencam Microphone when it runs)."""
    from greenscreen_cam.media.audio import list_microphones
    from greenscreen_cam.media.devices import LINUX_VCAM_PERSIST, list_devices, virtual_camera_help

    found = list_devices()
    cams = [d for d in found if not d.virtual]
    vcams = [d for d in found if d.virtual]
    mics, no_mics = list_microphones() if sys.platform.startswith("linux") else ([], None)
    if as_json:
        listed = {"cameras": [d.to_dict() for d in cams], "virtual_cameras": [d.to_dict() for d in vcams]}
        out.print_json(json.dumps(listed | {"microphones": [dataclasses.asdict(m) for m in mics]}))
        return
    if found:
        table = Table(title="Video devices")
        for col in ("index", "path", "name", "kind", "formats"):
            table.add_column(col)
        for d in found:
            kind = "[green]virtual camera (greencam output)[/]" if d.virtual else "camera"
            table.add_row(str(d.index), d.path, d.name, kind, "\n".join(d.formats) or "-")
        out.print(table)
    if not cams:
        out.print("No cameras found.")
    if not vcams:
        out.print("No virtual camera found: " + virtual_camera_help(), soft_wrap=True)
        if sys.platform.startswith("linux"):
            out.print(LINUX_VCAM_PERSIST, soft_wrap=True)
    if mics:
        table = Table(title="Microphones (--microphone NAME)")
        for col in ("name", "description"):
            table.add_column(col)
        for m in mics:
            table.add_row(m.name, f"[green]{m.description} (greencam output)[/]" if m.greencam else m.description)
        out.print(table)
    elif no_mics:
        out.print(no_mics, soft_wrap=True, markup=False)


# --------------------------------------------------------------------------- models / download


@app.command(epilog="Examples:\n\n  greencam models\n\n  GREENCAM_CHECKPOINTS=/data/sam2 greencam models")
def models() -> None:
    """List the SAM 2 models greencam knows, which are downloaded, and the folder it looks in."""
    from greenscreen_cam.track import models as m

    folder = m.default_checkpoint_dir()
    table = Table(title=f"SAM 2 models (in {folder})")
    for col in ("name", "file", "size", "sha256", "downloaded"):
        table.add_column(col)
    for spec in m.MODELS.values():
        have = (folder / spec.filename).is_file()
        size = f"{spec.size / 1e6:.0f} MB" if spec.size else "?"
        table.add_row(
            spec.name + (" (default)" if spec.name == m.DEFAULT_MODEL else ""),
            spec.filename,
            size,
            (spec.sha256 or "-")[:12],
            "yes" if have else "no",
        )
    out.print(table)
    out.print(f"Checkpoint folder: {folder} (set GREENCAM_CHECKPOINTS to use another)", soft_wrap=True)


@app.command(
    epilog="Examples:\n\n  greencam download\n\n  greencam download small\n\n"
    "  greencam download tiny --url https://mirror.example/sam2.1_hiera_tiny.pt"
)
def download(
    model: Annotated[str, typer.Argument(help="Model name (see greencam models).")] = "tiny",
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Destination folder (default: the checkpoint folder).")
    ] = None,
    url: Annotated[str | None, typer.Option(help="Download from this URL instead of Meta's.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Download even if a verified file exists.")] = False,
) -> None:
    """Download a SAM 2 checkpoint (verified by size and SHA-256) into the checkpoint folder."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from greenscreen_cam.track import models as m

    with user_errors():
        spec = m.get_spec(model)
        target = directory or m.default_checkpoint_dir()
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        ) as bar:
            task = bar.add_task(f"{spec.filename}", total=spec.size)

            def progress(done: int, total: int | None) -> None:
                bar.update(task, completed=done, total=total)

            result = m.download(spec, target, url=url, progress=progress, force=force)
        out.print(f"{result.path} ({result.size} bytes, {result.describe()})", soft_wrap=True)


# --------------------------------------------------------------------------- config


@app.command(
    "config",
    epilog="Examples:\n\n  greencam config\n\n  greencam config --config my.toml --json\n\n"
    "  greencam config --defaults > my.toml\n\n  greencam config --path\n\n"
    "  greencam config --write\n\n  greencam config --write --config my.toml --overwrite",
)
def show_config(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Settings file (TOML, YAML or JSON).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of TOML.")] = False,
    defaults: Annotated[bool, typer.Option("--defaults", help="Print every setting at its default.")] = False,
    path: Annotated[bool, typer.Option("--path", help="Print where your own config file is read from.")] = False,
    show_secrets: Annotated[
        bool, typer.Option("--show-secrets", help="Print token and turn_password in clear (masked by default).")
    ] = False,
    write: Annotated[
        bool,
        typer.Option(
            "--write",
            help="Write a starter config file (every setting commented out at its default) to the path --path "
            "prints, or to --config FILE. Refuses to replace an existing file.",
        ),
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="With --write: replace an existing file.")] = False,
) -> None:
    """Print the effective settings (defaults < configs/default.toml < your file); credentials are masked."""
    from greenscreen_cam.config import MASK, SECRET_SETTINGS, masked, user_config_file, write_config_file

    with user_errors():
        if overwrite and not write:
            raise ConfigError("--overwrite goes with --write (greencam config --write --overwrite)")
        if write:
            written = write_config_file(config if config is not None else user_config_file(), overwrite=overwrite)
            out.print(f"wrote {written}; edit it, then greencam config shows the settings in force", soft_wrap=True)
            return
        if path:
            out.print(str(user_config_file()), soft_wrap=True)
            return
        if defaults:
            sys.stdout.write(defaults_toml())
            return
        settings = load_settings(config)
        if not show_secrets:
            settings = masked(settings)
        if as_json:
            out.print_json(json.dumps(settings.to_dict()))
            return
        text = to_toml(settings)
        if not show_secrets:  # a saved copy must not carry the mask as a value
            hidden = {f'{key} = "{MASK}"' for key in SECRET_SETTINGS}
            text = "".join(
                f"# {line.rstrip()} (hidden: --show-secrets prints it)\n" if line.rstrip() in hidden else line
                for line in text.splitlines(keepends=True)
            )
        sys.stdout.write(text)


# --------------------------------------------------------------------------- bench


@app.command(epilog=BENCH_EPILOG)
@settings_options(ModelSettings, layered=False)
def bench(
    settings: ModelSettings,
    source: Annotated[str | None, typer.Argument(help="Video file or image folder.")] = None,
    frames: Annotated[int, typer.Option(help="Frames to measure.")] = 30,
    random_weights: Annotated[
        bool, typer.Option("--random-weights", help="Use seeded random weights (no checkpoint needed).")
    ] = False,
    bbox: Annotated[str | None, typer.Option(help="Prompt box x,y,w,h (default: centre half of the frame).")] = None,
    bare_frames: Annotated[
        int, typer.Option(help="With --live: also time the bare tracker on this many frames (live / bare ratio).")
    ] = 0,
    reference: Annotated[
        bool, typer.Option("--reference/--no-reference", help="Also time the official SAM2VideoPredictor.")
    ] = True,
    synthetic: Annotated[
        bool, typer.Option("--synthetic", help="Use a generated 1280x720 clip instead of SOURCE.")
    ] = False,
    e2e: Annotated[
        bool, typer.Option("--e2e", help="Time the whole pipeline (decode, track, composite, encode).")
    ] = False,
    compositor: Annotated[bool, typer.Option("--compositor", help="Time only the compositor at 1280x720.")] = False,
    compile_model: Annotated[
        bool, typer.Option("--compile-encoder", help="torch.compile the image encoder (CUDA).")
    ] = False,
    reference_vos: Annotated[
        bool,
        typer.Option(
            "--reference-vos", help="Also time the official VOS-optimized predictor (torch.compile: slow to build)."
        ),
    ] = False,
    live: Annotated[
        bool,
        typer.Option("--live", help="Run the live loop on SOURCE paced at its fps; compare stats to a frame count."),
    ] = False,
    seconds: Annotated[float, typer.Option(help="Length of a --live or --serve run.")] = 20.0,
    soak: Annotated[
        bool, typer.Option("--soak", help="Track --frames frames of a looped small clip and sample RSS.")
    ] = False,
    flow: Annotated[bool, typer.Option("--flow", help="With --live: warp masks with optical flow.")] = False,
    sync: Annotated[
        str, typer.Option(help=f"With --live: {', '.join(SYNC_MODES)} (see greencam start --help).")
    ] = "auto",
    oracle: Annotated[
        Path | None,
        typer.Option(help="Ground-truth masks folder: replay SOURCE frames with an oracle tracker (no model)."),
    ] = None,
    tracker_ms: Annotated[float, typer.Option(help="With --oracle: simulated tracker time per frame.")] = 250.0,
    fps: Annotated[
        float | None, typer.Option(help="Camera rate: with --oracle (default 24), with --capacity (default 30).")
    ] = None,
    max_delay: Annotated[float, typer.Option(help="With --oracle: --max-delay in ms (start's default).")] = 90.0,
    process: Annotated[
        bool, typer.Option("--process", help="Whole greencam start processes vs the official predictor's script.")
    ] = False,
    repeats: Annotated[
        int, typer.Option(help="With --process: runs of each process. With --idle: viewer arrivals timed.")
    ] = 3,
    idle: Annotated[
        bool, typer.Option("--idle", help="CPU with and without a viewer, and resume latency, of the live loop.")
    ] = False,
    subjects: Annotated[
        list[int] | None, typer.Option("--subjects", help="Frame time with N subjects (repeatable: 1, 2, 3...).")
    ] = None,
    serve: Annotated[
        bool, typer.Option("--serve", help="greencam serve in its own process with N camera clients from SOURCE.")
    ] = False,
    sessions: Annotated[
        list[int] | None,
        typer.Option(
            "--sessions", help="With --serve: clients at once (repeatable; default 1). With --serve-step: sessions (4)."
        ),
    ] = None,
    serve_step: Annotated[
        bool,
        typer.Option(
            "--serve-step",
            help="One steady-state serve step of --sessions sessions: batched vs one by one (--frames timed steps).",
        ),
    ] = False,
    one_by_one: Annotated[
        bool, typer.Option("--one-by-one", help="With --serve/--capacity: no batched image encoder.")
    ] = False,
    capacity: Annotated[
        bool, typer.Option("--capacity", help="The most serve sessions whose worker step fits --fps.")
    ] = False,
    suite: Annotated[bool, typer.Option("--suite", help="Everything make bench-gpu records, into --out.")] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="With --suite: folder for the JSON and markdown.")] = Path(
        "bench-results"
    ),
    small: Annotated[bool, typer.Option("--small", help="With --suite: tiny settings (a CPU smoke run).")] = False,
    clip: Annotated[str | None, typer.Option(help="With --suite: video to cut the 720p/1080p clips from.")] = None,
    suite_models: Annotated[
        str | None,
        typer.Option("--models", help="With --suite: models to run, comma-separated (default: tiny to large)."),
    ] = None,
    budget: Annotated[
        float, typer.Option(help="With --suite: seconds after which optional steps are skipped.")
    ] = 360.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as one JSON object.")] = False,
) -> None:
    """Measure speed, memory and keying accuracy of the tracker, the pipeline, the compositor or the server."""
    from greenscreen_cam import bench as b

    with user_errors():
        if frames < 2:
            raise ConfigError("--frames must be at least 2")
        if oracle is not None:
            from greenscreen_cam.key.oracle import run_oracle_bench

            if source is None:
                raise ConfigError("--oracle needs a SOURCE folder of frames")
            result = run_oracle_bench(
                Path(source), oracle, tracker_ms=tracker_ms, fps=fps or 24.0, max_delay_ms=max_delay
            )
        elif suite:
            result = b.bench_suite(
                device=settings.device,
                out_dir=out_dir,
                small=small,
                clip=clip,
                models_to_run=tuple(m for m in suite_models.split(",") if m) if suite_models else b.SUITE_MODELS,
                budget_s=budget,
            )
            sys.stdout.write(b.suite_markdown(result))
            sys.stdout.write(f"\nwritten: {', '.join(result['files'])}\n")
            # compiled variants are optional (they need Triton and a C compiler on the machine)
            if [e for e in result["errors"] if not e["step"].endswith((" compile", " reduce-overhead"))]:
                raise typer.Exit(1)
            return
        elif compositor:
            result = b.bench_compositor(frames)
        elif idle:
            result = b.bench_idle(settings, random_weights=random_weights, seconds=min(seconds, 60.0), resumes=repeats)
        elif subjects:
            result = b.bench_subjects(
                settings, counts=sorted(set(subjects)), frames=frames, random_weights=random_weights
            )
        elif process:
            result = b.bench_process(settings, source=source, frames=frames, bbox=bbox, repeats=repeats)
        elif serve_step:
            result = b.bench_serve_step(
                settings, source, (sessions or [4])[0], steps=frames, random_weights=random_weights
            )
        elif capacity:
            result = b.bench_capacity(settings, fps or 30.0, random_weights=random_weights, batch=not one_by_one)
        elif serve:
            if source is None:
                raise ConfigError("--serve needs a SOURCE video")
            for n in sessions or [1]:
                r = b.bench_link(
                    settings,
                    n,
                    Path(source),
                    seconds,
                    random_weights=random_weights,
                    batch=not one_by_one,
                    on_event=err.print,
                )
                sys.stdout.write(json.dumps(r) + "\n")
                sys.stdout.flush()
            return
        elif live:
            if source is None:
                raise ConfigError("--live needs a SOURCE video or image folder")
            from greenscreen_cam.app import configure_threads

            configure_threads("live")  # as greencam start does for a camera, before torch is imported
            result = b.bench_live(
                settings,
                source=source,
                seconds=seconds,
                random_weights=random_weights,
                bbox=bbox,
                flow=flow,
                sync=sync,
                bare_frames=bare_frames,
            )
        elif soak:
            result = b.bench_soak(settings, source=source, frames=frames, random_weights=random_weights)
        else:
            if source is None and not synthetic:
                raise ConfigError("give a SOURCE video/folder, or --synthetic")
            result = b.bench_tracker(
                settings,
                source=None if synthetic else source,
                frames=frames,
                random_weights=random_weights,
                bbox=bbox,
                reference=reference and not e2e,
                e2e=e2e,
                compile_model=compile_model,
                reference_vos=reference_vos,
                count_ops=True,
            )
        if as_json:
            out.print_json(json.dumps(result))
        elif oracle is not None:
            from greenscreen_cam.key.oracle import print_oracle

            print_oracle(result, out)
        else:
            b.print_result(result, out)


@app.command(epilog=CTL_EPILOG)
def ctl(
    words: Annotated[
        list[str], typer.Argument(help="A command: status, reselect, pause, resume, quit, or NAME VALUE.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole answer as JSON.")] = False,
) -> None:
    """Change the running greencam without restarting it (over its local control socket)."""
    from greenscreen_cam.live.control import send

    with user_errors():
        answer = send(words)
    if as_json:
        out.print_json(json.dumps(answer, default=str))
    elif answer.get("ok"):
        out.print(str(answer.get("message", "")), soft_wrap=True, markup=False)
    if not answer.get("ok"):
        if not as_json:
            err.print(f"greencam: error: {answer.get('message', 'refused')}", soft_wrap=True, markup=False)
        raise typer.Exit(2)


service_app = typer.Typer(help="Start greencam at login (a systemd user unit running greencam start).")
app.add_typer(service_app, name="service")


@service_app.command(
    "install", epilog="Examples:\n\n  greencam service install --dry-run\n\n  greencam service install"
)
def service_install(
    config: Annotated[
        Path | None, typer.Option("--config", help="Config file for greencam start (default: your user config).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the unit and the commands; change nothing.")
    ] = False,
) -> None:
    """Write and enable ~/.config/systemd/user/greencam.service (restarts on failure)."""
    from greenscreen_cam.live import service
    from greenscreen_cam.paths import user_config_path

    with user_errors():
        target = config if config is not None else user_config_path()
        todo = service.plan("install", target) if dry_run else service.install(target)
    out.print(todo.describe() if dry_run else f"installed and started {todo.path}", soft_wrap=True, markup=False)


@service_app.command("remove", epilog="Examples:\n\n  greencam service remove --dry-run\n\n  greencam service remove")
def service_remove(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be done; change nothing.")] = False,
) -> None:
    """Stop, disable and delete the greencam user unit."""
    from greenscreen_cam.live import service

    with user_errors():
        todo = service.plan("remove") if dry_run else service.remove()
    out.print(todo.describe() if dry_run else f"removed {todo.path}", soft_wrap=True, markup=False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
