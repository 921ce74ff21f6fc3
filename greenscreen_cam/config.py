"""Every setting defined once; layered defaults < ``configs/default.toml`` < user file < CLI flags.

Each setting is one dataclass field declared with :func:`setting`: its name, type,
default, help text, CLI flags and validation live together. Everything else is
derived from these fields: the ``greencam start`` / ``serve`` / ``bench`` options
(``greenscreen_cam.cli``), the keys a config file may hold, ``greencam config``,
and ``configs/default.toml`` (a test checks the file says what the code does).

A config file is TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON (``.json``, e.g. the
output of ``greencam config --json``) holding a flat
table whose keys are field names (the long CLI flag with dashes turned into
underscores, e.g. ``virtual_device``). Unknown keys, wrong types and invalid
values are a :class:`~greenscreen_cam.errors.ConfigError`.

Standard library only: ``greencam --help`` must not import torch or OpenCV.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from greenscreen_cam import KEY_COLOR
from greenscreen_cam.errors import ConfigError

REPO_DEFAULTS = Path(__file__).resolve().parent.parent / "configs" / "default.toml"

Check = Callable[[Any], str | None]
"""A validator: the value -> None when valid, else what is wrong (completing "--flag ...")."""


def setting(
    default: Any,
    help: str,
    *,
    group: str,
    flags: tuple[str, ...] = (),
    check: Check | None = None,
    envvar: str | None = None,
    metavar: str | None = None,
    shown_default: str | None = None,
) -> Any:
    """Declare one setting (a dataclass field with its help, CLI flags and validation).

    Args:
        default: The default value (a list default is copied per instance).
        help: One line for ``--help``; the default is appended automatically.
        group: The ``--help`` panel it is listed under.
        flags: CLI flags; default ``--field-name`` (``--x/--no-x`` for booleans).
        check: Validator, see :data:`Check`; None values (not set) are never checked.
        envvar: Environment variable that sets it (between config file and flag).
        metavar: Placeholder shown in ``--help``.
        shown_default: What ``--help`` says the default is, where the value alone would mislead.
    """
    meta = {
        "help": help,
        "group": group,
        "flags": flags,
        "check": check,
        "envvar": envvar,
        "metavar": metavar,
        "shown_default": shown_default,
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- validators


def _between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False, unit: str = "") -> Check:
    def check(v: Any) -> str | None:
        low_ok = v > lo if lo_open else v >= lo
        high_ok = v < hi if hi_open else v <= hi
        if low_ok and high_ok:
            return None
        left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
        return f"must be in {left}{lo:g}, {hi:g}{right}{unit}, got {v:g}"

    return check


def _positive(v: Any) -> str | None:
    return None if v > 0 else f"must be positive, got {v:g}"


def _one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"

    return check


def _color(v: Any) -> str | None:
    try:
        parse_color(v)
    except ConfigError:
        return f"is not a colour: {v!r}; use a name ({', '.join(NAMED_COLORS)}) or #RRGGBB"
    return None


NAMED_COLORS: dict[str, tuple[int, int, int]] = {
    "green": KEY_COLOR,
    "key": KEY_COLOR,
    "blue": (0, 71, 187),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "magenta": (255, 0, 255),
}


def parse_color(text: str) -> tuple[int, int, int]:
    """``green``, ``blue``, ... or ``#RRGGBB`` -> ``(r, g, b)``; ConfigError otherwise."""
    value = text.strip().lower()
    if value in NAMED_COLORS:
        return NAMED_COLORS[value]
    if re.fullmatch(r"#[0-9a-f]{6}", value):
        return (int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16))
    raise ConfigError(f"bad colour {text!r}: use a name ({', '.join(NAMED_COLORS)}) or #RRGGBB")


# --------------------------------------------------------------------------- the settings


