"""Device listing against a temporary tree laid out like /sys/class/video4linux."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from greenscreen_cam.cli import app
from greenscreen_cam.media.devices import list_v4l2


def fake_sysfs(root: Path) -> Path:
    sysfs = root / "sys" / "class" / "video4linux"
    drivers = root / "sys" / "bus"
    for name, label, index, driver in [
        ("video0", "Integrated Camera: Integrated C", "0", "uvcvideo"),
        ("video1", "Integrated Camera: Integrated C", "1", "uvcvideo"),  # metadata node
        ("video10", "greencam", "0", "v4l2loopback"),
        ("video2", "HD Pro Webcam C920", "0", "uvcvideo"),
    ]:
        entry = sysfs / name
        (entry / "device").mkdir(parents=True)
        (entry / "name").write_text(label + "\n")
        (entry / "index").write_text(index + "\n")
        (drivers / driver).mkdir(parents=True, exist_ok=True)
        os.symlink(drivers / driver, entry / "device" / "driver")
    (sysfs / "not-a-video").mkdir()
    return sysfs


def test_lists_cameras_and_marks_loopback(tmp_path):
    devices = list_v4l2(fake_sysfs(tmp_path), tmp_path / "dev")
    assert [(d.index, d.name, d.virtual) for d in devices] == [
        (0, "Integrated Camera: Integrated C", False),
        (2, "HD Pro Webcam C920", False),
        (10, "greencam", True),
    ]
    assert devices[0].path == str(tmp_path / "dev" / "video0") and devices[2].driver == "v4l2loopback"


def test_missing_sysfs_is_empty(tmp_path):
    assert list_v4l2(tmp_path / "nothing") == []


@pytest.fixture()
def linux_host(monkeypatch, tmp_path):
    """Act as a Linux machine whose sysfs and /dev are temporary folders (empty until a test fills them)."""
    import types

    import greenscreen_cam.media.devices as d

    sysfs, dev = tmp_path / "sysfs-empty", tmp_path / "dev"
    sysfs.mkdir()
    dev.mkdir()
    monkeypatch.setattr(d, "SYSFS_V4L", sysfs)
    monkeypatch.setattr(d, "DEV_ROOT", dev)
    monkeypatch.setattr(d, "sys", types.SimpleNamespace(platform="linux"))
    return d


def test_module_roots_are_read_at_call_time(linux_host, tmp_path):
    assert linux_host.list_devices() == []
    linux_host.SYSFS_V4L = fake_sysfs(tmp_path)
    assert [d.index for d in linux_host.list_devices()] == [0, 2, 10]
    assert linux_host.list_devices()[0].path == str(tmp_path / "dev" / "video0")


def test_devices_command_on_a_machine_with_nothing(linux_host):
    result = CliRunner().invoke(app, ["devices"])
    assert result.exit_code == 0
    assert "No cameras found" in result.output
    assert "modprobe v4l2loopback devices=1 video_nr=10" in result.output.replace("\n", " ").replace("  ", " ")


def test_devices_json(linux_host, monkeypatch, tmp_path):
    import json

    monkeypatch.setattr(linux_host, "SYSFS_V4L", fake_sysfs(tmp_path))
    result = CliRunner().invoke(app, ["devices", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert [c["index"] for c in data["cameras"]] == [0, 2]
    assert data["virtual_cameras"][0]["name"] == "greencam"


def test_format_probe_of_a_non_camera_is_empty_not_an_error(tmp_path):
    from greenscreen_cam.media.devices import _enum_formats

    assert _enum_formats("/dev/null") == []  # opens, but answers no V4L2 ioctl
    assert _enum_formats(str(tmp_path / "video9")) == []  # cannot be opened


# --------------------------------------------------------------------------- Secure Boot (issue 20)
from greenscreen_cam.media import devices as _devices  # noqa: E402


@pytest.mark.parametrize(
    "log, rejected",
    [
        ("[  12.3] modprobe: ERROR: could not insert 'v4l2loopback': Key was rejected by service", True),
        ("[  5.1] Loading of unsigned module is rejected", True),
        ("[  5.1] Lockdown: modprobe: unsigned module loading is restricted; see man kernel_lockdown.7", True),
        ("[  3.0] usb 1-1: new high-speed USB device", False),
        ("", False),
    ],
)
def test_secure_boot_rejection_is_recognised(log, rejected):
    assert _devices.secure_boot_rejected(log) is rejected


def test_secure_boot_rejection_gives_signing_steps(monkeypatch):
    monkeypatch.setattr(_devices.sys, "platform", "linux")
    steps = _devices.virtual_camera_help(
        "modprobe: ERROR: could not insert 'v4l2loopback': Key was rejected by service"
    )
    assert "mokutil --import /var/lib/dkms/mok.pub" in steps and "Enroll MOK" in steps and "modprobe" in steps
    plain = _devices.virtual_camera_help("nothing here")
    assert plain == _devices.virtual_camera_fix() and "mokutil" not in plain
