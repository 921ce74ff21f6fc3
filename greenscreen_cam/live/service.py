"""Start at login: a systemd user unit that runs ``greencam start`` with the user's config file.

``greencam service install`` writes ``~/.config/systemd/user/greencam.service`` (``$XDG_CONFIG_HOME``
respected) and enables it; ``greencam service remove`` disables and deletes it; ``--dry-run``
prints the unit and the commands instead. The unit restarts greencam on failure; with idle on
(the default) a camera nobody watches costs almost nothing, so it can stay running all day.

Only Linux with systemd is handled; the README shows the macOS (launchd) and Windows (Task
Scheduler) equivalents, which are left to the user.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from greenscreen_cam.errors import ServiceError

__all__ = ["ServicePlan", "install", "plan", "remove", "unit_path", "unit_text"]

UNIT_NAME = "greencam.service"


def unit_path(config_home: str | None = None) -> Path:
    """Where the user unit lives: ``$XDG_CONFIG_HOME/systemd/user/greencam.service`` (default ``~/.config``)."""
    base = config_home if config_home is not None else os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "systemd" / "user" / UNIT_NAME


def greencam_command() -> list[str]:
    """How to run this greencam: its console script when on PATH next to this Python, else ``python -m``."""
    script = Path(sys.executable).with_name("greencam")
    if script.exists():
        return [str(script)]
    found = shutil.which("greencam")
    return [found] if found else [sys.executable, "-m", "greenscreen_cam"]


def unit_text(config: Path, command: list[str] | None = None) -> str:
    """The systemd user unit that runs ``greencam start --config CONFIG``, restarting on failure."""
    argv = [*(command or greencam_command()), "start", "--config", str(config)]
    return (
        "[Unit]\n"
        "Description=greencam virtual green screen (idles while no app watches)\n"
        "After=graphical-session.target\n"
        "StartLimitIntervalSec=300\n"
        "StartLimitBurst=5\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={shlex.join(argv)}\n"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "\n"
        "[Install]\n"
        "WantedBy=default.target\n"
    )


@dataclass
class ServicePlan:
    """What install/remove will do: the unit file and the ``systemctl --user`` commands."""

    path: Path
    text: str | None
    commands: list[list[str]]

    def describe(self) -> str:
        lines = [f"# {self.path}"]
        if self.text is not None:
            lines += [self.text.rstrip("\n"), ""]
        lines += [shlex.join(c) for c in self.commands]
        return "\n".join(lines)


def plan(action: str, config: Path | None = None, config_home: str | None = None) -> ServicePlan:
    """The plan for ``install`` (needs ``config``) or ``remove``."""
    path = unit_path(config_home)
    if action == "install":
        if config is None:
            raise ServiceError("service install needs a config file (greencam config --write writes one)")
        config = config.expanduser().resolve()
        if not config.is_file():
            raise ServiceError(f"config file {config} does not exist; write it first with greencam config --write")
        return ServicePlan(
            path,
            unit_text(config),
            [["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", "--now", UNIT_NAME]],
        )
    if action == "remove":
        return ServicePlan(
            path,
            None,
            [["systemctl", "--user", "disable", "--now", UNIT_NAME], ["systemctl", "--user", "daemon-reload"]],
        )
    raise ServiceError(f"unknown service action {action!r}: use install or remove")


def _systemctl(commands: list[list[str]], *, ignore_failure: bool = False) -> None:
    if shutil.which("systemctl") is None:
        raise ServiceError("systemctl not found: greencam service needs systemd (see the README for other systems)")
    for cmd in commands:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0 and not ignore_failure:
            why = (done.stderr or done.stdout).strip().splitlines()
            raise ServiceError(f"{shlex.join(cmd)} failed: {why[-1] if why else f'exit {done.returncode}'}")


def install(config: Path, *, config_home: str | None = None, run: bool = True) -> ServicePlan:
    """Write the unit and (with ``run``) enable and start it; the plan carried out."""
    if not sys.platform.startswith("linux"):
        raise ServiceError("greencam service is for Linux (systemd); the README shows launchd / Task Scheduler")
    todo = plan("install", config, config_home)
    todo.path.parent.mkdir(parents=True, exist_ok=True)
    assert todo.text is not None
    todo.path.write_text(todo.text)
    if run:
        _systemctl(todo.commands)
    return todo


def remove(*, config_home: str | None = None, run: bool = True) -> ServicePlan:
    """Disable, stop and delete the unit; the plan carried out."""
    if not sys.platform.startswith("linux"):
        raise ServiceError("greencam service is for Linux (systemd); the README shows launchd / Task Scheduler")
    todo = plan("remove", None, config_home)
    if not todo.path.exists():
        raise ServiceError(f"no greencam service installed (no {todo.path})")
    if run:
        _systemctl(todo.commands[:1], ignore_failure=True)
    todo.path.unlink()
    if run:
        _systemctl(todo.commands[1:], ignore_failure=True)
    return todo
