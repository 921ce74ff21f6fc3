"""The ``--server`` URL of ``greencam start``: checked and normalised, one request to it, and one line for a failed
TLS handshake."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from greenscreen_cam.errors import ConfigError
from greenscreen_cam.link.protocol import LinkProtocolError, LinkTLSError, LinkUnreachableError

__all__ = ["base_url", "server_request", "tls_failure"]

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


async def server_request(
    url: str, method: str, path: str, *, timeout: float, cafile: Path | None = None, **kw: Any
) -> tuple[int, str, Any]:
    """One HTTP request to ``url + path``: ``(status, body text, headers)``; every failure as a LinkError.

    ``https`` URLs verify the server against the system's roots, or ``cafile`` when given.
    """
    import aiohttp

    tls: ssl.SSLContext | bool = False
    if url.startswith("https"):
        tls = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.request(method, url + path, ssl=tls, **kw) as resp,
        ):
            text = await resp.text(errors="replace")
            return resp.status, text, resp.headers
    except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as e:
        raise LinkTLSError(tls_failure(url, e)) from None
    except aiohttp.ClientConnectorError as e:
        raise LinkUnreachableError(f"cannot reach {url}: {e.os_error or e}; is greencam serve running?") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as e:
        hint = " (a plain-http client on an https port?)" if url.startswith("http:") else ""
        raise LinkProtocolError(f"{url} gave no valid HTTP answer{hint}: {e}") from None
    except TimeoutError:
        raise LinkUnreachableError(f"{url} did not answer within {timeout:g} s") from None
    except aiohttp.ClientError as e:
        raise LinkUnreachableError(f"cannot talk to {url}: {e}") from None
