"""Where greencam keeps files: the checkpoint folder and the user's settings file, on temporary layouts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from greenscreen_cam import paths
from greenscreen_cam.errors import CheckpointError
from greenscreen_cam.track import models

from .conftest import REPO

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG folders are a Linux convention")


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """A fake home folder, no XDG variables, no GREENCAM_CHECKPOINTS, and a working folder elsewhere."""
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", paths.CHECKPOINTS_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(work)
    return home


def _layout(root: Path, *, pyproject: bool, checkpoints: bool) -> Path:
    package = root / "greenscreen_cam"
    package.mkdir(parents=True)
    if pyproject:
        (root / "pyproject.toml").write_text("[project]\nname = 'greencam'\n")
    if checkpoints:
        (root / "checkpoints").mkdir()
    return package


def test_a_checkout_keeps_its_checkpoints_folder(home, tmp_path):
    package = _layout(tmp_path / "src", pyproject=True, checkpoints=True)
    assert paths.checkout_root(package) == tmp_path / "src"
    assert paths.checkpoint_dir(package) == tmp_path / "src" / "checkpoints"


@linux_only
@pytest.mark.parametrize("pyproject, checkpoints", [(False, False), (True, False), (False, True)])
def test_an_installed_package_uses_the_user_data_folder(home, tmp_path, pyproject, checkpoints):
    package = _layout(tmp_path / "site-packages", pyproject=pyproject, checkpoints=checkpoints)
    assert paths.checkout_root(package) is None
    assert paths.checkpoint_dir(package) == home / ".local" / "share" / "greencam" / "checkpoints"


@linux_only
def test_xdg_data_home_is_used_when_absolute(home, tmp_path, monkeypatch):
    package = _layout(tmp_path / "site-packages", pyproject=False, checkpoints=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert paths.checkpoint_dir(package) == tmp_path / "data" / "greencam" / "checkpoints"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")
    assert paths.checkpoint_dir(package) == home / ".local" / "share" / "greencam" / "checkpoints"


def test_environment_override_wins(home, tmp_path, monkeypatch):
    package = _layout(tmp_path / "src", pyproject=True, checkpoints=True)
    monkeypatch.setenv(paths.CHECKPOINTS_ENV, str(tmp_path / "elsewhere"))
    assert paths.checkpoint_dir(package) == tmp_path / "elsewhere"
    monkeypatch.setenv(paths.CHECKPOINTS_ENV, "mine")  # relative: taken from the working folder, made absolute
    assert paths.checkpoint_dir(package) == Path.cwd() / "mine"
    monkeypatch.setenv(paths.CHECKPOINTS_ENV, "  ")  # empty: as if unset
    assert paths.checkpoint_dir(package) == tmp_path / "src" / "checkpoints"


def test_this_checkout_keeps_its_checkpoints_in_its_own_folder(home):
    assert paths.checkout_root() == REPO
    assert paths.checkpoint_dir() == REPO / "checkpoints"


def test_the_model_loader_looks_for_checkpoints_where_paths_says(home, tmp_path, monkeypatch):
    spec = models.get_spec("tiny")
    monkeypatch.setenv(paths.CHECKPOINTS_ENV, str(tmp_path / "weights"))
    with pytest.raises(CheckpointError, match=f"at {tmp_path / 'weights' / spec.filename}; download it with"):
        models.resolve_checkpoint(spec, None)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / spec.filename).write_bytes(b"weights")
    assert models.resolve_checkpoint(spec, None) == tmp_path / "weights" / spec.filename


@linux_only
@pytest.mark.parametrize("value", [None, "", "relative/config"])
def test_config_path_never_depends_on_the_working_folder(home, monkeypatch, value):
    if value is not None:
        monkeypatch.setenv("XDG_CONFIG_HOME", value)
    path = paths.user_config_path()
    assert path.is_absolute() and path == home / ".config" / "greencam" / "config.toml"


@linux_only
def test_config_path_follows_an_absolute_xdg_config_home(home, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert paths.user_config_dir() == tmp_path / "cfg" / "greencam"
    assert paths.user_config_path() == tmp_path / "cfg" / "greencam" / "config.toml"
