"""The load drill: many concurrent conversations in one process against flapping vendors.

One sandbox, in a process of its own (:class:`~src.sandbox.remote.SandboxProcess`: in
production the vendors and the model are elsewhere, and stand-ins on this loop would be
measured as the agent's own work), is shared by ``conversations`` production-assembled
agent sessions (the stand-in model's keyword script, no scripted replies), every vendor
failing every other request. Each conversation plays :data:`LOAD_TURNS`, each turn after
a pause of up to :data:`THINK_S` (seeded; people on different calls do not speak in the
same millisecond, and a drill where fifty model requests start at one instant measures
that artefact, not the agent). Reported: p50/p99 turn time, the worst first-words gap,
and the worst event-loop lag (a monitor that asks to wake every 10 ms and records how
late it woke) while the conversations talk; sessions are started and play their turns
once, healthy, before (one-time client set-up is not measured).

The process is prepared as a job process is (:mod:`src.heap`): the imports frozen as
LiveKit's forkserver freezes them, each conversation's state frozen after its
``session.start`` and again once its healthy round (this drill's greeting) is over, as
the entrypoint does after the greeting.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from dataclasses import dataclass, field

from src import heap
from src.drill.harness import SILENCE_BUDGET, Conversation, TurnResult
from src.sandbox import FaultKind
from src.sandbox.data import TRIAL_USERS
from src.sandbox.remote import SandboxProcess
from src.settings import ResilienceSettings

__all__ = ["LOAD_TURNS", "LoadReport", "run_load"]

LOAD_TURNS = ("how is my trial usage?", "what's on my account?", "any demo times?")
DEFAULTS = ResilienceSettings()
TURN_BUDGET = DEFAULTS.turn_deadline + 1.0
FIRST_WORDS = 1.5
LAG_BUDGET = 0.050
THINK_S = 3.0  # a caller's pause before each turn: uniform in [0, THINK_S), seeded


@dataclass
class LoadReport:
    conversations: int
    turns: int
    p50_turn_s: float
    p99_turn_s: float
    worst_first_words_s: float
    worst_loop_lag_s: float
    worst_loop_busy_s: float  # the CPU-bound part of the worst lag (see _monitor_lag)
    failures: int
    silent_turns: int
    elapsed_s: float
    verdict: str = "ok"
    problems: list[str] = field(default_factory=list)
    p99_silence_s: float = 0.0  # longest silence of a turn (TurnResult.longest_silence_s)
    worst_silence_s: float = 0.0


async def _monitor_lag(
    stop: asyncio.Event, lags: list[float], busy: list[float], period: float = 0.01
) -> None:
    """Wall-clock lag of a 10 ms wake-up, and the part of it the loop spent on the CPU
    (``thread_time``): on a shared, overloaded machine the wall figure also counts time
    the process was not scheduled at all; the CPU part is what the loop itself spent."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        asked, cpu = loop.time(), time.thread_time()
        await asyncio.sleep(period)
        lag = max(0.0, loop.time() - asked - period)
        lags.append(lag)
        busy.append(min(lag, max(0.0, time.thread_time() - cpu - period)))


def _percentile(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def run_load(conversations: int = 50) -> LoadReport:
    """Run the load drill (see the module doc)."""
    users = [u.email for u in TRIAL_USERS if u.in_salesforce]
    results: list[TurnResult] = []
    lags: list[float] = []
    busy: list[float] = []
    stop = asyncio.Event()
    started = time.perf_counter()
    heap.freeze_preloaded()  # as LiveKit's forkserver does before any job process starts
    async with SandboxProcess() as sandbox, contextlib.AsyncExitStack() as stack:
        convs: list[Conversation] = []
        for i in range(conversations):
            conv = Conversation(
                email=users[i % len(users)], sandbox=sandbox, shared_sandbox=True, snapshots=False
            )
            convs.append(await stack.enter_async_context(conv))
            heap.freeze_call_state()  # as the entrypoint does after session.start

        rng = random.Random(7)

        async def play(conv: Conversation, *, think: bool = True) -> None:
            for text in LOAD_TURNS:
                if think:
                    await asyncio.sleep(rng.uniform(0.0, THINK_S))
                results.append(await conv.turn(text))
            if not think:  # the healthy round is this drill's greeting: the call is up
                heap.freeze_call_state()  # as the entrypoint does after the greeting

        # Each conversation plays its turns once healthy first, so one-time set-up
        # (clients, TLS contexts, time zones) is not measured; then vendors flap.
        await asyncio.gather(*(play(conv, think=False) for conv in convs))
        results.clear()
        for name in ("amplitude", "salesforce", "hubspot", "chilipiper"):
            await sandbox.inject(name, FaultKind.FLAPPING, every=2)
        monitor = asyncio.create_task(_monitor_lag(stop, lags, busy))
        try:
            await asyncio.gather(*(play(conv) for conv in convs))
        finally:
            stop.set()
            await monitor
    elapsed = time.perf_counter() - started
    totals = sorted(r.total_s for r in results)
    first = [r.first_words_s for r in results if r.first_words_s is not None]
    silences = sorted(r.longest_silence_s for r in results if r.longest_silence_s is not None)
    report = LoadReport(
        conversations=conversations,
        turns=len(results),
        p50_turn_s=_percentile(totals, 50) if totals else 0.0,
        p99_turn_s=_percentile(totals, 99) if totals else 0.0,
        worst_first_words_s=max(first) if first else 0.0,
        worst_loop_lag_s=max(lags) if lags else 0.0,
        worst_loop_busy_s=max(busy) if busy else 0.0,
        failures=sum(1 for r in results if r.failure),
        silent_turns=sum(1 for r in results if not r.said),
        elapsed_s=elapsed,
        p99_silence_s=_percentile(silences, 99) if silences else 0.0,
        worst_silence_s=silences[-1] if silences else 0.0,
    )
    if report.failures:
        report.problems.append(f"{report.failures} turn(s) raised")
    if report.silent_turns:
        report.problems.append(f"{report.silent_turns} silent turn(s)")
    if report.p99_turn_s > TURN_BUDGET:
        report.problems.append(f"p99 turn {report.p99_turn_s:.2f}s > {TURN_BUDGET:g}s")
    if report.p99_silence_s > SILENCE_BUDGET:
        report.problems.append(
            f"p99 longest silence {report.p99_silence_s:.2f}s > {SILENCE_BUDGET:g}s"
        )
    if report.worst_first_words_s > FIRST_WORDS:
        report.problems.append(
            f"worst first words {report.worst_first_words_s:.2f}s > {FIRST_WORDS:g}s"
        )
    if report.worst_loop_lag_s > LAG_BUDGET:
        report.problems.append(
            f"event-loop lag {report.worst_loop_lag_s * 1000:.0f}ms > {LAG_BUDGET * 1000:.0f}ms"
        )
    report.verdict = "MISS" if report.problems else "ok"
    return report
