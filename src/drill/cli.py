"""Resilience drill: scripted conversations with faults injected, against the sandbox, with
the real production tuning (``ResilienceSettings`` defaults: 2.5 s per HTTP attempt, 6 s
per tool, 2 retries from 0.5 s with jitter, circuit 3 failures / 30 s).

    uv run python -m src.drill                 # every scenario, a table, exit 1 on a miss
    uv run python -m src.drill --scenario load --conversations 50   # only the load drill
    uv run python -m src.drill --list
    uv run python -m src.drill --scenario amplitude-hang --json drill.json
    uv run python -m src.drill --scenario circuit-recovery --timeline timelines/   # PNGs
    uv run python -m src.drill simulate --examples 1000 --seed 7   # the fleet simulation

No keys, no network: the vendors and the model are the local sandbox stand-ins. Retry
backoff really waits; the only shortcut is the ``circuit-recovery`` scenario, which jumps
the agent's clock over the 30 s recovery timeout (said in its row).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from src.drill.adaptive import ADAPTIVE, run_adaptive
from src.drill.load import THINK_S, LoadReport, run_load
from src.drill.scenarios import DEFAULTS, SCENARIOS, ScenarioReport, run_all

__all__ = ["main", "render"]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def render(reports: Sequence[ScenarioReport]) -> str:
    header = (
        "scenario",
        "caller heard",
        "1st words s",
        "tool s",
        "turn s",
        "longest silence s",
        "requests",
        "breaker",
        "verdict",
    )
    rows = [
        (
            r.name,
            _cut(r.heard, 58),
            _fmt(r.first_words_s),
            _fmt(r.tool_s),
            _fmt(r.turn_s),
            _fmt(r.longest_silence_s),
            f"{r.failing or '-'} {'/'.join(map(str, r.requests))}",
            _cut(", ".join(t.split(":", 1)[1] for t in r.transitions) or "-", 40),
            f"{r.verdict} (<= {r.budget_s:g}s"
            + (f" / {r.turn_budget_s:g}s" if r.turn_budget_s is not None else "")
            + f" / silence {r.silence_budget_s:g}s)",
        )
        for r in reports
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    for r in reports:
        if r.note:
            lines.append(f"note {r.name}: {r.note}")
        for problem in r.problems:
            lines.append(f"MISS {r.name}: {problem}")
    return "\n".join(lines)


LOAD = "load"


def render_load(r: LoadReport) -> str:
    return (
        f"load: {r.conversations} concurrent conversations x {r.turns // max(r.conversations, 1)}"
        f" turns (a pause of up to {THINK_S:g} s before each)"
        f", every vendor failing every other request: turn p50 {r.p50_turn_s:.2f}s, "
        f"p99 {r.p99_turn_s:.2f}s; p99 longest silence {r.p99_silence_s:.2f}s (worst "
        f"{r.worst_silence_s:.2f}s); worst first words {r.worst_first_words_s:.2f}s; worst "
        f"event-loop lag {r.worst_loop_lag_s * 1000:.0f}ms (of it on the CPU: "
        f"{r.worst_loop_busy_s * 1000:.0f}ms); {r.failures} failed, {r.silent_turns} silent"
        f" -> {r.verdict}" + "".join(f"\nMISS load: {p}" for p in r.problems)
    )


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["simulate"]:  # the fleet simulation (issue 24): its own options
        from src.drill.simulation.cli import main as simulate

        return simulate(args_in[1:])
    parser = argparse.ArgumentParser(
        prog="uv run python -m src.drill", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--list", action="store_true", help="list scenarios and exit")
    parser.add_argument("--scenario", action="append", help="run only this scenario (repeatable)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="show agent logs")
    parser.add_argument(
        "--conversations", type=int, default=50, help="conversations in the load drill (50)"
    )
    parser.add_argument(
        "--timeline", metavar="DIR", help="also draw each scenario's timeline as DIR/<name>.png"
    )
    args = parser.parse_args(argv)
    by_name = {s.name: s for s in SCENARIOS}
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:22} {s.what}")
        print(f"{LOAD:22} concurrent conversations against flapping vendors (--conversations)")
        for name in ADAPTIVE:
            print(f"{name:22} adaptive protection (issue #15, src/drill/adaptive.py)")
        return 0
    chosen = list(SCENARIOS)
    with_load = True
    adaptive: list[str] = list(ADAPTIVE)
    if args.scenario:
        unknown = [n for n in args.scenario if n not in by_name and n != LOAD and n not in ADAPTIVE]
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(unknown)}; see --list")
        chosen = [by_name[n] for n in args.scenario if n in by_name]
        adaptive = [n for n in args.scenario if n in ADAPTIVE]
        with_load = LOAD in args.scenario
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL)
    started = time.perf_counter()
    # The load drill first: it measures one process hosting many conversations, and a
    # job process is fresh (LiveKit runs each job in its own), not one that already
    # played every other scenario.
    load = asyncio.run(run_load(args.conversations)) if with_load else None
    if args.timeline and chosen:
        from src.drill.timeline import run_with_timelines

        reports = asyncio.run(run_with_timelines(chosen, args.timeline))
    else:
        reports = asyncio.run(run_all(chosen)) if chosen else []
    if adaptive:
        reports += asyncio.run(run_adaptive(adaptive))
    elapsed = time.perf_counter() - started
    if reports:
        print(render(reports))
    if load is not None:
        print(render_load(load))
    r = DEFAULTS
    print(
        f"\n{len(reports)} scenario(s) in {elapsed:.1f}s; tuning: service_timeout "
        f"{r.service_timeout:g}s, tool_deadline {r.tool_deadline:g}s, max_retries "
        f"{r.max_retries}, base/max delay {r.base_delay:g}/{r.max_delay:g}s, circuit "
        f"{r.failure_threshold} failures/{r.recovery_timeout:g}s, llm_timeout "
        f"{r.llm_timeout:g}s x{r.llm_max_retry + 1}"
    )
    if args.json:
        payload: dict[str, Any] = {
            "elapsed_s": elapsed,
            "settings": asdict(DEFAULTS),
            "scenarios": [asdict(rep) for rep in reports],
            "load": asdict(load) if load is not None else None,
        }
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2)
    missed = any(rep.verdict != "ok" for rep in reports) or (
        load is not None and load.verdict != "ok"
    )
    return 1 if missed else 0
