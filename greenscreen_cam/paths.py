"""Where greencam keeps its files: checkpoints and the user's settings file.

- Checkpoints: ``$GREENCAM_CHECKPOINTS`` if set; else the repository's
  ``checkpoints/`` when greencam runs from a source checkout (the package's
  parent folder holds ``pyproject.toml`` and ``checkpoints/``); else the
  user's data folder from platformdirs (``~/.local/share/greencam/checkpoints``
  on Linux, ``~/Library/Application Support/greencam/checkpoints`` on macOS,
  ``%LOCALAPPDATA%\\greencam\\checkpoints`` on Windows).
- Settings: ``config.toml`` in the user's config folder from platformdirs
  (``~/.config/greencam`` on Linux). An empty or relative ``XDG_CONFIG_HOME`` /
  ``XDG_DATA_HOME`` is ignored, as the XDG spec asks, so no path ever depends on
  the working folder.

Stdlib and platformdirs only: the CLI imports this at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "greencam"
CHECKPOINTS_ENV = "GREENCAM_CHECKPOINTS"
PACKAGE_DIR = Path(__file__).resolve().parent
"""The installed ``greenscreen_cam`` package folder."""


def checkout_root(package_dir: Path | None = None) -> Path | None:
    """The source checkout greencam runs from, or None when it is installed as a package.

    A checkout is recognised by ``pyproject.toml`` and ``checkpoints/`` next to the package folder.
    """
    root = (package_dir or PACKAGE_DIR).parent
    if (root / "pyproject.toml").is_file() and (root / "checkpoints").is_dir():
        return root
    return None


def user_data_dir() -> Path:
    """The user's data folder for greencam (absolute, e.g. ``~/.local/share/greencam``)."""
    import platformdirs

    path = Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    # platformdirs ignores an empty XDG_DATA_HOME but not a relative one, which the XDG spec says to ignore
    return path if path.is_absolute() else Path.home() / ".local" / "share" / APP_NAME


def user_config_dir() -> Path:
    """The user's config folder for greencam (absolute, e.g. ``~/.config/greencam``)."""
    import platformdirs

    path = Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))
    return path if path.is_absolute() else Path.home() / ".config" / APP_NAME


def user_config_path() -> Path:
    """The user's settings file: ``user_config_dir() / "config.toml"``."""
    return user_config_dir() / "config.toml"


def checkpoint_dir(package_dir: Path | None = None) -> Path:
    """Where checkpoints are read from and downloaded to (see the module docstring for the order).

    Args:
        package_dir: The package folder to test for a checkout (tests); None = this package.
    """
    override = os.environ.get(CHECKPOINTS_ENV, "").strip()
    if override:
        return Path(override).expanduser().absolute()
    root = checkout_root(package_dir)
    if root is not None:
        return root / "checkpoints"
    return user_data_dir() / "checkpoints"


def user_cache_dir() -> Path:
    """The user's cache folder for greencam (absolute, e.g. ``~/.cache/greencam``): compiled kernels."""
    import platformdirs

    path = Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))
    return path if path.is_absolute() else Path.home() / ".cache" / APP_NAME
