"""The ``greencam`` command line.

Commands are thin: parse, build the pieces, run, and map every
:class:`~greenscreen_cam.errors.GreencamError` to one line on stderr and its exit
code. torch, sam2 and pyvirtualcam are imported only inside the commands that
need them, so ``greencam --help`` and ``greencam devices`` start fast.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from greenscreen_cam import __version__
from greenscreen_cam.errors import ConfigError, GreencamError, PromptError

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


def passive_openmp() -> None:
    """Let torch's OpenMP workers sleep instead of spin between ops (before torch is imported).

    In the live loop the capture and compositing threads share the CPU with
    SAM 2; spinning workers starve them. Measured on a 2-core CPU: tracker
    2.1 -> 3.5 fps in the live loop, 4% slower when the tracker runs alone
    (docs/benchmarks.md). A value the user set is kept.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def fail(error: GreencamError) -> None:
    err.print(f"[bold red]greencam: error:[/] {error}", soft_wrap=True)
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


def _version(value: bool) -> None:
    if value:
        out.print(f"greencam {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """greencam: a virtual green screen for video calls."""


# --------------------------------------------------------------------------- parsing helpers


def parse_numbers(text: str, count: int, what: str) -> tuple[float, ...]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count or any(v != v or v in (float("inf"), float("-inf")) for v in values):
        example = "x,y,w,h e.g. 400,80,480,640" if count == 4 else "x,y e.g. 640,360"
        raise PromptError(f"malformed {what} {text!r}: expected {example}")
    return values


def build_prompt(bbox: str | None, points: list[str], negative: list[str]) -> Any:
    from greenscreen_cam.segmenter import Prompt

    if bbox is None and not points and not negative:
        return None
    box = parse_numbers(bbox, 4, "--bbox") if bbox else None
    pts = [parse_numbers(p, 2, "--point") for p in points]
    neg = [parse_numbers(p, 2, "--negative-point") for p in negative]
    if box is None and not pts:
        raise PromptError("--negative-point needs a --bbox or a --point that selects the subject")
    return Prompt(
        box=box,  # type: ignore[arg-type]
        points=tuple((p[0], p[1]) for p in pts + neg),
        labels=tuple([1] * len(pts) + [0] * len(neg)),
    )


def _compositor_settings(s: Any) -> Any:
    from greenscreen_cam.compositor import CompositorSettings, parse_color

    settings = CompositorSettings(
        color=parse_color(s.color),
        threshold=s.threshold,
        feather=s.feather,
        grow=s.grow,
        shrink=s.shrink,
        max_hole=s.max_hole,
        min_island=s.min_island,
        refine=s.refine,
        smooth=s.smooth,
        despill=s.despill,
        mirror=s.mirror,
    )
    settings.validate()
    return settings


def resolve_model(
    model: str, checkpoint: str | None, device: str, resolution: int | None
) -> tuple[Any, str, int, Path]:
    """Check model name, device, resolution and checkpoint file (fast): ``(spec, device, resolution, path)``."""
    from greenscreen_cam import models

    spec = models.get_spec(model)
    dev = models.resolve_device(device)
    res = resolution or models.DEFAULT_RESOLUTION[dev.split(":")[0]]
    if res not in models.RESOLUTIONS:
        raise ConfigError(f"unsupported --resolution {res}; choose one of {', '.join(map(str, models.RESOLUTIONS))}")
    return spec, dev, res, models.resolve_checkpoint(spec, Path(checkpoint) if checkpoint else None)


def load_tracker(spec: Any, path: Path, dev: str, res: int) -> Any:
    """Load SAM 2 (slow) and wrap it in a StreamingTracker."""
    from greenscreen_cam import models
    from greenscreen_cam.segmenter import StreamingTracker

    net = models.load_model(spec, path, device=dev, resolution=res)
    return StreamingTracker(net, autocast=models.autocast_dtype(dev))


# --------------------------------------------------------------------------- start

START_EPILOG = """
Examples:

  greencam start --bbox 400,80,480,640            # webcam 0 -> virtual camera

  greencam start --auto --preview                  # find the face, show a preview window

  greencam start --source /dev/video2 --width 1280 --height 720 --fourcc MJPG --bbox 400,80,480,640

  greencam start --source talk.mp4 --bbox 780,120,280,340 --output keyed.mp4 --background blur:30

  greencam start --source frames/ --point 640,360 --output out.mp4 --matte-output mattes/ --refine none
"""


@app.command(epilog=START_EPILOG)
def start(
    source: Annotated[
        str | None,
        typer.Option("--source", "-s", help="Camera index (0), device (/dev/video0), video file or image folder."),
    ] = None,
    bbox: Annotated[str | None, typer.Option(help="Subject box x,y,w,h in frame pixels.")] = None,
    point: Annotated[list[str] | None, typer.Option("--point", help="Subject point x,y (repeatable).")] = None,
    negative_point: Annotated[
        list[str] | None, typer.Option("--negative-point", help="Not-subject point x,y (repeatable).")
    ] = None,
    auto: Annotated[
        bool | None,
        typer.Option(
            "--auto",
            help="Find the largest face and select head and shoulders (default when nothing is selected).",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="SAM 2 model: tiny, small, base-plus, large, sam2.0-tiny, ... (default: tiny)")
    ] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Checkpoint file (default: checkpoints/<model file>).")] = None,
    resolution: Annotated[
        int | None,
        typer.Option(help="SAM 2 input size: 256, 384, 512, 768, 1024 (default: 1024 cuda, 512 mps, 256 cpu)."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cuda, mps or cpu (default: auto).")] = None,
    output: Annotated[
        list[str] | None,
        typer.Option("--output", "-o", help="'virtual' or a video file path (repeatable) (default: virtual)."),
    ] = None,
    virtual_device: Annotated[
        str | None, typer.Option(help="Virtual camera: /dev/video10 (Linux) or 'OBS Virtual Camera'.")
    ] = None,
    virtual_backend: Annotated[str | None, typer.Option(hidden=True, help="pyvirtualcam backend name.")] = None,
    preview: Annotated[
        bool | None,
        typer.Option("--preview", help="Show a preview window (hotkeys: r a space m h q).", show_default=False),
    ] = None,
    background: Annotated[
        str | None, typer.Option(help="key, a colour, blur[:STRENGTH], an image or a video file (default: key).")
    ] = None,
    color: Annotated[
        str | None, typer.Option(help="Key colour: green, blue or #RRGGBB (default: green = #00AF39).")
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="Subject probability threshold, 0..1 (default: 0.5).")] = None,
    feather: Annotated[float | None, typer.Option(help="Soft edge width in pixels (default: 2).")] = None,
    grow: Annotated[int | None, typer.Option(help="Grow the subject by N pixels.")] = None,
    shrink: Annotated[int | None, typer.Option(help="Shrink the subject by N pixels.")] = None,
    max_hole: Annotated[
        float | None, typer.Option(help="Fill holes up to this fraction of the frame (default: 0.01; 0 = off).")
    ] = None,
    min_island: Annotated[
        float | None, typer.Option(help="Drop islands below this fraction of the frame (default: 0.01; 0 = off).")
    ] = None,
    refine: Annotated[
        str | None, typer.Option(help="auto, or none (alpha = raw tracker probability) (default: auto).")
    ] = None,
    smooth: Annotated[float | None, typer.Option(help="Temporal smoothing 0..1 (default: 0.3).")] = None,
    despill: Annotated[
        bool | None,
        typer.Option("--despill/--no-despill", help="Remove key-colour spill on edges.", show_default=False),
    ] = None,
    mirror: Annotated[
        bool | None, typer.Option("--mirror/--no-mirror", help="Flip the output horizontally.", show_default=False)
    ] = None,
    flow: Annotated[
        bool | None,
        typer.Option(
            "--flow/--no-flow",
            help="Warp the newest mask with optical flow between tracker updates.",
            show_default=False,
        ),
    ] = None,
    matte_output: Annotated[str | None, typer.Option(help="Write each frame's alpha as PNG into this folder.")] = None,
    max_frames: Annotated[int | None, typer.Option(help="Stop after N output frames.")] = None,
    width: Annotated[int | None, typer.Option(help="Camera width to ask for.")] = None,
    height: Annotated[int | None, typer.Option(help="Camera height to ask for.")] = None,
    fps: Annotated[float | None, typer.Option(help="Camera fps to ask for (or image-folder fps).")] = None,
    fourcc: Annotated[str | None, typer.Option(help="Camera pixel format, e.g. MJPG.")] = None,
    lost_after: Annotated[
        float | None,
        typer.Option(help="Seconds SAM 2 must miss the subject before the output turns to key (default: 1)."),
    ] = None,
    realtime: Annotated[
        bool | None,
        typer.Option(
            "--realtime", help="Pace a file source at its fps and drop frames like a camera.", show_default=False
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Settings file (TOML or YAML).")] = None,
) -> None:
    """Key the webcam (or a file) live and send it to the virtual camera."""
    passive_openmp()
    with user_errors():
        from greenscreen_cam.config import load_settings

        overrides = dict(
            source=source,
            bbox=bbox,
            points=point or [],
            negative_points=negative_point or [],
            auto=auto,
            model=model,
            checkpoint=checkpoint,
            resolution=resolution,
            device=device,
            outputs=output or [],
            virtual_device=virtual_device,
            preview=preview,
            background=background,
            color=color,
            threshold=threshold,
            feather=feather,
            grow=grow,
            shrink=shrink,
            max_hole=max_hole,
            min_island=min_island,
            refine=refine,
            smooth=smooth,
            despill=despill,
            mirror=mirror,
            flow=flow,
            matte_output=matte_output,
            max_frames=max_frames,
            width=width,
            height=height,
            fps=fps,
            fourcc=fourcc,
            realtime=realtime,
            lost_after=lost_after,
        )
        settings = load_settings(config, overrides)
        run_start(settings, virtual_backend=virtual_backend)


def run_start(s: Any, *, virtual_backend: str | None = None) -> None:
    from greenscreen_cam.compositor import Compositor, make_background

    prompt = build_prompt(s.bbox, s.points, s.negative_points)
    if s.auto and prompt is not None:
        raise ConfigError("use either --auto or --bbox/--point, not both")
    if s.lost_after < 0:
        raise ConfigError(f"--lost-after must be 0 or more seconds, got {s.lost_after:g}")
    if s.max_frames is not None and s.max_frames <= 0:
        raise ConfigError(f"--max-frames must be positive, got {s.max_frames}")
    if not s.outputs and not s.preview:
        raise ConfigError("nothing to output: give --output virtual, --output FILE or --preview")
    comp_settings = _compositor_settings(s)
    spec, dev, res, checkpoint = resolve_model(s.model, s.checkpoint, s.device, s.resolution)

    from greenscreen_cam.sinks import MatteWriter, MultiSink, PreviewSink, VideoFileSink, VirtualCameraSink
    from greenscreen_cam.sources import open_source

    with ExitStack() as stack:
        bg = make_background(s.background, comp_settings.color)
        stack.callback(bg.close)
        src = open_source(s.source, width=s.width, height=s.height, fps=s.fps, fourcc=s.fourcc, realtime=s.realtime)
        stack.callback(src.close)
        for note in getattr(src, "negotiated", []):
            err.print(f"[yellow]greencam: camera:[/] {note}")
        if prompt is not None:
            prompt.validate(src.width, src.height)
        use_preview = bool(s.preview)
        preview_sink = stack.enter_context(PreviewSink()) if use_preview else None
        if prompt is None and not s.auto and preview_sink is not None:
            first = src.read()
            if first is not None:
                from greenscreen_cam.segmenter import Prompt

                box = preview_sink.select_box(first.image)
                if box is not None:
                    prompt = Prompt(box=tuple(float(v) for v in box))  # type: ignore[arg-type]
        # Every output opens before the slow model load, so a missing device is reported at once.
        sinks: list[Any] = []
        for target in s.outputs:
            if target == "virtual":
                vcam = stack.enter_context(
                    VirtualCameraSink(src.width, src.height, src.fps, device=s.virtual_device, backend=virtual_backend)
                )
                err.print(
                    f"greencam: sending to virtual camera {vcam.device} ({src.width}x{src.height} @ {src.fps:g} fps)"
                )
                sinks.append(vcam)
            else:
                sinks.append(stack.enter_context(VideoFileSink(Path(target), src.width, src.height, src.fps)))
        sink = MultiSink(sinks)
        matte = stack.enter_context(MatteWriter(Path(s.matte_output))) if s.matte_output else None
        err.print(f"greencam: loading SAM 2 {spec.name} at {res} px on {dev} ...")
        tracker = load_tracker(spec, checkpoint, dev, res)
        from greenscreen_cam.pipeline import Pipeline

        pipeline = Pipeline(
            src,
            tracker,
            Compositor(comp_settings, bg, device=dev if dev.startswith("cuda") else None),
            sink,
            prompt=prompt,
            auto=bool(s.auto) or prompt is None,
            matte=matte,
            preview=preview_sink,
            max_frames=s.max_frames,
            flow=bool(s.flow),
            lost_after=s.lost_after,
            on_status=_status_printer(spec.name, dev, res),
            on_event=lambda m: err.print(f"greencam: {m}"),
        )
        with _stop_on_signals(pipeline.stop):
            summary = pipeline.run()
        _print_summary(summary)


def _status_printer(
    model: str, device: str, res: int, *, interactive: bool | None = None, every: float = 5.0
) -> Callable[[dict[str, Any]], None]:
    """One status line, rewritten in place on a terminal; a new line every ``every`` s in logs."""
    if interactive is None:
        interactive = err.is_terminal
    last = [float("-inf")]

    def show(s: dict[str, Any]) -> None:
        line = (
            f"in {s['input_fps']:5.1f} fps | out {s['output_fps']:5.1f} fps | tracker {s['tracker_fps']:5.1f} fps | "
            f"latency p50 {s['latency_p50_ms']:.0f} ms p95 {s['latency_p95_ms']:.0f} ms | mask age {s['mask_age_ms']:.0f} ms | "
            f"{s['subject']} | {model}@{res} on {device}"
        )
        if interactive:
            err.file.write("\r\x1b[2K" + line)
            err.file.flush()
        elif s["seconds"] - last[0] >= every:
            last[0] = s["seconds"]
            err.print(f"greencam: {line}", soft_wrap=True)

    return show


def _print_summary(s: dict[str, Any]) -> None:
    if err.is_terminal:
        err.file.write("\n")
    err.print(
        f"greencam: done: {s['frames_out']} frames out of {s['frames_in']} in {s['seconds']:.1f} s "
        f"(output {s['output_fps']:.1f} fps, tracker {s['tracker_fps']:.1f} fps, {s['dropped']} dropped, "
        f"latency p50 {s['latency_p50_ms']:.0f} ms / p95 {s['latency_p95_ms']:.0f} ms)"
    )


@contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT/SIGTERM ask the loop to stop; a second Ctrl-C while stopping is ignored (devices get released)."""
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: object) -> None:
        stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(ValueError):  # not the main thread (e.g. some test runners)
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


