"""The headline: the production tool path against the best peer stack doing the same work.

Ours is the ``get_trial_usage`` tool method of a real ``PandaDocTrialistAgent`` called with
a real LiveKit ``RunContext``: filler scheduler, ``run_tool``,
``handle_tool_with_error_recovery`` (tool lock, state snapshot, metrics),
``usage.trial_usage``, ``protected`` and ``call_with_retry_and_circuit_breaker`` with the
tool deadline, on a realistic mid-call state, with INFO logging to a real handler and the
Prometheus metrics on. Only the HTTP request is replaced (:class:`InstantAmplitude`
answers at once), so the figures are the cost of everything around it. The peers are
:mod:`bench.peer_stacks`. One process, interleaved rounds, equal call counts per table.

Three tables: the successful call, the open-circuit call (what a caller hits while a
vendor is down) and the cost against the size of the session state.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from livekit.agents.llm import ToolError

from bench.common import (
    Budget,
    Factory,
    Report,
    Rows,
    Timing,
    growth_vs_table,
    swallow,
    time_cases,
    us,
)
from bench.peer_stacks import BREAKERS, no_sleep, peer_tool
from bench.peers import peer_versions
from bench.workload import InstantAmplitude, agent, realistic_state, run_context, usage
from src.agent import PandaDocTrialistAgent
from src.drill.harness import StandInRunContext
from src.phrases import FILLER
from src.settings import ResilienceSettings

SCALES = (1, 10, 100)
OPEN_FOR = 3600.0  # recovery timeout of the open-circuit cases: no probe during the run
TARGET_OK_US = 15.0
TARGET_RATIO = 0.5
TARGET_OPEN_US = 20.0
TARGET_STATE_GROWTH = 1.10


class ToolCase:
    """One case of ours: the agent's ``get_trial_usage`` tool method on ``ctx``. While the
    vendor is down the spoken fallback arrives as a ``ToolError``; its sentence is
    returned so the timing loop goes on (and a test can check what the caller hears)."""

    def __init__(self, bot: PandaDocTrialistAgent, ctx: Any, client: InstantAmplitude) -> None:
        self.bot = bot
        self.ctx = ctx
        self.client = client
        # Bound once, as LiveKit's tool context does when the agent starts: reading the
        # attribute on every call would time LiveKit's descriptor, not the call.
        self.tool = bot.get_trial_usage

    async def __call__(self) -> str:
        try:
            # Every call is a new model reply, as in production (one speech handle per
            # reply); the case reuses one RunContext, so it starts the reply's turn
            # afresh. Without this the turn's 6 s budget runs out mid-bench and every
            # later call times the "no time left" fallback instead of the tool.
            self.bot._turn_book = None
            return await self.tool(self.ctx)
        except ToolError as exc:
            return str(exc)


def ours(scale: int = 1, *, down: bool = False, filler: bool = True) -> Callable[[], ToolCase]:
    """The production tool call (see module doc); ``filler=False`` uses a stand-in context
    without ``with_filler``, to show what LiveKit's filler scheduler costs."""

    def make() -> ToolCase:
        data = realistic_state(scale)
        client = InstantAmplitude(usage(scale), down=down)
        bot = agent(client, sleep=no_sleep(), recovery_timeout=OPEN_FOR)
        ctx: Any = run_context(data) if filler else StandInRunContext(data)
        return ToolCase(bot, ctx, client)

    return make


def peer(library: str, scale: int = 1, *, down: bool = False) -> Callable[[], Factory]:
    def make() -> Factory:
        data = realistic_state(scale)
        client = InstantAmplitude(usage(scale), down=down)
        tool = peer_tool(library, client, recovery_timeout=OPEN_FOR, sleep=no_sleep())
        ctx = run_context(data)
        call: Factory = lambda: tool(ctx)  # noqa: E731
        return swallow(call, ToolError) if down else call

    return make


def deepcopy_alone() -> Factory:
    data = realistic_state()

    async def call() -> Any:
        return copy.deepcopy(data)

    return call


def filler_alone() -> Factory:
    ctx = run_context(realistic_state())
    delay = ResilienceSettings().filler_delay

    async def call() -> None:
        async with ctx.with_filler(FILLER, delay=delay):
            return None

    return call


def _rows(cases: list[tuple[str, str]], timings: list[Timing], ref: float | None) -> Rows:
    rows: Rows = []
    drift_free = growth_vs_table(timings)
    for (name, leaves_out), t, growth in zip(cases, timings, drift_free, strict=True):
        rows.append(
            {
                "case": name,
                "µs/call": us(t.median_ns),
                "x best peer": round(t.median_ns / ref, 2) if ref else "",
                "late ÷ early rounds": round(t.growth, 2),
                "growth vs table": growth,
                "leaves out": leaves_out,
            }
        )
    return rows


