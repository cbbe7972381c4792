"""Helpers every measurement shares: the timing loop, the protected coroutine, the report.

They live apart from the measurements so that each ``bench/<measurement>.py`` holds only
what it measures, and so that all timed cases go through the same loop (same warm-up,
same rounds, same median) and stay comparable with one another.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import platform
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from src.error_recovery import CircuitBreaker, ErrorRecoveryMixin
from src.sandbox.data import TRIAL_USERS

EMAIL = TRIAL_USERS[0].email
CALLS = 20_000  # calls per timed run (overhead)
FAST_CALLS = 5_000  # calls per timed run (slow wrappers and fail-fast)
RUNS = 9  # timed rounds; the median is reported

Factory = Callable[[], Awaitable[Any]]


async def work() -> int:
    """The protected coroutine: returns at once, so only the wrapper's cost is measured."""
    return 1


class BenchAgent(ErrorRecoveryMixin):
    """The mixin on its own, with one breaker: our wrapper without a LiveKit agent around it,
    so the overhead and fail-fast figures measure the layer and nothing else."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.circuit_breakers = {"svc": breaker}
        self.error_rng = random.Random(1)


async def time_cases(cases: list[tuple[Callable[[], Factory], int]]) -> list[float]:
    """Median ns per call for each ``(make, calls)``: ``RUNS`` rounds, each timing
    ``calls`` awaits of a fresh ``make()`` per case after 200 warm-up calls. Cases are
    interleaved round by round so machine drift affects them all alike."""
    per_call: list[list[float]] = [[] for _ in cases]
    for _ in range(RUNS):
        for i, (make, calls) in enumerate(cases):
            call = make()
            for _ in range(200):  # warm-up (fail-fast cases: opens the circuit)
                await call()
            gc.collect()
            start = time.perf_counter_ns()
            for _ in range(calls):
                await call()
            per_call[i].append((time.perf_counter_ns() - start) / calls)
    return [statistics.median(runs) for runs in per_call]


def swallow(factory: Factory, *errors: type[BaseException]) -> Factory:
    """Wrap ``factory`` so the given errors return ``None``: peers signal an open circuit by
    raising, and the timing loop must keep calling through those rejections."""

    async def call() -> Any:
        try:
            return await factory()
        except errors:
            return None

    return call


def machine() -> dict[str, Any]:
    """CPU model, cores, Python and date, stored with the results: the figures mean little
    without the machine that produced them."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def table(title: str, rows: list[dict[str, Any]]) -> str:
    """A Markdown table of ``rows`` (columns from the first row's keys), ready to paste into
    the README."""
    if not rows:
        return f"\n{title}\n(no rows)\n"
    keys = list(rows[0])
    cells = [[str(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = "| " + " | ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) + " |"
        for cell in cells
    ]
    return "\n".join([f"\n### {title}\n", line, sep, *body])
