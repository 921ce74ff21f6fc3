"""Settings layering and config-file errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from greenscreen_cam.cli import app
from greenscreen_cam.config import (
    REPO_DEFAULTS,
    ServeSettings,
    Settings,
    defaults_toml,
    flag_of,
    load_settings,
    read_config_file,
    to_toml,
)
from greenscreen_cam.errors import ConfigError


def test_repo_defaults_file_matches_the_code():
    """configs/default.toml documents the real defaults: it must say what the code does."""
    assert REPO_DEFAULTS.read_text() == defaults_toml(), (
        "regenerate it: greencam config --defaults > configs/default.toml"
    )
    data = tomllib.loads(REPO_DEFAULTS.read_text())
    expected = {**ServeSettings().__dict__, **Settings().to_dict()}
    assert data == {k: v for k, v in expected.items() if v is not None}


def _options(command: str) -> dict[str, str]:
    """``{parameter name: long flag}`` of a command, as Typer/Click see them."""
    import typer.main

    from greenscreen_cam.cli import app

    click_cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {
        p.name: next(o for o in p.opts if o.startswith("--")) for p in click_cmd.params if p.param_type_name == "option"
    }


@pytest.mark.parametrize(
    "command, cls, extra",
    [
        ("start", Settings, {"config", "virtual_backend"}),
        ("serve", ServeSettings, {"config", "random_weights"}),
    ],
)
def test_every_setting_is_an_option_and_every_option_a_setting(command, cls, extra):
    """One definition: the CLI options are exactly the settings' fields, under the same flags."""
    from dataclasses import fields

    options = _options(command)
    assert set(options) - extra == {f.name for f in fields(cls)}
    for f in fields(cls):
        assert options[f.name].split("/")[0] == flag_of(f)
        assert f.metadata["help"] and f.metadata["group"], f.name


def test_bench_takes_the_model_settings():
    options = _options("bench")
    assert {"model", "checkpoint", "resolution", "device"} <= set(options)


def test_a_flag_overrides_a_switch_the_config_file_turns_on(tmp_path, checkpoint_dir, monkeypatch):
    """auto/preview/realtime set in a file can be switched off again with --no-..."""
    from greenscreen_cam.cli import app

    monkeypatch.setenv("GREENCAM_CHECKPOINTS", str(checkpoint_dir))
    cfg = tmp_path / "c.toml"
    cfg.write_text("auto = true\npreview = true\nrealtime = true\n")
    result = CliRunner().invoke(
        app,
        [
            "start",
            "--config",
            str(cfg),
            "--no-auto",
            "--no-preview",
            "--no-realtime",
            "--bbox",
            "1,1,4,4",
            "--source",
            str(tmp_path / "nope.mp4"),
            "--output",
            str(tmp_path / "o.mp4"),
        ],
    )
    # Got past the settings (no "either --auto or --bbox" conflict) to the missing source.
    assert result.exit_code == 4 and "no such camera index" in result.output


@pytest.mark.parametrize(
    "settings, message",
    [
        (Settings(threshold=1.0), "--threshold must be in (0, 1)"),
        (Settings(grow=2, shrink=2), "--grow and --shrink cannot be used together"),
        (Settings(outputs=[], preview=False), "nothing to output"),
        (Settings(width=0), "--width must be positive"),
        (Settings(reconnect_timeout=-1), "--reconnect-timeout must be in [0, 86400]"),
        (ServeSettings(port=70000), "--port must be in [0, 65535]"),
        (ServeSettings(cert_file="c.pem"), "--cert-file and --key-file go together"),
        (ServeSettings(token="a", token_file="t"), "either --token or --token-file"),
    ],
)
def test_validation_names_the_flag(settings, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        settings.validate()


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
    defaults = CliRunner().invoke(app, ["config", "--defaults"])
    assert defaults.exit_code == 0 and defaults.output == defaults_toml()