async def measure(budget: Budget) -> Report:
    versions = peer_versions()
    missing = "not installed"
    installed = [lib for lib in BREAKERS if versions[lib] != missing]
    if versions["tenacity"] == missing:
        installed = []
    notes: list[str] = []
    if not installed:
        notes.append("peer stacks not measured: run with --group bench")
    http = "the HTTP request (answers at once)"

    # 1. Successful call.
    ok_cases = [
        ("ours: production tool path", http),
        ("ours: same, no filler (stand-in context)", f"{http}; LiveKit's filler scheduler"),
        *((f"peer: tenacity + {lib}", f"{http}; tool lock, metrics") for lib in installed),
        ("component: deepcopy of the state", "everything but the snapshot"),
        ("component: LiveKit filler enter/exit", "everything but the filler"),
    ]
    ok_makes = [
        ours(),
        ours(filler=False),
        *(peer(lib) for lib in installed),
        deepcopy_alone,
        filler_alone,
    ]
    ok = await time_cases(ok_makes, budget)
    peer_ok = ok[2 : 2 + len(installed)]
    best_i = min(range(len(peer_ok)), key=lambda i: peer_ok[i].median_ns) if peer_ok else None
    best_ns = peer_ok[best_i].median_ns if best_i is not None else None
    best_lib = installed[best_i] if best_i is not None else None
    ok_rows = _rows(ok_cases, ok, best_ns)

    # 2. Open circuit: the vendor is down and every breaker has opened during warm-up.
    open_cases = [
        ("ours: production tool path, circuit open", "the HTTP request (never made)"),
        *((f"peer: tenacity + {lib}, circuit open", "tool lock, metrics") for lib in installed),
    ]
    opened = await time_cases(
        [ours(down=True), *(peer(lib, down=True) for lib in installed)], budget
    )
    peer_open = opened[1:]
    best_open = min((t.median_ns for t in peer_open), default=None)
    open_rows = _rows(open_cases, opened, best_open)

    # 3. State size: fewer calls (a 100x deep copy is slow), the same for every case.
    small = Budget(
        quick=budget.quick,
        rounds=budget.rounds,
        calls_per_round=max(20, budget.calls_per_round // 25),
        warmup=20,
    )
    size_cases: list[tuple[str, Callable[[], Factory]]] = [
        (f"ours: production tool path, {s}x state", ours(s)) for s in SCALES
    ]
    if best_lib is not None:
        size_cases += [
            (f"peer: tenacity + {best_lib}, {s}x state", peer(best_lib, s)) for s in SCALES
        ]
    sized = await time_cases([make for _, make in size_cases], small)
    size_rows: Rows = []
    for i, ((name, _), t) in enumerate(zip(size_cases, sized, strict=True)):
        base = sized[i - i % len(SCALES)].median_ns
        size_rows.append(
            {
                "case": name,
                "µs/call": us(t.median_ns),
                "x 1x state": round(t.median_ns / base, 2),
                "slots offered / integrations": f"{3 * SCALES[i % len(SCALES)]:,} each",
            }
        )

    ours_ok = ok[0].median_ns
    ratio = round(ours_ok / best_ns, 2) if best_ns else None
    state_growth = round(sized[2].median_ns / sized[0].median_ns, 2)
    targets = [
        _target("production tool path, µs per successful call", us(ours_ok), TARGET_OK_US),
        _target("… ÷ best peer stack", ratio, TARGET_RATIO),
        _target("100x state ÷ 1x state", state_growth, TARGET_STATE_GROWTH),
        _target(
            "open-circuit tool path, µs (INFO logging)", us(opened[0].median_ns), TARGET_OPEN_US
        ),
    ]
    data = {
        "calls_per_case": budget.calls,
        "state_size_calls_per_case": small.calls,
        "best_peer_stack": f"tenacity + {best_lib}" if best_lib else None,
        "successful_call": ok_rows,
        "open_circuit": open_rows,
        "state_size": size_rows,
        "targets": targets,
    }
    notes.append(
        f"successful and open-circuit tables: {budget.calls:,} calls per case in "
        f"{budget.rounds} interleaved rounds; state size: {small.calls:,} per case"
    )
    return Report(
        key="full_stack",
        data=data,
        tables=[
            ("1. Full stack vs peer stack: successful tool call", ok_rows),
            ("2. Open-circuit tool call (vendor down, breaker open)", open_rows),
            ("3. Cost vs session state size", size_rows),
            ("Targets (issue #16; reported, not asserted)", targets),
        ],
        notes=notes,
        extra={"full_stack_vs_peer_stack": ratio},
    )


def _target(figure: str, measured: float | None, target: float) -> dict[str, Any]:
    met = "n/a" if measured is None else ("yes" if measured <= target else "NO")
    return {"figure": figure, "target": f"≤ {target}", "measured": measured, "met": met}
