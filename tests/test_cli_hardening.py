"""Issue 18, items 8-15: honest exit codes, full disks, interrupts, progress and messages that do not mislead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from greenscreen_cam.cli import app

runner = CliRunner()

SECRET = "s3cr3t-token-abcdefghijklmnop"
TURN_SECRET = "turn-pw-qrstuvwxyz"


@pytest.fixture()
def no_env(monkeypatch):
    for name in ("GREENCAM_TOKEN", "GREENCAM_SERVER", "GREENCAM_TURN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent")


# --------------------------------------------------------------------------- item 8: config masks secrets


@pytest.mark.parametrize("as_json", [False, True], ids=["toml", "json"])
def test_config_masks_secrets_unless_asked(no_env, tmp_path, as_json):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'server = "http://127.0.0.1:9"\ntoken = "{SECRET}"\nturn_password = "{TURN_SECRET}"\n')
    extra = ["--json"] if as_json else []
    shown = runner.invoke(app, ["config", "--config", str(cfg), *extra])
    assert shown.exit_code == 0, shown.output
    assert SECRET not in shown.output and TURN_SECRET not in shown.output
    assert "http://127.0.0.1:9" in shown.output  # everything else is shown as it is
    if as_json:
        data = json.loads(shown.output)
        assert data["token"] == data["turn_password"] == "********"
    clear = runner.invoke(app, ["config", "--config", str(cfg), "--show-secrets", *extra])
    assert clear.exit_code == 0 and SECRET in clear.output and TURN_SECRET in clear.output


def test_config_leaves_unset_secrets_unset(no_env):
    shown = runner.invoke(app, ["config"])
    assert shown.exit_code == 0
    assert "# token = (not set)" in shown.output and "********" not in shown.output
