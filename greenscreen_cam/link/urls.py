"""The ``--server`` URL of ``greencam start``: checked and normalised, and one line for a failed TLS handshake."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from greenscreen_cam.errors import ConfigError

__all__ = ["base_url", "tls_failure"]

_HOST = re.compile(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]+(%[A-Za-z0-9._-]+)?")
"""A host name, an IPv4 address or an IPv6 address (urlsplit drops its brackets)."""


def tls_failure(url: str, error: Exception) -> str:
    """One line for a failed TLS handshake with ``url`` (aiohttp's own text names an ``<ssl.SSLContext …>``)."""
    cause = getattr(error, "os_error", None) or getattr(error, "certificate_error", None) or error
    reason = getattr(cause, "reason", None) or getattr(cause, "verify_message", None) or str(cause)
    if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"):
        plain = "http://" + url.split("://", 1)[-1]
        return f"TLS to {url} failed: the server speaks plain HTTP there; use {plain}"
    return f"TLS to {url} failed: {reason}; check the certificate (--cafile)"


def base_url(url: str) -> str:
    """Normalise ``URL`` (``http(s)://host[:port]`` or ``host:port``) to a base URL without a trailing slash."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or not _HOST.fullmatch(parts.hostname):
        raise ConfigError(f"--server {url!r} is not an http(s)://host:port URL")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigError(f"--server {url!r} has an invalid port") from None
    path = parts.path.rstrip("/")
    if path.endswith("/whip"):
        path = path[: -len("/whip")]
    return f"{parts.scheme}://{parts.netloc}{path}"
