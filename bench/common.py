"""Helpers every measurement shares: the run budget, production-like logging, the timing
loop, the measurement interface and the Markdown table.

They live apart from the measurements so that each ``bench/<measurement>.py`` holds only
what it measures, and so that all timed cases go through the same loop (same warm-up,
same rounds, same median) and stay comparable with one another.

A measurement module exposes ``async def measure(budget: Budget) -> Report``; ``run.py``
keeps the list of them.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import platform
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from src.error_recovery import CircuitBreaker, ErrorRecoveryMixin
from src.redaction import install_redaction
from src.sandbox.data import TRIAL_USERS

EMAIL = TRIAL_USERS[0].email

Factory = Callable[[], Awaitable[Any]]
Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Budget:
    """How much each measurement does. ``quick`` is the ``--quick`` mode (< 60 s): fewer
    calls, and the slowest wall-clock cases left out (each module says which)."""

    quick: bool = False
    rounds: int = 8  # timed rounds per case, interleaved across the cases of one table
    calls_per_round: int = 5_000  # the same for every case of a table
    warmup: int = 200

    @classmethod
    def for_mode(cls, quick: bool) -> Budget:
        return cls(quick=True, rounds=3, calls_per_round=300, warmup=50) if quick else cls()

    @property
    def calls(self) -> int:
        return self.rounds * self.calls_per_round


@dataclass
class Report:
    """What one measurement hands back: ``data`` goes to ``results.json`` under ``key``;
    ``tables`` (title, rows) are printed as Markdown; ``extra`` holds top-level keys of
    ``results.json`` (e.g. ``full_stack_vs_peer_stack``)."""

    key: str
    data: Any
    tables: list[tuple[str, Rows]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


async def work() -> int:
    """The protected coroutine: returns at once, so only the wrapper's cost is measured."""
    return 1


class BenchAgent(ErrorRecoveryMixin):
    """The mixin on its own, with one breaker: our layer without a LiveKit agent, a tool
    body or a session state around it (the layer-breakdown rows)."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.circuit_breakers = {"svc": breaker}
        self.error_rng = random.Random(1)


def production_logging() -> Path:
    """Logging as a worker runs it: root at INFO, one ``StreamHandler`` writing formatted
    records to a real file (``os.devnull``), the redaction filter installed as
    ``entrypoint`` does. Every record our code emits is filtered, formatted and written.
    Returns the path written to. (LiveKit's job process forwards records to the parent
    over IPC instead; that extra cost is not included.)"""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    install_redaction()
    return Path(os.devnull)


@dataclass(frozen=True)
class Timing:
    """One timed case: median ns per call over all rounds, and over the early and the late
    half of the rounds, so a cost that grows with the number of calls shows as
    ``growth`` > 1 (medians of halves, so one disturbed round does not fake it)."""

    median_ns: float
    early_ns: float
    late_ns: float

    @property
    def growth(self) -> float:
        return self.late_ns / self.early_ns if self.early_ns else 0.0


async def time_cases(makes: Sequence[Callable[[], Factory]], budget: Budget) -> list[Timing]:
    """Time every case with the same number of calls. Each ``make()`` is called once, so
    one protector (breaker, agent, state) serves all of a case's calls and any growth with
    the call count shows; after ``budget.warmup`` calls, ``budget.rounds`` rounds of
    ``budget.calls_per_round`` calls are timed, interleaved case by case so machine drift
    (and the garbage collector's pauses) affect them all alike."""
    calls = [make() for make in makes]
    for call in calls:
        for _ in range(budget.warmup):  # warm-up (open-circuit cases: opens the circuit)
            await call()
    per_round: list[list[float]] = [[] for _ in calls]
    gc.collect()  # once: a full collection of this big heap takes ~0.1-0.5 s
    for _ in range(budget.rounds):
        for i, call in enumerate(calls):
            start = time.perf_counter_ns()
            for _ in range(budget.calls_per_round):
                await call()
            per_round[i].append((time.perf_counter_ns() - start) / budget.calls_per_round)
    half = max(1, budget.rounds // 2)
    return [
        Timing(statistics.median(r), statistics.median(r[:half]), statistics.median(r[half:]))
        for r in per_round
    ]


def growth_vs_table(timings: Sequence[Timing]) -> list[float]:
    """Each case's late ÷ early rounds, divided by the median of that ratio over the table:
    machine drift (load rising or falling during the run) moves every case alike and
    cancels out; a case whose cost grows with its own call count stands above 1."""
    middle = statistics.median(t.growth for t in timings) or 1.0
    return [round(t.growth / middle, 2) for t in timings]


def us(ns: float) -> float:
    """ns -> µs, rounded for the tables."""
    return round(ns / 1000, 2)


def swallow(factory: Factory, *errors: type[BaseException]) -> Factory:
    """Wrap ``factory`` so the given errors return ``None``: a fallback arrives as an
    exception, and the timing loop must keep calling through them."""

    async def call() -> Any:
        try:
            return await factory()
        except errors:
            return None

    return call


def machine() -> dict[str, Any]:
    """CPU model, cores, load, Python and date, stored with the results: the figures mean
    little without the machine that produced them."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": load,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def table(title: str, rows: Rows) -> str:
    """A Markdown table of ``rows`` (columns from the first row's keys), ready to paste into
    the README."""
    if not rows:
        return f"\n### {title}\n\n(no rows)\n"
    keys = list(rows[0])
    cells = [[_cell(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = "| " + " | ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) + " |"
        for cell in cells
    ]
    return "\n".join([f"\n### {title}\n", line, sep, *body])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
