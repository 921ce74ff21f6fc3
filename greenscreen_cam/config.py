"""One typed settings object, layered: defaults < ``configs/default.toml`` < user file < CLI flags.

A config file is TOML (``.toml``) or YAML (``.yaml``/``.yml``) holding a flat
table whose keys are :class:`Settings` field names (the long CLI flag with
dashes turned into underscores, e.g. ``virtual_device``). Unknown keys and
wrong types are a :class:`~greenscreen_cam.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import tomllib

from greenscreen_cam.errors import ConfigError

REPO_DEFAULTS = Path(__file__).resolve().parent.parent / "configs" / "default.toml"
USER_CONFIG = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "greencam" / "config.toml"


@dataclass
class Settings:
    """Everything ``greencam start`` can be told. Field docs are the CLI's help texts."""

    # input
    source: str = "0"
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    fourcc: str | None = None
    realtime: bool = False
    # subject selection
    bbox: str | None = None
    points: list[str] = field(default_factory=list)
    negative_points: list[str] = field(default_factory=list)
    auto: bool = False
    # model
    model: str = "tiny"
    checkpoint: str | None = None
    resolution: int | None = None
    device: str = "auto"
    # output
    outputs: list[str] = field(default_factory=lambda: ["virtual"])
    virtual_device: str | None = None
    preview: bool = False
    matte_output: str | None = None
    max_frames: int | None = None
    # compositor
    background: str = "key"
    color: str = "green"
    threshold: float = 0.5
    feather: float = 2.0
    grow: int = 0
    shrink: int = 0
    max_hole: float = 0.01
    min_island: float = 0.01
    refine: str = "auto"
    smooth: float = 0.3
    despill: bool = False
    mirror: bool = False
    flow: bool = False
    # loop
    lost_after: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_HINTS = get_type_hints(Settings)


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


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a TOML/YAML config file into a validated ``{field: value}`` dict."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except Exception as e:  # tomllib.TOMLDecodeError, yaml.YAMLError
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"config file {path} is not valid {path.suffix.lstrip('.') or 'TOML'}: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    names = {f.name for f in fields(Settings)}
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in names:
            raise ConfigError(f"config file {path}: unknown setting {raw_key!r}")
        out[key] = _coerce(key, value, f"config file {path}")
    return out


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    defaults_file: Path | None = REPO_DEFAULTS,
    user_file: Path | None = USER_CONFIG,
) -> Settings:
    """Build the effective settings.

    Layers, later wins: dataclass defaults, ``defaults_file`` (when present),
    ``config_file`` if given else ``user_file`` (when present), then
    ``overrides`` (CLI flags; ``None`` values mean "not given").
    """
    settings = Settings()
    layers: list[dict[str, Any]] = []
    if defaults_file is not None and defaults_file.is_file():
        layers.append(read_config_file(defaults_file))
    if config_file is not None:
        layers.append(read_config_file(config_file))
    elif user_file is not None and user_file.is_file():
        layers.append(read_config_file(user_file))
    if overrides:
        layers.append({k: v for k, v in overrides.items() if v is not None and v != []})
    for layer in layers:
        for key, value in layer.items():
            setattr(settings, key, value)
    return settings


def to_toml(settings: Settings) -> str:
    """Render settings as TOML (``None`` values are written as comments)."""
    lines = []
    for key, value in settings.to_dict().items():
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


def _quote(value: Any) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
