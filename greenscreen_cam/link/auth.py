"""Requests: one bearer parser, one redactor, one escaper, and the status of each domain error.

Everything a request can influence (its path, headers, an error from the HTTP parser) passes
:func:`escape` before it reaches a log line or the terminal, so a request cannot forge a log line
or send terminal escapes; every log line passes :meth:`Redactor.redact`, so the server token, a
TURN password or a ``?token=`` in a URL never appears in full.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable

from greenscreen_cam import errors

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_TOKEN_PARAM = re.compile(r"(?i)((?:^|[?&;\s/'\"])(?:token|secret|password|credential)=)[^&\s'\"#]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",]+")
MASK = "***"
MAX_LOGGED = 300
"""Characters of request-controlled text kept in one log line (the rest is cut)."""


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header value; None when there is none.

    Example:
        >>> bearer_token("Bearer abc "), bearer_token("bearer  abc"), bearer_token("Basic x"), bearer_token(None)
        ('abc', 'abc', None, None)
    """
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


def media_type(header: str | None, default: str = "") -> str:
    """The media type of a ``Content-Type`` header value, without parameters, lower case (``default`` when absent).

    Example:
        >>> media_type("Application/SDP; charset=utf-8"), media_type(None, "application/octet-stream")
        ('application/sdp', 'application/octet-stream')
    """
    return (header or default).split(";")[0].strip().lower()


def bearer_header(token: str) -> dict[str, str]:
    """The ``Authorization`` header that carries ``token``."""
    return {"Authorization": f"Bearer {token}"}


def same_token(given: str | None, expected: str | None) -> bool:
    """True when both are set and equal (constant-time comparison)."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8", "replace"))


def escape(text: object, limit: int = MAX_LOGGED) -> str:
    r"""``text`` with every control character (newlines, ESC, NUL, C1) written as ``\xNN``, cut at ``limit``.

    Example:
        >>> escape("a\x1b[2J\nb")
        'a\\x1b[2J\\x0ab'
    """
    s = str(text)
    cut = len(s) > limit
    s = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else "\\u2028", s[:limit])
    return s + "…" if cut else s


class Redactor:
    """Removes secrets from log lines: the known ones verbatim, and anything that looks like one.

    Args:
        secrets: Strings never to show (the server token, TURN password); empty ones are ignored.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: list[str] = []
        for s in secrets:
            self.add(s)

    def add(self, secret: str | None) -> None:
        """Also hide ``secret`` from now on."""
        if secret and secret not in self._secrets:
            self._secrets.append(secret)
            self._secrets.sort(key=len, reverse=True)

    def redact(self, line: str) -> str:
        """``line`` with every secret, ``token=...`` parameter and ``Bearer ...`` value replaced by ``***``."""
        for s in self._secrets:
            line = line.replace(s, MASK)
        line = _TOKEN_PARAM.sub(lambda m: m.group(1) + MASK, line)
        return _BEARER.sub(lambda m: m.group(1) + MASK, line)

    def clean(self, line: str) -> str:
        """Escape, then redact: what every log line of the server goes through."""
        return self.redact(escape(line, limit=4 * MAX_LOGGED))


STATUS: dict[type[Exception], int] = {
    errors.ServeBadRequest: 400,
    errors.LinkProtocolError: 400,
    errors.PromptError: 400,
    errors.ServeUnauthorized: 401,
    errors.ServeNotFound: 404,
    errors.ServeTooLarge: 413,
    errors.ServeUnsupportedType: 415,
    errors.ServeBusy: 503,
}
"""Domain error -> HTTP status, for every front end (the first matching class in the error's MRO)."""


def status_of(error: Exception) -> int:
    """The HTTP status of a domain error (500 for anything unexpected)."""
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400 if isinstance(error, errors.ServeRequestError) else 500
