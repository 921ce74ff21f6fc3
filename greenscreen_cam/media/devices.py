"""Enumerate cameras and virtual cameras.

On Linux this reads ``/sys/class/video4linux`` (no device is opened, so a busy
camera is listed too) and asks each capture node for its formats with the
V4L2 ``VIDIOC_ENUM_FMT`` ioctl where the device can be opened. v4l2loopback
devices are recognised by their driver and marked as virtual cameras.
Elsewhere, cameras are probed with OpenCV by index.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

SYSFS_V4L = Path("/sys/class/video4linux")
"""Where Linux describes video devices; read at call time, so tests can point it at a fake tree."""
DEV_ROOT = Path("/dev")
"""Where the device nodes live; read at call time like :data:`SYSFS_V4L`."""

LINUX_VCAM_FIX = 'sudo modprobe v4l2loopback devices=1 video_nr=10 card_label="greencam" exclusive_caps=1'
LINUX_VCAM_PERSIST = (
    "to load it at every boot: echo v4l2loopback | sudo tee /etc/modules-load.d/v4l2loopback.conf && "
    "echo 'options v4l2loopback devices=1 video_nr=10 card_label=greencam exclusive_caps=1' | "
    "sudo tee /etc/modprobe.d/v4l2loopback.conf"
)
OTHER_VCAM_FIX = (
    "install OBS Studio 30 or newer (https://obsproject.com), click 'Start Virtual Camera' once, "
    "then close OBS and run greencam again"
)


def virtual_camera_fix() -> str:
    """The exact command/steps that create a virtual camera on this OS."""
    if sys.platform.startswith("linux"):
        return (
            f"create one with: {LINUX_VCAM_FIX} (install the v4l2loopback-dkms package first if modprobe "
            "cannot find it; `greencam devices` shows how to load it at every boot)"
        )
    return OTHER_VCAM_FIX


SECURE_BOOT_SIGNS = (
    "key was rejected by service",
    "loading of unsigned module is rejected",
    "unsigned module loading is restricted",
    "module verification failed",
    "required key not available",
)
"""Kernel-log phrases that mean a module was refused (or would be) for lack of a trusted signature."""

SECURE_BOOT_STEPS = (
    "v4l2loopback was rejected by Secure Boot (the module is not signed with a key the firmware trusts). "
    "Sign it with the DKMS key and enrol that key once: "
    "1) sudo apt install v4l2loopback-dkms mokutil (DKMS builds and signs the module with /var/lib/dkms/mok.pub); "
    "2) sudo mokutil --import /var/lib/dkms/mok.pub (choose a one-time password); "
    "3) reboot and pick 'Enroll MOK' in the blue MOK manager, enter that password; "
    f"4) {LINUX_VCAM_FIX}. "
    "Check with: mokutil --sb-state and mokutil --test-key /var/lib/dkms/mok.pub"
)


def secure_boot_rejected(kernel_log: str, module: str = "v4l2loopback") -> bool:
    """True when ``kernel_log`` shows ``module`` (or any module, for the generic lines) refused for its signature.

    ``module verification failed`` is only counted on a line naming ``module``: with Secure
    Boot off it is a warning and the module loads.
    """
    for line in kernel_log.lower().splitlines():
        if "module verification failed" in line:
            if module in line and "v4l2loopback" not in _loaded_modules():
                return True
            continue
        if any(sign in line for sign in SECURE_BOOT_SIGNS):
            return True
    return False


def _loaded_modules(proc_modules: Path = Path("/proc/modules")) -> str:
    try:
        return proc_modules.read_text()
    except OSError:
        return ""


def kernel_log(timeout: float = 2.0) -> str:
    """The recent kernel log as far as this user may read it (``journalctl -k``, else ``dmesg``); "" if neither."""
    import subprocess

    for cmd in (["journalctl", "-k", "-b", "-q", "--no-pager", "-n", "2000"], ["dmesg"]):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0 and done.stdout:
            return done.stdout
    return ""


def virtual_camera_help(log: str | None = None) -> str:
    """What to tell a user with no virtual camera on Linux: the signing steps after a Secure Boot
    rejection in the kernel log (read when ``log`` is None), else :func:`virtual_camera_fix`."""
    if sys.platform.startswith("linux"):
        text = kernel_log() if log is None else log
        if secure_boot_rejected(text):
            return SECURE_BOOT_STEPS
    return virtual_camera_fix()


@dataclass
class VideoDevice:
    """One capture or virtual camera device."""

    index: int
    path: str
    name: str
    driver: str = ""
    virtual: bool = False
    formats: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _driver(entry: Path) -> str:
    for link in (entry / "device" / "driver", entry / "device" / "driver" / "module"):
        try:
            return os.path.basename(os.path.realpath(link))
        except OSError:
            continue
    return ""


def _is_loopback(entry: Path, driver: str, name: str) -> bool:
    if "v4l2loopback" in driver or "v4l2 loopback" in driver:
        return True
    try:
        target = os.path.realpath(entry / "device")
    except OSError:
        target = ""
    return "v4l2loopback" in target or name.lower().startswith("dummy video device")


def list_v4l2(sysfs: Path | None = None, dev: Path | None = None, *, probe_formats: bool = True) -> list[VideoDevice]:
    """Video devices described under ``sysfs`` (a tree laid out like ``/sys/class/video4linux``).

    Only the first node of each physical camera (sysfs ``index`` 0) is listed:
    the others are metadata nodes that deliver no frames.

    Args:
        sysfs: The tree to read; None = :data:`SYSFS_V4L`.
        dev: Where the device nodes are; None = :data:`DEV_ROOT`.
        probe_formats: Ask each existing node for its formats (opens the device).
    """
    sysfs = SYSFS_V4L if sysfs is None else sysfs
    dev = DEV_ROOT if dev is None else dev
    if not sysfs.is_dir():
        return []
    devices: list[VideoDevice] = []
    for entry in sorted(sysfs.iterdir(), key=lambda p: _natural(p.name)):
        match = re.fullmatch(r"video(\d+)", entry.name)
        if not match:
            continue
        node_index = _read(entry / "index")
        if node_index not in ("", "0"):
            continue
        name = _read(entry / "name") or entry.name
        driver = _driver(entry)
        virtual = _is_loopback(entry, driver, name)
        path = str(dev / entry.name)
        formats = _enum_formats(path) if probe_formats and os.path.exists(path) else []
        devices.append(VideoDevice(int(match.group(1)), path, name, driver, virtual, formats))
    return devices


def _natural(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class _V4L2FmtDesc(ctypes.Structure):
    _fields_ = [
        ("index", ctypes.c_uint32),
        ("type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("description", ctypes.c_char * 32),
        ("pixelformat", ctypes.c_uint32),
        ("mbus_code", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 3),
    ]


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord("V") << 8) | nr


class _V4L2FrmSizeEnum(ctypes.Structure):
    _fields_ = [
        ("index", ctypes.c_uint32),
        ("pixel_format", ctypes.c_uint32),
        ("type", ctypes.c_uint32),
        ("width", ctypes.c_uint32),  # discrete size; stepwise sizes use all six words
        ("height", ctypes.c_uint32),
        ("stepwise_rest", ctypes.c_uint32 * 4),
        ("reserved", ctypes.c_uint32 * 2),
    ]


_VIDIOC_ENUM_FMT = _iowr(2, ctypes.sizeof(_V4L2FmtDesc))
_VIDIOC_ENUM_FRAMESIZES = _iowr(74, ctypes.sizeof(_V4L2FrmSizeEnum))
_V4L2_FRMSIZE_TYPE_DISCRETE = 1


def _fourcc_text(code: int) -> str:
    return "".join(chr((code >> (8 * k)) & 0xFF) for k in range(4)).strip()


def _enum_sizes(fd: int, pixelformat: int, ioctl: object) -> list[str]:
    """The discrete frame sizes a format offers, largest first (``VIDIOC_ENUM_FRAMESIZES``)."""
    sizes: list[tuple[int, int]] = []
    for i in range(64):
        size = _V4L2FrmSizeEnum(index=i, pixel_format=pixelformat)
        try:
            ioctl(fd, _VIDIOC_ENUM_FRAMESIZES, size)  # type: ignore[operator]
        except OSError:
            break
        if size.type != _V4L2_FRMSIZE_TYPE_DISCRETE:
            break
        sizes.append((size.width, size.height))
    return [f"{w}x{h}" for w, h in sorted(set(sizes), reverse=True)]


def _enum_formats(path: str) -> list[str]:
    """What a capture device offers, e.g. ``["MJPG 1920x1080/1280x720", "YUYV 640x480"]``.

    Asked with ``VIDIOC_ENUM_FMT`` and ``VIDIOC_ENUM_FRAMESIZES``; empty if the device cannot be
    opened (busy, no permission) or asked.
    """
    try:
        import fcntl

        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except (ImportError, OSError):
        return []
    formats: list[str] = []
    try:
        for i in range(32):
            desc = _V4L2FmtDesc(index=i, type=1)  # V4L2_BUF_TYPE_VIDEO_CAPTURE
            try:
                fcntl.ioctl(fd, _VIDIOC_ENUM_FMT, desc)
            except OSError:
                break
            sizes = _enum_sizes(fd, desc.pixelformat, fcntl.ioctl)
            formats.append(_fourcc_text(desc.pixelformat) + (" " + "/".join(sizes) if sizes else ""))
    finally:
        os.close(fd)
    return formats


def probe_opencv(max_index: int = 5) -> list[VideoDevice]:
    """Cameras found by opening indices 0..max_index-1 with OpenCV (non-Linux)."""
    import cv2

    found = []
    for index in range(max_index):
        cap = cv2.VideoCapture(index)
        try:
            if cap.isOpened():
                w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
                h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
                found.append(VideoDevice(index, str(index), f"camera {index}", formats=[f"{w}x{h}"] if w else []))
        finally:
            cap.release()
    return found


def list_devices(*, platform: str | None = None) -> list[VideoDevice]:
    """All cameras and (on Linux) v4l2loopback virtual cameras on this machine.

    Args:
        platform: ``sys.platform`` to act as (tests); None = this machine's.
    """
    if (platform or sys.platform).startswith("linux"):
        return list_v4l2()
    return probe_opencv()
