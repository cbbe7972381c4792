"""Observed vendor latency and the adaptive per-request timeout (issue #15).

The HTTP layer records how long each *answered* request to a vendor took (a request that
timed out tells nothing about how long an answer takes, so it is not recorded) in a
:class:`LatencyTracker` per vendor per process. A voice tool asks
:func:`adaptive_timeout` for the vendor's request timeout: a high percentile of the
recent answers times a factor, clamped between a floor and ``SERVICE_TIMEOUT``; with too
little history it is ``SERVICE_TIMEOUT`` itself. The tool publishes it in
:data:`REQUEST_LIMIT` and the HTTP layer cuts each request to it.

Kept free of imports, like :mod:`src.attempt`, so the HTTP layer can use it without
loading LiveKit.
"""

from __future__ import annotations

import math
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = [
    "REQUEST_LIMIT",
    "AdaptiveTimeout",
    "LatencyTracker",
    "adaptive_timeout",
    "observe",
    "reset_trackers",
    "tracker",
]

REQUEST_LIMIT: ContextVar[float | None] = ContextVar("adaptive_request_limit", default=None)
"""Seconds one request of the running tool may take (``None``: the client's own)."""


class LatencyTracker:
    """The last ``size`` answer times of one vendor, in seconds."""

    def __init__(self, size: int = 200) -> None:
        self._seen: deque[float] = deque(maxlen=size)

    def observe(self, seconds: float) -> None:
        if math.isfinite(seconds) and seconds >= 0:
            self._seen.append(seconds)

    def __len__(self) -> int:
        return len(self._seen)

    def percentile(self, q: float) -> float:
        """The ``q`` quantile (0-1, nearest rank) of what was seen; 0 with no data."""
        if not self._seen:
            return 0.0
        ordered = sorted(self._seen)
        rank = max(1, math.ceil(q * len(ordered)))
        return ordered[rank - 1]


@dataclass(frozen=True)
class AdaptiveTimeout:
    """How a vendor's request timeout follows its latency.

    Attributes:
        percentile: quantile of recent answer times (0.99).
        factor: multiplier on it (3.0).
        floor: never below this, seconds (1.0).
        min_samples: answers needed before adapting; fewer: the ceiling (20).
    """

    percentile: float = 0.99
    factor: float = 3.0
    floor: float = 1.0
    min_samples: int = 20

    def __post_init__(self) -> None:
        if not 0 < self.percentile <= 1:
            raise ValueError("percentile must be in (0, 1]")
        if self.factor < 1 or self.floor <= 0 or self.min_samples < 1:
            raise ValueError("need factor >= 1, floor > 0, min_samples >= 1")


_TRACKERS: dict[str, LatencyTracker] = {}


def tracker(service: str) -> LatencyTracker:
    """The process's tracker for ``service``."""
    found = _TRACKERS.get(service)
    if found is None:
        found = _TRACKERS[service] = LatencyTracker()
    return found


def observe(service: str, seconds: float) -> None:
    """Record one answered request of ``service``."""
    tracker(service).observe(seconds)


def adaptive_timeout(service: str, rule: AdaptiveTimeout, ceiling: float) -> float:
    """``service``'s request timeout now: ``percentile x factor`` of its recent answers
    within ``[floor, ceiling]``; ``ceiling`` until ``min_samples`` answers were seen."""
    seen = tracker(service)
    if len(seen) < rule.min_samples:
        return ceiling
    return max(
        min(rule.floor, ceiling), min(ceiling, seen.percentile(rule.percentile) * rule.factor)
    )


def reset_trackers() -> None:
    """Forget every vendor's history (tests: a fresh process)."""
    _TRACKERS.clear()
