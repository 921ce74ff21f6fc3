"""Settings layering and config-file errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

from greenscreen_cam.cli import app
from greenscreen_cam.config import REPO_DEFAULTS, Settings, load_settings, read_config_file, to_toml
from greenscreen_cam.errors import ConfigError


def test_repo_defaults_file_matches_the_code():
    """configs/default.toml documents the real defaults: it must say what the code does."""
    data = tomllib.loads(REPO_DEFAULTS.read_text())
    assert data == {k: v for k, v in Settings().to_dict().items() if v is not None}


def test_layers_defaults_file_flags(tmp_path):
    defaults = tmp_path / "defaults.toml"
    defaults.write_text('model = "small"\nsmooth = 0.1\n')
    user = tmp_path / "user.yaml"
    user.write_text("smooth: 0.5\nfeather: 4\noutputs: [virtual, out.mp4]\n")
    s = load_settings(user, {"feather": 1.0, "model": None}, defaults_file=defaults, user_file=None)
    assert (s.model, s.smooth, s.feather, s.outputs) == ("small", 0.5, 1.0, ["virtual", "out.mp4"])
    assert s.threshold == 0.5  # untouched default


def test_user_config_in_home_is_used_when_no_file_is_given(tmp_path):
    user = tmp_path / "config.toml"
    user.write_text('background = "blur:10"\n')
    assert load_settings(None, defaults_file=None, user_file=user).background == "blur:10"


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("a.toml", "smooth = [", "not valid toml"),
        ("a.yaml", "smooth: [1,", "not valid yaml"),
        ("a.toml", "speed = 3", "unknown setting 'speed'"),
        ("a.toml", 'smooth = "lots"', "smooth must be a number"),
        ("a.toml", "grow = 1.5", "grow must be a whole number"),
        ("a.toml", 'mirror = "yes"', "mirror must be true or false"),
        ("a.yaml", "- 1\n- 2\n", "must hold a table"),
        ("a.toml", "outputs = [{a = 1}]", "list of strings"),
    ],
)
def test_bad_config_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_config_file(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")


def test_toml_round_trip():
    s = Settings(points=["1,2"], virtual_device="/dev/video10", mirror=True)
    data = tomllib.loads(to_toml(s))
    assert data["points"] == ["1,2"] and data["mirror"] is True and data["virtual_device"] == "/dev/video10"


def test_config_command(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('model = "large"\nmirror = true\n')
    result = CliRunner().invoke(app, ["config", "--config", str(cfg)])
    assert result.exit_code == 0 and 'model = "large"' in result.output and "mirror = true" in result.output
    bad = CliRunner().invoke(app, ["config", "--config", str(tmp_path / "x.toml")])
    assert bad.exit_code == 2 and "config file not found" in bad.output
    js = CliRunner().invoke(app, ["config", "--json"])
    assert js.exit_code == 0 and '"model": "tiny"' in js.output
    assert Path(REPO_DEFAULTS).is_file()
