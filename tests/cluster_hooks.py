"""Set-up hooks that the Ray replicas of the cluster tests run first (``GREENCAM_RAY_SETUP``)."""

from __future__ import annotations


def loopback_ice() -> None:
    """Keep WebRTC media on 127.0.0.1 (aioice leaves loopback out of its host candidates)."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