@dataclass
class KeyingSettings:
    """How a mask becomes a keyed frame: the compositor's options (``greenscreen_cam.key.compositor``)."""

    color: str = setting(
        "green",
        "Key colour: a name (green, blue, ...) or #RRGGBB; green is RGB(0,175,57).",
        group="Keying",
        check=_color,
    )
    threshold: float = setting(
        0.5, "Subject probability threshold.", group="Keying", check=_between(0, 1, lo_open=True, hi_open=True)
    )
    feather: float = setting(2.0, "Soft edge width in pixels.", group="Keying", check=_between(0, 100, unit=" pixels"))
    grow: int = setting(0, "Grow the subject by N pixels.", group="Keying", check=_between(0, 200, unit=" pixels"))
    shrink: int = setting(0, "Shrink the subject by N pixels.", group="Keying", check=_between(0, 200, unit=" pixels"))
    max_hole: float = setting(
        0.01,
        "Fill holes up to this fraction of the frame (0 = off).",
        group="Keying",
        check=_between(0, 1, hi_open=True),
    )
    min_island: float = setting(
        0.01,
        "Drop islands below this fraction of the frame (0 = off).",
        group="Keying",
        check=_between(0, 1, hi_open=True),
    )
    refine: str = setting(
        "auto",
        "auto, or none: alpha is exactly the tracker's probability (no cleaning, no smoothing).",
        group="Keying",
        check=_one_of("auto", "none"),
    )
    smooth: float = setting(
        0.3,
        "Temporal smoothing of the soft edge (0 = off); large changes are never smoothed.",
        group="Keying",
        check=_between(0, 1, hi_open=True),
    )
    despill: bool = setting(False, "Remove key-colour spill on the subject's edge.", group="Keying")
    mirror: bool = setting(False, "Flip the output horizontally.", group="Keying")

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The key colour as ``(r, g, b)``."""
        return parse_color(self.color)

    def validate(self) -> None:
        """Raise ConfigError (naming the flag) for the first invalid value."""
        check_fields(self)
        if self.grow and self.shrink:
            raise ConfigError("--grow and --shrink cannot be used together")


_MODEL_HELP = "SAM 2 model: tiny, small, base-plus, large, sam2.0-tiny, ... (see greencam models)."

RESOLUTIONS: tuple[int, ...] = (256, 384, 512, 768, 1024)
"""Supported SAM 2 input sizes (``image_size``) in pixels: the one list (settings, loader, registry)."""


def _resolution(v: Any) -> str | None:
    return None if v in RESOLUTIONS else f"{v} is not supported; choose one of {', '.join(map(str, RESOLUTIONS))}"


def check_resolution(value: int) -> int:
    """``value`` when it is in :data:`RESOLUTIONS`; else the ConfigError ``--resolution`` gives.

    The one check behind the setting, :func:`greenscreen_cam.track.models.choose` and the model builder.

    Example:
        >>> check_resolution(512)
        512
    """
    if problem := _resolution(value):
        raise ConfigError(f"--resolution {problem}")
    return value


def parse_audio_delay(text: str) -> str | float:
    """``--audio-delay``: ``"auto"``, ``"off"`` or milliseconds in [0, 5000].

    Example:
        >>> parse_audio_delay("330"), parse_audio_delay("auto")
        (330.0, 'auto')
    """
    value = str(text).strip().lower()
    if value in ("auto", "off"):
        return value
    try:
        ms = float(value.removesuffix("ms").strip())
    except ValueError:
        raise ConfigError(f"--audio-delay must be auto, off or milliseconds, got {text!r}") from None
    if not 0 <= ms <= 5000:
        raise ConfigError(f"--audio-delay must be in [0, 5000] ms, got {ms:g}")
    return ms


def _audio_delay_problem(value: Any) -> str | None:
    try:
        parse_audio_delay(value)
    except ConfigError as e:
        return str(e).removeprefix("--audio-delay ")
    return None


SyncMode = Literal["auto", "on", "off"]
SYNC_MODES: tuple[str, ...] = get_args(SyncMode)
"""``--sync`` modes: ``auto`` (frame-accurate while the tracker keeps up), ``on`` (always), ``off`` (newest mask)."""

_COMPILE_MODES = ("auto", "on", "off")
ENGINES = ("auto", "torch", "openvino")
"""``--engine`` values (what each means: :mod:`greenscreen_cam.track.engines`)."""
OPENVINO_DEVICES = ("CPU", "GPU", "NPU", "AUTO")
"""``--openvino-device`` values, passed through to OpenVINO (any case)."""
OPENVINO_PRECISIONS = ("f32", "bf16")
"""``--openvino-precision`` values."""


def check_openvino_device(value: Any) -> str | None:
    """None when ``value`` is an OpenVINO device name greencam passes through, else the problem."""
    ok = str(value).upper() in OPENVINO_DEVICES
    return None if ok else f"{value!r} is not one of {', '.join(OPENVINO_DEVICES)}"


@dataclass
class ModelSettings:
    """Which SAM 2 to load and where (shared by start, serve and bench)."""

    model: str = setting("tiny", _MODEL_HELP, group="Model")
    checkpoint: str | None = setting(
        None, "Checkpoint file (default: the model's file in the checkpoint folder).", group="Model"
    )
    resolution: int | None = setting(
        None,
        "SAM 2 input size: 256, 384, 512, 768, 1024 (default: 1024 cuda, 512 mps, 256 cpu).",
        group="Model",
        check=_resolution,
    )
    device: str = setting("auto", "auto, cuda, cuda:N, mps or cpu.", group="Model")
    compile: str = setting(
        "auto",
        "Replay the steady-state tracker step as a CUDA graph: on (CUDA only), off, or auto "
        "(off until this path is verified on a GPU).",
        group="Model",
        check=lambda v: None if v in _COMPILE_MODES else f"{v!r} is not one of {', '.join(_COMPILE_MODES)}",
    )
    engine: str = setting(
        "auto",
        "Tracker engine: torch (bit-exact with the official predictor), openvino (CPU only; as fast as torch "
        "in f32 on a 2-core CPU, about 1.7x with --openvino-precision bf16: docs/benchmarks.md), "
        "or auto (openvino on the CPU when installed, torch on CUDA/MPS).",
        group="Model",
        check=_one_of(*ENGINES),
    )
    openvino_device: str = setting(
        "CPU",
        "OpenVINO device for --engine openvino: CPU, GPU (Intel iGPU), NPU or AUTO (only CPU is tested).",
        group="Model",
        check=check_openvino_device,
    )
    openvino_precision: str = setting(
        "f32",
        "OpenVINO arithmetic: f32 (within 1e-3 of torch) or bf16 (faster on CPUs with AVX512-BF16 or AMX, "
        "less exact; measured in docs/benchmarks.md).",
        group="Model",
        check=_one_of(*OPENVINO_PRECISIONS),
    )


@dataclass
class NetworkSettings:
    """How WebRTC gets through networks that block UDP (both ends of the link: start --server and serve)."""

    ice_servers: list[str] = setting(
        [],
        "STUN/TURN server for networks that block UDP, e.g. turns:turn.example.org:5349?transport=tcp (repeatable).",
        group="Network",
        flags=("--ice-server",),
        metavar="URL",
    )
    turn_username: str | None = setting(None, "Username for the --ice-server TURN relay.", group="Network")
    turn_password: str | None = setting(
        None, "Password for the --ice-server TURN relay.", group="Network", envvar="GREENCAM_TURN_PASSWORD"
    )


@dataclass
class Settings(KeyingSettings, ModelSettings, NetworkSettings):
    """Everything ``greencam start`` can be told."""

    # input
    source: str = setting(
        "0",
        "Camera index (0), device (/dev/video0), video file or image folder.",
        group="Input",
        flags=("--source", "-s"),
    )
    width: int | None = setting(None, "Camera width to ask for.", group="Input", check=_positive)
    height: int | None = setting(None, "Camera height to ask for.", group="Input", check=_positive)
    fps: float | None = setting(None, "Camera fps to ask for (or image-folder fps).", group="Input", check=_positive)
    fourcc: str | None = setting(None, "Camera pixel format, e.g. MJPG.", group="Input")
    realtime: bool = setting(False, "Pace a file source at its fps and drop frames like a camera.", group="Input")
    reconnect_timeout: float = setting(
        60.0,
        "Seconds to keep reopening a lost camera (the output keeps running) before giving up.",
        group="Input",
        check=_between(0, 86400),
    )
    # subject selection
    bbox: list[str] = setting(
        [],
        "Subject box x,y,w,h in frame pixels (repeatable: one subject each; the key keeps them all).",
        group="Subject",
        flags=("--bbox",),
        metavar="X,Y,W,H",
    )
    points: list[str] = setting(
        [], "Subject point x,y (repeatable: one subject each).", group="Subject", flags=("--point",), metavar="X,Y"
    )
    negative_points: list[str] = setting(
        [],
        "Not-subject point x,y (repeatable; goes with the last subject).",
        group="Subject",
        flags=("--negative-point",),
        metavar="X,Y",
    )
    auto: bool = setting(
        False,
        "Find the largest face and select head and shoulders.",
        group="Subject",
        shown_default="on when no --bbox or --point is given",
    )
    lost_after: float = setting(
        1.0,
        "Seconds (live) SAM 2 may miss the subject before the output turns to key; the last mask is kept meanwhile.",
        group="Subject",
        check=_between(0, 3600),
    )
    # output
    outputs: list[str] = setting(
        ["virtual"], "'virtual' or a video file path (repeatable).", group="Output", flags=("--output", "-o")
    )
    virtual_device: str | None = setting(
        None, "Virtual camera: /dev/video10 (Linux) or 'OBS Virtual Camera'.", group="Output"
    )
    preview: bool = setting(
        False, "Show a preview window (hotkeys: r add a subject, d drop one, a space m h q).", group="Output"
    )
    matte_output: str | None = setting(None, "Write each frame's alpha as PNG into this folder.", group="Output")
    overwrite: bool = setting(
        False,
        "Replace existing output files (written aside and renamed on a clean finish).",
        group="Output",
    )
    max_frames: int | None = setting(None, "Stop after N output frames.", group="Output", check=_positive)
    background: str = setting("key", "key, a colour, blur[:STRENGTH], an image or a video file.", group="Keying")
    # live loop
    sync: str = setting(
        "auto",
        "Live keying: on = every frame keyed with its own mask (picture delayed ~one tracker step), "
        "off = newest mask, lowest latency; auto = on when the tracker keeps up, else capped by --max-delay.",
        group="Live loop",
        check=_one_of(*SYNC_MODES),
    )
    max_delay: float | None = setting(
        None,
        "Most milliseconds --sync auto may delay the picture. Default 90 (lip sync with sound that is not "
        "delayed, ITU-R BT.1359); with --audio-delay auto the microphone waits too, so the default is 1000 "
        "and every frame is keyed with its own mask, as --sync on does (with a fixed --audio-delay MS: MS).",
        group="Live loop",
        check=_between(0, 5000, unit=" ms"),
        shown_default="90; 1000 with --audio-delay auto",
    )
    audio_delay: str = setting(
        "off",
        "Linux: a 'greencam Microphone' carrying --microphone delayed with the picture, for call apps "
        "(PulseAudio or PipeWire). The picture's delay is then held steady, in steps. auto = that delay "
        "(capture to virtual camera), re-applied when it moves by over 20 ms; MS = fixed milliseconds; "
        "off = no greencam microphone.",
        group="Live loop",
        check=lambda v: _audio_delay_problem(v),
        metavar="auto|off|MS",
    )
    microphone: str = setting(
        "default",
        "The microphone --audio-delay delays: default, or a name from greencam devices.",
        group="Live loop",
        metavar="NAME",
    )
    flow: bool = setting(
        False, "With --sync off: warp the newest mask with optical flow between tracker updates.", group="Live loop"
    )
    idle: str = setting(
        "auto",
        "auto = while no app has the virtual camera open (Linux), close the webcam, stop SAM 2 and send a "
        "placeholder; back within about a second when an app opens it. never = always on.",
        group="Live loop",
        check=_one_of("auto", "never"),
    )
    idle_after: float = setting(
        10.0,
        "Seconds with no app reading the virtual camera before going idle (an app that opens and closes it "
        "every few seconds keeps it on).",
        group="Live loop",
        check=_between(0, 3600, unit=" s"),
    )
    # remote
    server: str | None = setting(
        None,
        "Track on a greencam serve machine, e.g. https://gpu-box:8470 (the picture is keyed here).",
        group="Remote",
        envvar="GREENCAM_SERVER",
    )
    token: str | None = setting(
        None, "Access token of the server (printed by greencam serve).", group="Remote", envvar="GREENCAM_TOKEN"
    )
    cafile: str | None = setting(None, "Trust this PEM certificate for the server (a self-signed one).", group="Remote")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Per-setting checks (see :func:`setting`) plus the ones that involve several settings."""
        super().validate()
        if self.auto and (self.bbox or self.points):
            raise ConfigError("use either --auto or --bbox/--point, not both")
        if not self.outputs and not self.preview:
            raise ConfigError("nothing to output: give --output virtual, --output FILE or --preview")
        if self.token and not self.server:
            raise ConfigError("--token needs --server")
        if self.server and not self.token:
            raise ConfigError("--server needs --token (printed by greencam serve; or set GREENCAM_TOKEN)")