# --------------------------------------------------------------------------- devices


@app.command(epilog="Examples:\n\n  greencam devices\n\n  greencam devices --json")
def devices(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List cameras and virtual cameras."""
    from greenscreen_cam.devices import LINUX_VCAM_PERSIST, list_devices, virtual_camera_fix

    found = list_devices()
    cams = [d for d in found if not d.virtual]
    vcams = [d for d in found if d.virtual]
    if as_json:
        out.print_json(
            json.dumps({"cameras": [d.to_dict() for d in cams], "virtual_cameras": [d.to_dict() for d in vcams]})
        )
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
        out.print("No virtual camera found: " + virtual_camera_fix())
        if sys.platform.startswith("linux"):
            out.print(LINUX_VCAM_PERSIST, soft_wrap=True)


# --------------------------------------------------------------------------- models / download


@app.command(epilog="Examples:\n\n  greencam models")
def models() -> None:
    """List the SAM 2 models greencam knows, and which are downloaded."""
    from greenscreen_cam import models as m

    table = Table(title=f"SAM 2 models (in {m.default_checkpoint_dir()})")
    for col in ("name", "file", "size", "sha256", "downloaded"):
        table.add_column(col)
    for spec in m.MODELS.values():
        have = (m.default_checkpoint_dir() / spec.filename).is_file()
        size = f"{spec.size / 1e6:.0f} MB" if spec.size else "?"
        table.add_row(
            spec.name + (" (default)" if spec.name == m.DEFAULT_MODEL else ""),
            spec.filename,
            size,
            (spec.sha256 or "-")[:12],
            "yes" if have else "no",
        )
    out.print(table)


@app.command(
    epilog="Examples:\n\n  greencam download\n\n  greencam download small\n\n  greencam download tiny --url https://mirror.example/sam2.1_hiera_tiny.pt"
)
def download(
    model: Annotated[str, typer.Argument(help="Model name (see greencam models).")] = "tiny",
    directory: Annotated[Path | None, typer.Option("--dir", help="Destination folder (default: checkpoints/).")] = None,
    url: Annotated[str | None, typer.Option(help="Download from this URL instead of Meta's.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Download even if a verified file exists.")] = False,
) -> None:
    """Download a SAM 2 checkpoint (verified by size and SHA-256) into checkpoints/."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from greenscreen_cam import models as m

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

            path = m.download(spec, target, url=url, progress=progress, force=force)
        verified = "SHA-256 verified" if spec.sha256 else "size verified (no published SHA-256)"
        out.print(f"{path} ({path.stat().st_size} bytes, {verified})")


# --------------------------------------------------------------------------- config


@app.command("config", epilog="Examples:\n\n  greencam config\n\n  greencam config --config my.toml --json")
def show_config(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Settings file (TOML or YAML).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of TOML.")] = False,
) -> None:
    """Print the effective settings (defaults < configs/default.toml < your file)."""
    from greenscreen_cam.config import load_settings, to_toml

    with user_errors():
        settings = load_settings(config)
        if as_json:
            out.print_json(json.dumps(settings.to_dict()))
        else:
            sys.stdout.write(to_toml(settings))


# --------------------------------------------------------------------------- bench

BENCH_EPILOG = """
Examples:

  greencam bench clip.mp4 --frames 30                          # tracker vs official predictor

  greencam bench --synthetic --random-weights --resolution 256  # no checkpoint, no video needed

  greencam bench clip.mp4 --e2e --frames 60                    # whole pipeline vs bare tracker

  greencam bench --compositor --frames 300                     # 1280x720 compositor only

  greencam bench clip.mp4 --live --seconds 20                  # real-time loop paced like a camera

  greencam bench clip.mp4 --soak --frames 3000                 # memory over a long run
"""


@app.command(epilog=BENCH_EPILOG)
def bench(
    source: Annotated[str | None, typer.Argument(help="Video file or image folder.")] = None,
    frames: Annotated[int, typer.Option(help="Frames to measure.")] = 30,
    model: Annotated[str, typer.Option(help="SAM 2 model name.")] = "tiny",
    checkpoint: Annotated[str | None, typer.Option(help="Checkpoint file.")] = None,
    random_weights: Annotated[
        bool, typer.Option("--random-weights", help="Use seeded random weights (no checkpoint needed).")
    ] = False,
    resolution: Annotated[int | None, typer.Option(help="SAM 2 input size.")] = None,
    device: Annotated[str, typer.Option(help="auto, cuda, mps or cpu.")] = "auto",
    bbox: Annotated[str | None, typer.Option(help="Prompt box x,y,w,h (default: centre half of the frame).")] = None,
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
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the image encoder (CUDA).")] = False,
    live: Annotated[
        bool,
        typer.Option("--live", help="Run the live loop on SOURCE paced at its fps; compare stats to a frame count."),
    ] = False,
    seconds: Annotated[float, typer.Option(help="Length of a --live run.")] = 20.0,
    soak: Annotated[
        bool, typer.Option("--soak", help="Track --frames frames of a looped small clip and sample RSS.")
    ] = False,
    flow: Annotated[bool, typer.Option("--flow", help="With --live: warp masks with optical flow.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Measure per-stage speed and memory of the tracker, the pipeline or the compositor."""
    from greenscreen_cam import bench as b

    with user_errors():
        if frames < 2:
            raise ConfigError("--frames must be at least 2")
        if compositor:
            result = b.bench_compositor(frames)
        elif live:
            passive_openmp()
            if source is None:
                raise ConfigError("--live needs a SOURCE video or image folder")
            result = b.bench_live(
                source=source,
                seconds=seconds,
                model=model,
                checkpoint=checkpoint,
                random_weights=random_weights,
                resolution=resolution,
                device=device,
                bbox=bbox,
                flow=flow,
            )
        elif soak:
            result = b.bench_soak(
                source=source,
                frames=frames,
                model=model,
                checkpoint=checkpoint,
                random_weights=random_weights,
                resolution=resolution,
                device=device,
            )
        else:
            if source is None and not synthetic:
                raise ConfigError("give a SOURCE video/folder, or --synthetic")
            result = b.bench_tracker(
                source=None if synthetic else source,
                frames=frames,
                model=model,
                checkpoint=checkpoint,
                random_weights=random_weights,
                resolution=resolution,
                device=device,
                bbox=bbox,
                reference=reference and not e2e,
                e2e=e2e,
                compile_model=compile_model,
            )
        if as_json:
            out.print_json(json.dumps(result))
        else:
            b.print_result(result, out)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
