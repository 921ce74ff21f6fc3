"""greencam service: the systemd user unit written into a temporary XDG_CONFIG_HOME."""

from __future__ import annotations

import sys

import pytest

from greenscreen_cam.errors import ServiceError
from greenscreen_cam.live import service


@pytest.fixture()
def config(tmp_path):
    path = tmp_path / "my config.toml"
    path.write_text('background = "blur:30"\n')
    return path


def test_unit_runs_start_with_the_config_and_restarts_on_failure(config, tmp_path):
    text = service.unit_text(config, ["/opt/gc/bin/greencam"])
    assert f"ExecStart=/opt/gc/bin/greencam start --config '{config}'" in text
    assert "Restart=on-failure" in text and "WantedBy=default.target" in text


def test_plan_and_paths(config, tmp_path):
    home = str(tmp_path / "xdg")
    todo = service.plan("install", config, home)
    assert todo.path == tmp_path / "xdg" / "systemd" / "user" / "greencam.service"
    assert ["systemctl", "--user", "enable", "--now", "greencam.service"] in todo.commands
    assert "ExecStart=" in todo.describe() and "systemctl --user daemon-reload" in todo.describe()
    assert service.unit_path("relative") == service.unit_path("")  # a relative XDG_CONFIG_HOME is ignored
    with pytest.raises(ServiceError, match="does not exist"):
        service.plan("install", tmp_path / "missing.toml", home)
    with pytest.raises(ServiceError, match="unknown service action"):
        service.plan("restart", config, home)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd units are Linux-only")
def test_install_then_remove_writes_and_deletes_the_unit(config, tmp_path):
    home = str(tmp_path / "xdg")
    done = service.install(config, config_home=home, run=False)
    assert done.path.read_text() == done.text
    service.remove(config_home=home, run=False)
    assert not done.path.exists()
    with pytest.raises(ServiceError, match="no greencam service installed"):
        service.remove(config_home=home, run=False)


def test_service_cli_dry_run_prints_the_unit(config, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from greenscreen_cam.cli import app

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    result = CliRunner().invoke(app, ["service", "install", "--dry-run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "ExecStart=" in result.output and "start --config" in result.output and "Restart=on-failure" in result.output
    assert not (tmp_path / "xdg" / "systemd").exists(), "a dry run writes nothing"
    missing = CliRunner().invoke(app, ["service", "install", "--dry-run", "--config", str(tmp_path / "no.toml")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
