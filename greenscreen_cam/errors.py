"""Domain errors for greencam.

Every error a user can cause (bad flag, missing file, no device) is a
:class:`GreencamError` subclass whose message is one actionable line. The CLI
catches the base class once, prints the message to stderr and exits with the
class's ``exit_code``; nothing below the CLI prints or exits.
"""

from __future__ import annotations


class GreencamError(Exception):
    """Base class: a problem the user can fix, described in one line."""

    exit_code = 1


class ConfigError(GreencamError):
    """A malformed option value or configuration file."""

    exit_code = 2


class PromptError(GreencamError):
    """A malformed or out-of-frame ``--bbox`` / ``--point``."""

    exit_code = 2


class CheckpointError(GreencamError):
    """A missing, corrupt or mismatched SAM 2 checkpoint."""

    exit_code = 3


class DownloadError(GreencamError):
    """A checkpoint download that failed or did not verify."""

    exit_code = 3


class SourceError(GreencamError):
    """A camera, video file or image folder that cannot be read."""

    exit_code = 4


class CameraLostError(SourceError):
    """A live camera that stopped delivering frames mid-stream."""


class SinkError(GreencamError):
    """An output (virtual camera, file, preview window) that cannot be opened."""

    exit_code = 5


class VirtualCameraError(SinkError):
    """No usable virtual camera device."""


class OutputExistsError(SinkError):
    """An output file or matte folder that already holds something, or that would overwrite the source."""


class TrackerError(GreencamError):
    """The tracker failed while running (a bug or a device fault), reported in one line."""

    exit_code = 7


class TrackerBackendError(GreencamError):
    """No tracker backend could load the model; the message says why each candidate failed.

    Its ``exit_code`` is the candidates' own when they agree (e.g. 3 when every one lacked its checkpoint).
    """

    exit_code = 7


class EngineError(GreencamError):
    """The tracker engine asked for cannot run here (``--engine openvino`` without OpenVINO installed)."""

    exit_code = 6


class AudioError(GreencamError):
    """The sound server, or the microphone to delay, cannot be used (never fatal to the camera)."""

    exit_code = 6


class DeviceError(GreencamError):
    """A compute device (cuda, mps) that is not available."""

    exit_code = 6


class LinkError(GreencamError):
    """The link to a ``greencam serve`` server failed in a way retrying will not fix."""

    exit_code = 8


class LinkUnreachableError(LinkError):
    """No server answers at the URL (refused, unknown host, timeout)."""


class LinkAuthError(LinkError):
    """The server refused the token (401)."""


class LinkFullError(LinkError):
    """The server has no room for another session (503)."""


class LinkTLSError(LinkError):
    """The TLS handshake failed (untrusted or mismatched certificate, or plain HTTP on a TLS port)."""


class LinkProtocolError(LinkError):
    """The server answered something that is not a greencam answer (bad status, SDP or message)."""


class ServeRequestError(LinkError):
    """A request ``greencam serve`` refuses; each subclass names the answer the HTTP adapter maps it to.

    The session operations raise these without knowing HTTP, so any front end (aiohttp, an ASGI
    ingress) maps them the same way: see ``greenscreen_cam.link.http``.
    """


class ServeBadRequest(ServeRequestError):
    """A malformed request or SDP offer (HTTP 400)."""


class ServeUnauthorized(ServeRequestError):
    """No token, or a wrong one (HTTP 401)."""


class ServeNotFound(ServeRequestError):
    """No such session, viewer or file (HTTP 404)."""


class ServeTooLarge(ServeRequestError):
    """A request body over the limit (HTTP 413)."""


class ServeUnsupportedType(ServeRequestError):
    """A body of the wrong content type (HTTP 415)."""


class ServeBusy(ServeRequestError):
    """No room for another session or viewer now (HTTP 503)."""


class OfferError(ServeBadRequest):
    """An SDP offer that cannot be answered (HTTP 400); the message is one line, safe to log and send back."""


class ClusterError(GreencamError):
    """``serve --ray``: Ray Serve is missing, the cluster cannot be reached, or the application did not deploy."""

    exit_code = 9


class ServiceError(GreencamError):
    """The login service (``greencam service``) cannot be installed or removed here."""

    exit_code = 1


class ControlError(GreencamError):
    """The control channel (``greencam ctl``) cannot be reached or opened."""

    exit_code = 10