@dataclass
class ServeSettings(ModelSettings, NetworkSettings):
    """Everything ``greencam serve`` can be told (the model settings plus the server's own)."""

    host: str = setting(
        "127.0.0.1",
        "Address to listen on; 0.0.0.0 serves every interface (use TLS beyond a trusted network).",
        group="Server",
    )
    port: int = setting(
        8470,
        "TCP port for signalling and the browser pages (0 = any free port).",
        group="Server",
        check=_between(0, 65535),
    )
    token: str | None = setting(
        None,
        "Token clients must present (default: a new random one, printed once).",
        group="Server",
        envvar="GREENCAM_TOKEN",
    )
    token_file: str | None = setting(None, "Read the token from this file (first line).", group="Server")
    cert_file: str | None = setting(
        None, "TLS certificate (PEM): serve https (browsers need it beyond localhost).", group="Server"
    )
    key_file: str | None = setting(None, "TLS private key (PEM) for --cert-file.", group="Server")
    max_sessions: int = setting(4, "Most cameras served at once.", group="Server", check=_between(1, 1000))
    min_fps: float = setting(
        10.0,
        "Refuse a new camera (503) when each would then get fewer masks per second than this (0 = off).",
        group="Server",
        check=_between(0, 1000),
    )
    # --ray: the sessions on a Ray Serve cluster (greenscreen_cam/cluster, docs/scaling.md)
    ray: bool = setting(
        False, "Serve on a Ray Serve cluster: an HTTP ingress and one session replica per GPU.", group="Cluster"
    )
    ray_address: str | None = setting(
        None,
        "Ray cluster to join, e.g. ray://head:10001 or head:6379 (default: a new local Ray instance).",
        group="Cluster",
        envvar="RAY_ADDRESS",
    )
    replicas: int | None = setting(
        None,
        "Session replicas (each loads the model once; default: autoscale on sessions).",
        group="Cluster",
        check=_between(1, 1000),
    )
    min_replicas: int = setting(
        1, "Fewest session replicas when autoscaling.", group="Cluster", check=_between(1, 1000)
    )
    max_replicas: int = setting(4, "Most session replicas when autoscaling.", group="Cluster", check=_between(1, 1000))
    ray_cpus: int | None = setting(
        None, "CPUs of the local Ray instance greencam starts (default: all).", group="Cluster", check=_between(1, 4096)
    )

    def validate(self) -> None:
        check_fields(self)
        if self.min_replicas > self.max_replicas:
            raise ConfigError(f"--min-replicas {self.min_replicas} is above --max-replicas {self.max_replicas}")
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("--cert-file and --key-file go together")
        # --token with --token-file is refused by app.read_token, which can tell GREENCAM_TOKEN from the flag.
        if self.token is not None and not self.token.strip():
            raise ConfigError("--token is empty")


