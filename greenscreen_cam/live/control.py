"""A local control channel: change a running camera without restarting it (``greencam ctl``).

A running ``greencam start`` listens on a Unix socket in the user's runtime folder
(``$XDG_RUNTIME_DIR/greencam/control.sock``, else ``/tmp/greencam-<uid>/control.sock``): the
folder is the user's alone (mode 0700) and the socket is owner-only (0600). Nothing listens on
the network.

The protocol is one request line and one answer line per connection, both JSON:

- request: ``{"argv": ["background", "blur:30"]}`` (the words after ``greencam ctl``);
- answer: ``{"ok": true, "message": "background = blur:30"}``, plus ``"status": {...}`` for
  ``status``.

Commands (see :data:`COMMANDS`): ``status``, ``reselect``, ``pause``, ``resume``, ``quit``,
``set NAME VALUE`` and the shorthand ``NAME VALUE`` for any setting that can change mid-run
(:data:`LIVE_SETTINGS`: the keying options and the background). Any other setting gets one line
saying that it needs a restart.

Hostile input never stops the camera: the server runs on its own thread, reads at most
:data:`MAX_REQUEST` bytes per request with a per-connection deadline, answers anything
malformed with an error line, and a failure of one request never reaches the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from greenscreen_cam.errors import ConfigError, ControlError, GreencamError

__all__ = [
    "COMMANDS",
    "LIVE_SETTINGS",
    "MAX_REQUEST",
    "ControlServer",
    "ControlTarget",
    "Dispatcher",
    "PipelineControl",
    "Reply",
    "send",
    "socket_path",
]

MAX_REQUEST = 4096
"""Longest request line accepted, in bytes."""

REQUEST_TIMEOUT = 1.0
"""Seconds a client has to send its request line."""

LIVE_SETTINGS = (
    "background",
    "color",
    "threshold",
    "feather",
    "grow",
    "shrink",
    "max_hole",
    "min_island",
    "refine",
    "smooth",
    "despill",
    "mirror",
)
"""Settings a running camera accepts (``greencam ctl NAME VALUE``); every other one needs a restart."""

COMMANDS = {
    "status": "print the camera's state (--json for all of it)",
    "reselect": "select the subject again on the next frame",
    "pause": "freeze the output on its last frame (the tracker stops)",
    "resume": "undo pause",
    "quit": "stop greencam cleanly",
    "set NAME VALUE": "change a setting mid-run (also NAME VALUE, e.g. background blur:30)",
}


def socket_path(runtime_dir: str | None = None) -> Path:
    """Where the control socket lives: ``$XDG_RUNTIME_DIR/greencam/control.sock`` or a private /tmp folder."""
    base = runtime_dir if runtime_dir is not None else os.environ.get("XDG_RUNTIME_DIR", "")
    if base and os.path.isabs(base) and os.path.isdir(base):
        return Path(base) / "greencam" / "control.sock"
    return Path(tempfile.gettempdir()) / f"greencam-{os.getuid()}" / "control.sock"


@dataclass
class Reply:
    """One answer: ``ok`` and a one-line ``message``, with the status dict for ``status``."""

    ok: bool
    message: str
    status: dict[str, Any] | None = None

    def to_line(self) -> bytes:
        data: dict[str, Any] = {"ok": self.ok, "message": self.message}
        if self.status is not None:
            data["status"] = self.status
        return (json.dumps(data, default=str) + "\n").encode()


class ControlTarget(Protocol):
    """What a running camera offers the control channel (all calls come from the control thread)."""

    def apply_settings(self, changes: dict[str, Any]) -> None:
        """Use these (already checked) setting values from the next frame on."""

    def reselect(self) -> None: ...

    def set_paused(self, paused: bool) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def quit(self) -> None: ...


def _parse_value(current: Any, text: str, name: str) -> Any:
    """``text`` as the type of the setting's current value."""
    if isinstance(current, bool):
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} takes on or off, got {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{name} takes a whole number, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{name} takes a number, got {text!r}") from None
    return text


class Dispatcher:
    """Turns a request's words into calls on a :class:`ControlTarget`, checking settings first.

    Args:
        target: The running camera.
        settings: Its current settings (a dataclass such as :class:`greenscreen_cam.config.Settings`);
            a changed copy replaces it after every accepted change.
        check: Extra check of a changed settings object (e.g. that a background file opens);
            raises :class:`GreencamError` to refuse.
    """

    def __init__(self, target: ControlTarget, settings: Any, check: Callable[[Any], None] | None = None) -> None:
        self.target = target
        self.settings = settings
        self.check = check
        self._names = {f.name for f in dataclasses.fields(settings)}

    def __call__(self, argv: Sequence[str]) -> Reply:
        try:
            return self._dispatch(list(argv))
        except GreencamError as e:
            return Reply(False, str(e))

    def _dispatch(self, argv: list[str]) -> Reply:
        if not argv:
            return Reply(False, f"no command; try one of: {', '.join(c.split()[0] for c in COMMANDS)}")
        cmd, args = argv[0].strip().lower().replace("-", "_"), argv[1:]
        if cmd == "status":
            status = dict(self.target.status())
            audio = status.get("audio_delay_ms")
            sound = f"greencam Microphone delayed {audio:.0f} ms" if audio is not None else "microphone not delayed"
            return Reply(True, f"{status.get('state', 'running')}; {sound}", status)
        if cmd in ("reselect", "pause", "resume", "quit"):
            if args:
                return Reply(False, f"{cmd} takes no value")
            if cmd == "reselect":
                self.target.reselect()
                return Reply(True, "re-selecting the subject on the next frame")
            if cmd in ("pause", "resume"):
                self.target.set_paused(cmd == "pause")
                return Reply(True, "paused" if cmd == "pause" else "resumed")
            self.target.quit()
            return Reply(True, "stopping")
        if cmd == "set":
            if len(args) != 2:
                return Reply(False, "set takes a setting and a value, e.g. set feather 4")
            cmd, args = args[0].strip().lower().replace("-", "_"), args[1:]
        if cmd in LIVE_SETTINGS:
            if len(args) != 1:
                return Reply(False, f"{cmd} takes one value, e.g. greencam ctl {cmd.replace('_', '-')} VALUE")
            return self._set(cmd, args[0])
        if cmd in self._names:
            return Reply(False, f"{cmd.replace('_', '-')} cannot change while greencam runs; it needs a restart")
        return Reply(False, f"unknown command {cmd[:40]!r}; try: {', '.join(c.split()[0] for c in COMMANDS)}")

    def _set(self, name: str, text: str) -> Reply:
        value = _parse_value(getattr(self.settings, name), text, name.replace("_", "-"))
        changed = dataclasses.replace(self.settings, **{name: value})
        changed.validate()
        if self.check is not None:
            self.check(changed)
        self.target.apply_settings({name: value})
        self.settings = changed
        return Reply(True, f"{name.replace('_', '-')} = {value}")


class PipelineControl:
    """The :class:`ControlTarget` of a running :class:`greenscreen_cam.live.pipeline.Pipeline`.

    Changes are handed to the pipeline's own thread (``pipeline.call_soon``) and applied between
    two frames, so the compositor is never changed while it keys a frame.

    Args:
        pipeline: The running pipeline.
        make_background: ``(spec, rgb) -> Background`` (:func:`greenscreen_cam.key.compositor.make_background`).
    """

    def __init__(self, pipeline: Any, make_background: Callable[[str, tuple[int, int, int]], Any]) -> None:
        self.pipeline = pipeline
        self.make_background = make_background

    def apply_settings(self, changes: dict[str, Any]) -> None:
        comp = self.pipeline.compositor
        new = dataclasses.replace(comp.settings, **changes)
        background = None
        if "background" in changes or ("color" in changes and getattr(new, "background", "key") == "key"):
            background = self.make_background(getattr(new, "background", "key"), new.rgb)  # opened here: errors answer

        def apply() -> None:
            # From the settings in force now: changes queued before this one have been applied.
            old = comp.configure(dataclasses.replace(comp.settings, **changes), background)
            if old is not None:
                old.close()

        self.pipeline.call_soon(apply)

    def reselect(self) -> None:
        self.pipeline.reselect(getattr(self.pipeline, "initial_prompt", None))

    def set_paused(self, paused: bool) -> None:
        self.pipeline.call_soon(lambda: self.pipeline.set_paused(paused))

    def status(self) -> dict[str, Any]:
        snap = dict(self.pipeline.stats.snapshot())
        snap["state"] = "paused" if self.pipeline.paused else str(snap.get("subject", "running"))
        snap["settings"] = {name: getattr(self.pipeline.compositor.settings, name, None) for name in LIVE_SETTINGS}
        return snap

    def quit(self) -> None:
        self.pipeline.stop()


def _private_folder(folder: Path) -> None:
    """Create ``folder`` 0700 (or check an existing one is ours and private)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid():
        raise ControlError(f"control folder {folder} belongs to another user; remove it or set XDG_RUNTIME_DIR")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(folder, 0o700)


class ControlServer:
    """Serve a :class:`Dispatcher` on a Unix socket, on a background thread.

    Args:
        handler: Request words -> :class:`Reply` (usually a :class:`Dispatcher`).
        path: Socket path (default :func:`socket_path`).

    Counters for tests and the status: ``served`` (requests answered), ``rejected``
    (malformed, oversized or late requests).
    """

    def __init__(self, handler: Callable[[Sequence[str]], Reply], path: Path | None = None) -> None:
        self.handler = handler
        self.path = Path(path) if path is not None else socket_path()
        self.served = 0
        self.rejected = 0
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ControlServer:
        _private_folder(self.path.parent)
        if self.path.exists() or self.path.is_symlink():
            if _alive(self.path):
                raise ControlError(f"another greencam is already running (control socket {self.path})")
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        except OSError as e:
            sock.close()
            raise ControlError(f"cannot open the control socket {self.path}: {e.strerror or e}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="greencam-control", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.05)
                continue
            try:
                self._answer(conn)
            except Exception:  # noqa: BLE001 - one bad client never ends the channel
                self.rejected += 1
            finally:
                conn.close()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(REQUEST_TIMEOUT)
        deadline = time.monotonic() + REQUEST_TIMEOUT
        data = b""
        while b"\n" not in data and len(data) <= MAX_REQUEST:
            if time.monotonic() > deadline:
                break
            try:
                chunk = conn.recv(MAX_REQUEST + 1 - len(data))
            except (TimeoutError, OSError):
                break
            if not chunk:
                break
            data += chunk
        line, newline, _ = data.partition(b"\n")
        if len(line) > MAX_REQUEST:
            reply = Reply(False, f"request too long (more than {MAX_REQUEST} bytes)")
        elif not newline and not line:
            self.rejected += 1
            return
        else:
            reply = self._reply_to(line)
        if not reply.ok and reply.message.startswith(("request", "malformed")):
            self.rejected += 1
        try:
            conn.sendall(reply.to_line())
        except OSError:
            return
        self.served += 1

    def _reply_to(self, line: bytes) -> Reply:
        try:
            request = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return Reply(False, 'malformed request: expected one JSON line like {"argv": ["status"]}')
        argv = request.get("argv") if isinstance(request, dict) else None
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv) or len(argv) > 8:
            return Reply(False, "malformed request: argv must be a list of at most 8 strings")
        try:
            return self.handler(argv)
        except Exception as e:  # noqa: BLE001 - a failing command answers, it does not stop the camera
            return Reply(False, f"command failed: {type(e).__name__}: {e}"[:300])

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _alive(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(str(path))
        return True
    except OSError:
        return False


def send(argv: Sequence[str], path: Path | None = None, timeout: float = 3.0) -> dict[str, Any]:
    """Send one command to the running greencam; its JSON answer.

    Raises:
        ControlError: No greencam listens at the socket, or it answered nothing usable.
    """
    where = Path(path) if path is not None else socket_path()
    if not where.exists():
        raise ControlError(
            f"no running greencam to control (no control socket at {where}); start one with greencam start"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(where))
        except OSError:
            raise ControlError(
                f"no running greencam answers at {where} (a stale socket); start one with greencam start"
            ) from None
        try:
            s.sendall((json.dumps({"argv": list(argv)}) + "\n").encode())
            data = b""
            while not data.endswith(b"\n") and len(data) < 1 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            raise ControlError(f"the running greencam did not answer: {e}") from None
    try:
        answer = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ControlError("the running greencam answered something unreadable") from None
    if not isinstance(answer, dict) or "ok" not in answer:
        raise ControlError("the running greencam answered something unreadable")
    return answer
