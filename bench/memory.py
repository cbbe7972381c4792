"""Measurement 5: memory per agent instance and per 1,000 ``CircuitBreaker`` objects.

Every conversation builds an agent with its own breakers, so their footprint is paid once
per conversation in progress. Measured with tracemalloc: bytes allocated and still alive
after building them.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

from src.agent import PandaDocTrialistAgent
from src.error_recovery import CircuitBreaker
from src.services.wiring import TrialistServices
from src.settings import Settings

AGENTS = 50  # instances for the memory figure
BREAKERS = 1_000


def _grown(make: Callable[[], Any]) -> tuple[Any, int]:
    """Bytes allocated and still alive after ``make()``, tracemalloc's own excluded."""
    own = [tracemalloc.Filter(False, tracemalloc.__file__)]
    gc.collect()
    before = tracemalloc.take_snapshot().filter_traces(own)
    kept = make()
    gc.collect()
    after = tracemalloc.take_snapshot().filter_traces(own)
    return kept, sum(s.size_diff for s in after.compare_to(before, "filename"))


def bench_memory() -> dict[str, Any]:
    """One row: bytes per agent (its 4 breakers included) and per 1,000 breakers."""
    settings = Settings()
    PandaDocTrialistAgent(TrialistServices(), settings)  # warm caches (tool discovery etc.)
    tracemalloc.start()
    agents, agent_bytes = _grown(
        lambda: [PandaDocTrialistAgent(TrialistServices(), settings) for _ in range(AGENTS)]
    )
    breakers, breaker_bytes = _grown(
        lambda: [CircuitBreaker(name=f"svc{i}") for i in range(BREAKERS)]
    )
    tracemalloc.stop()
    per_agent = agent_bytes / AGENTS
    per_1000 = breaker_bytes * 1000 / BREAKERS
    del agents, breakers
    return {
        "agents_measured": AGENTS,
        "bytes_per_agent": round(per_agent),
        "bytes_per_1000_breakers": round(per_1000),
        "note": "agent without vendor clients (services None): agent + its 4 breakers",
    }
