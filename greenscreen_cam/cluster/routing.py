"""Placement rules of the cluster, as plain functions (no Ray here, so they are tested on their own).

A session id names the replica that holds it: ``<replica>.<key>``, where ``<replica>``
is Serve's unique id of the replica (letters and digits) and ``<key>`` the session's
own random id (URL-safe base64, never a dot). Every request about an existing session
(``DELETE``, a viewer's ``WHEP`` offer) is routed to that replica; a new session goes to
the least-loaded replica by the load each replica publishes (:class:`Load`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field


def session_id(replica: str, key: str) -> str:
    """The cluster-wide id of session ``key`` held by ``replica``."""
    if not replica or "." in replica:
        raise ValueError(f"not a replica id: {replica!r}")
    return f"{replica}.{key}"


def owner_of(sid: str) -> str | None:
    """The replica that holds session ``sid`` (None: the id names no replica)."""
    replica, dot, key = sid.partition(".")
    if not dot or not replica or not key:
        return None
    return replica


@dataclass
class Load:
    """What one replica publishes about itself (its routing and autoscaling statistics).

    Attributes:
        sessions: Sessions it holds now.
        max_sessions: Most sessions it admits (``--max-sessions``).
        step_ms: Measured wall time of one worker step per batch size, in milliseconds.
        draining: It is being removed: it takes no new session and keeps the ones it has.
    """

    sessions: int = 0
    max_sessions: int = 1
    step_ms: dict[int, float] = field(default_factory=dict)
    draining: bool = False

    @property
    def free(self) -> int:
        """Sessions it can still take (0 while draining)."""
        return 0 if self.draining else max(0, self.max_sessions - self.sessions)

    def step_with(self, sessions: int) -> float:
        """Predicted step time (ms) with ``sessions`` sessions; 0.0 when nothing was measured."""
        if not self.step_ms or sessions < 1:
            return 0.0
        if sessions in self.step_ms:
            return self.step_ms[sessions]
        n = max((k for k in self.step_ms if k <= sessions), default=min(self.step_ms))
        return self.step_ms[n] * sessions / n

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["step_ms"] = {str(k): round(v, 1) for k, v in sorted(self.step_ms.items())}
        d["free"] = self.free
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, object] | None) -> Load | None:
        """The load in a replica's published statistics (None when it published none yet)."""
        if not d or "sessions" not in d:
            return None
        steps = d.get("step_ms") or {}
        assert isinstance(steps, Mapping)
        return cls(
            sessions=int(d["sessions"]),  # type: ignore[call-overload]
            max_sessions=int(d.get("max_sessions", 1)),  # type: ignore[call-overload]
            step_ms={int(k): float(v) for k, v in steps.items()},
            draining=bool(d.get("draining", False)),
        )


def rank_for_new_session(loads: Mapping[str, Load | None], pending: Mapping[str, int] | None = None) -> list[str]:
    """Replicas in the order a new session should try them: the least loaded first.

    Args:
        loads: Each replica's published load; None for a replica that published nothing
            yet (a fresh one: treated as empty).
        pending: Sessions sent to a replica since its last published load (they are not
            in ``loads`` yet), so a burst of offers spreads instead of piling onto one.

    Returns:
        Replicas with a free slot, fewest sessions (as a share of capacity) first, then
        the shortest predicted step; replicas without a free slot come last (they will
        answer 503 themselves, which is right only when every replica is full).
    """
    pending = pending or {}

    def key(rid: str) -> tuple[int, float, float, str]:
        load = loads[rid] or Load(sessions=0, max_sessions=1_000_000)
        n = load.sessions + pending.get(rid, 0)
        full = 1 if load.draining or n >= load.max_sessions else 0
        return (full, n / max(1, load.max_sessions), load.step_with(n + 1), rid)

    return sorted(loads, key=key)


def desired_replicas(
    sessions: Mapping[str, float], capacity: int, *, current: int, min_replicas: int, max_replicas: int
) -> int:
    """How many replicas the sessions need: all of them fit, with one free slot to take the next camera.

    Args:
        sessions: Sessions per running replica (their published statistics).
        capacity: Sessions one replica holds (``--max-sessions``).
        current: Replicas running now (used when no replica published anything yet).
        min_replicas: Fewest replicas (``--min-replicas``).
        max_replicas: Most replicas (``--max-replicas``).
    """
    if not sessions:
        return max(min_replicas, min(current, max_replicas))
    total = sum(sessions.values())
    need = math.ceil((total + 1) / max(1, capacity))
    return max(min_replicas, min(max_replicas, need))