def flag_of(f: dataclasses.Field[Any]) -> str:
    """The long CLI flag of a settings field."""
    flags = f.metadata.get("flags") or ()
    longs = [x for x in flags if x.startswith("--")]
    return longs[0] if longs else "--" + f.name.replace("_", "-")


def check_fields(settings: Any) -> None:
    """Run every field's own check (see :func:`setting`); ConfigError naming the flag for the first failure."""
    for f in fields(settings):
        check = f.metadata.get("check")
        value = getattr(settings, f.name)
        if check is not None and value is not None and (problem := check(value)):
            raise ConfigError(f"{flag_of(f)} {problem}")


def settings_fields(cls: type = Settings, names: Iterable[str] | None = None) -> list[dataclasses.Field[Any]]:
    """The fields of ``cls`` in declaration order, optionally only ``names``."""
    all_fields = list(fields(cls))
    if names is None:
        return all_fields
    wanted = set(names)
    return [f for f in all_fields if f.name in wanted]


SETTINGS_CLASSES: tuple[type, ...] = (Settings, ServeSettings)
"""Every settings class; a config file may hold the keys of any of them."""

_HINTS: dict[str, Any] = {k: v for cls in SETTINGS_CLASSES for k, v in get_type_hints(cls).items()}


def _coerce(key: str, value: Any, where: str) -> Any:
    hint = _HINTS[key]
    text = str(hint)
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{where}: {key} cannot be empty")
    if text.startswith("list"):
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
            return [str(v) for v in value]
        raise ConfigError(f"{where}: {key} must be a list of strings, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    if "int" in text and "float" not in text:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be a whole number, got {value!r}")
        return value
    if "float" in text:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
        return float(value)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{where}: {key} must be a string, got {value!r}")


