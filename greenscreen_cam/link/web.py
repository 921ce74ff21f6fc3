"""Browser pages of ``greencam serve`` (capture page, OBS viewer). Filled in by the web-page work."""

from __future__ import annotations

from typing import Any


def add_routes(app: Any, server: Any) -> None:
    """Add the browser pages' routes to the server's aiohttp application (none yet)."""