_CONFIG_FORMATS = {"": "TOML", ".toml": "TOML", ".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}
"""Config file extension -> the format it is parsed as."""


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a TOML, YAML or JSON config file (by its extension; TOML without one) into ``{field: value}``."""
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; give a .toml, .yaml or .json file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    kind = _CONFIG_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(f"config file {path}: unknown format {path.suffix!r}; use .toml, .yaml/.yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    try:
        if kind == "YAML":
            import yaml

            data = yaml.safe_load(text) or {}
        elif kind == "JSON":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except Exception as e:  # tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"config file {path} is not valid {kind}: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    names = set(_HINTS)
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in names:
            raise ConfigError(f"config file {path}: unknown setting {raw_key!r}")
        if key in SECRET_SETTINGS and value == MASK:
            raise ConfigError(
                f"config file {path}: {key} is the mask `greencam config` prints; "
                "write the real value (greencam config --show-secrets shows it)"
            )
        out[key] = _coerce(key, value, f"config file {path}")
    return out


def user_config_file() -> Path:
    """The per-user config file (``~/.config/greencam/config.toml`` on Linux)."""
    from greenscreen_cam.paths import user_config_path

    return user_config_path()


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    defaults_file: Path | None = REPO_DEFAULTS,
    user_file: Path | None | bool = True,
    cls: type[Any] = Settings,
) -> Any:
    """Build the effective settings (an instance of ``cls``, :class:`Settings` by default).

    Layers, later wins: dataclass defaults, ``defaults_file`` (when present),
    ``config_file`` if given else ``user_file`` (when present; True = the
    user's config folder), then ``overrides`` (CLI flags; ``None`` values and
    empty lists mean "not given"). Keys that belong to another command's
    settings (e.g. ``port`` for ``start``) are ignored.
    """
    settings = cls()
    own = {f.name for f in fields(cls)}
    layers: list[dict[str, Any]] = []
    if defaults_file is not None and defaults_file.is_file():
        layers.append(read_config_file(defaults_file))
    if user_file is True:
        user_file = user_config_file()
    if config_file is not None:
        layers.append(read_config_file(config_file))
    elif isinstance(user_file, Path) and user_file.is_file():
        layers.append(read_config_file(user_file))
    if overrides:
        layers.append({k: v for k, v in overrides.items() if v is not None and v != []})
    for layer in layers:
        for key, value in layer.items():
            if key in own:
                setattr(settings, key, value)
    return settings


def to_toml(settings: Any) -> str:
    """Render a settings dataclass as TOML (``None`` values are written as comments)."""
    lines = []
    for key, value in dataclasses.asdict(settings).items():
        if value is None:
            lines.append(f"# {key} = (not set)")
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            lines.append(f"{key} = {value}")
        elif isinstance(value, list):
            lines.append(f"{key} = [{', '.join(_quote(v) for v in value)}]")
        else:
            lines.append(f"{key} = {_quote(value)}")
    return "\n".join(lines) + "\n"


DEFAULTS_HEADER = """\
# greencam defaults, generated from greenscreen_cam/config.py (`greencam config --defaults`).
# Copy keys into your own file (greencam start --config my.toml, or the file that
# `greencam config --path` prints) to change them; CLI flags override both.
# Keys are the long flag names with dashes turned into underscores.
"""


GROUPS = ("Input", "Subject", "Model", "Output", "Keying", "Live loop", "Remote", "Server", "Network", "Cluster")
"""The order settings are listed in: ``--help`` panels and ``configs/default.toml`` sections."""


def defaults_toml() -> str:
    """The text of ``configs/default.toml``: every setting at its default, by group (``serve``'s last)."""
    rendered: dict[str, str] = {}
    group_of: dict[str, str] = {}
    for settings in (ServeSettings(), Settings()):  # start's wins for a key both have (token)
        for f, line in zip(fields(settings), to_toml(settings).splitlines()):
            rendered[f.name] = line
            group_of[f.name] = f.metadata["group"]
    parts = [DEFAULTS_HEADER.rstrip("\n")]
    for group in GROUPS:
        parts.append(f"\n# [{group}]")
        parts += [rendered[name] for name in rendered if group_of[name] == group]
    return "\n".join(parts) + "\n"


STARTER_HEADER = """\
# Your greencam settings (written by `greencam config --write`). Every setting is listed at its
# default and commented out: uncomment a line and change its value to use it. `greencam config`
# prints the settings in force; CLI flags override this file.
"""


def starter_toml() -> str:
    """A user config file that changes nothing yet: :func:`defaults_toml` with every setting commented out."""
    lines = []
    for line in defaults_toml().splitlines()[DEFAULTS_HEADER.count("\n") :]:
        lines.append(line if not line or line.startswith("#") else f"# {line}")
    return STARTER_HEADER + "\n".join(lines) + "\n"


def write_config_file(path: Path, *, overwrite: bool = False) -> Path:
    """Write :func:`starter_toml` to ``path`` atomically (a temp file beside it, then a rename).

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False (the file is left as it was).
        ConfigError: the folder cannot be created or written (permissions, full disk).
    """
    import os
    import tempfile

    from greenscreen_cam.errors import OutputExistsError

    path = path.expanduser()
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} already exists; pass --overwrite to replace it (the old file is kept until then)"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(starter_toml())
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)  # it may come to hold a token
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the file appeared meanwhile: never replaces one
            tmp.unlink()
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it") from None
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
    return path


SECRET_SETTINGS = ("token", "turn_password")
"""Settings that are credentials: ``greencam config`` masks them unless ``--show-secrets``."""

MASK = "********"


def masked(settings: Any) -> Any:
    """A copy of ``settings`` whose credentials that are set read :data:`MASK` (nothing else changes)."""
    hidden = {k: MASK for k in SECRET_SETTINGS if hasattr(settings, k) and getattr(settings, k)}
    return dataclasses.replace(settings, **hidden)


def _quote(value: Any) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
