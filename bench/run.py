"""Benchmarks of what production runs, against peer libraries doing the same work.

Run from the repository root (peers live in the ``bench`` dependency group only)::

    uv run --group bench python bench/run.py           # full, a few minutes
    uv run --group bench python bench/run.py --quick   # few calls, no long hangs, < 60 s
    uv run --group bench python bench/run.py --update-readme   # also refresh README tables

It prints Markdown tables (paste them into the README's Performance section) and writes
``bench/results.json``: every figure, the machine (CPU, cores, load, Python, date), the
peer versions and ``full_stack_vs_peer_stack`` (our µs ÷ the best peer stack's µs per
successful tool call). Every figure is measured in this run; nothing is typed in by hand.

Logging is set up as a worker runs it (INFO to a real handler, redaction filter on) for
every measurement, and Prometheus metrics are on. Each row is the production path or says
what it leaves out.

Layout: this file only runs the measurement modules in ``MEASUREMENTS`` and reports them.
A module exposes ``async def measure(budget: Budget) -> Report`` (``bench/common.py``);
adding one is one line below. Modules are imported as ``bench.<module>``, found like
``src`` through the repository root on ``sys.path`` (the editable install adds it), so
``python bench/run.py`` and ``python -m bench.run`` both work.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import time
from pathlib import Path
from typing import Any

from bench.common import Budget, machine, production_logging, table
from bench.peers import peer_versions
from src.settings import ResilienceSettings

RESULTS = Path(__file__).with_name("results.json")
README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- bench tables: begin -->", "<!-- bench tables: end -->"

# In order: CPU-bound loops first (nothing else on the loop), then the wall-clock ones.
MEASUREMENTS = (
    "bench.turn",  # whole turns against a bare LiveKit agent (the headline, issue #29)
    "bench.fullstack",  # 1-3: full stack vs peer stack, open circuit, state size
    "bench.overhead",  # 4: layer breakdown, successful call
    "bench.fail_fast",  # 5: layer breakdown, circuit open
    "bench.resolution",  # 6: hang / refused / slow-but-healthy against the sandbox
    "bench.dead_service",  # 7: dead vendor over 20 conversations, one process
    "bench.memory_fork",  # job memory under the forkserver, against a bare agent (#29)
    "bench.memory",  # 8-9: job process RSS, bytes per agent
    "bench.fleet",  # 10: dead vendor over 20 real processes, per resilience store
)


async def main(
    quick: bool, update_readme: bool = False, only: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Run every measurement, write ``RESULTS``, print the tables (and with
    ``update_readme`` put them between the README's bench markers)."""
    production_logging()
    budget = Budget.for_mode(quick)
    started = time.perf_counter()
    info = machine()
    versions = peer_versions()
    results: dict[str, Any] = {
        "machine": info,
        "mode": "quick" if quick else "full",
        "budget": dataclasses.asdict(budget),
        "peers": versions,
        "resilience_defaults": dataclasses.asdict(ResilienceSettings()),
        "full_stack_vs_peer_stack": None,
    }
    notes: list[str] = []
    markdown = [
        f"Run of {info['date'][:10]} ({results['mode']} mode): {info['cpu']}, "
        f"{info['cores']} cores, load average {info['load_average_at_start']} at start, "
        f"CPython {info['python']}; peers "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + "."
    ]
    print(markdown[0])
    chosen = [m for m in MEASUREMENTS if not only or m.removeprefix("bench.") in only]
    for name in chosen:
        module = importlib.import_module(name)
        step = time.perf_counter()
        report = await module.measure(budget)
        results[report.key] = report.data
        results.update(report.extra)
        notes.extend(report.notes)
        for title, rows in report.tables:
            markdown.append(table(title, rows))
            print(markdown[-1], flush=True)
        print(f"\n({name}: {time.perf_counter() - step:.1f} s)", flush=True)
    results["notes"] = notes
    results["bench_seconds"] = round(time.perf_counter() - started, 1)
    if only and RESULTS.exists():  # a partial run updates its own keys only
        old = json.loads(RESULTS.read_text())
        results = {**old, **{k: v for k, v in results.items() if v is not None}}
        results["notes"] = list(dict.fromkeys([*old.get("notes", []), *notes]))
    RESULTS.write_text(json.dumps(results, indent=2, default=str, ensure_ascii=False) + "\n")
    markdown.append("\nNotes:\n\n" + "\n".join(f"- {n}" for n in notes))
    markdown.append(
        f"\n`full_stack_vs_peer_stack` = {results['full_stack_vs_peer_stack']}; "
        f"total bench time {results['bench_seconds']} s."
    )
    print("\n".join(markdown[-2:]))
    print(f"Results in {RESULTS}")
    if update_readme and not only:
        refresh_readme("\n".join(markdown))
        print(f"README tables refreshed: {README}")
    return results


def refresh_readme(markdown: str) -> None:
    """Replace the text between the README's bench markers with ``markdown``."""
    text = README.read_text()
    head, sep1, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep1 and sep2):
        raise SystemExit(f"README has no {BEGIN} ... {END} block")
    README.write_text(f"{head}{BEGIN}\n{markdown}\n{END}{tail}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--quick", action="store_true", help="few calls, only ours against the hang (< 60 s)"
    )
    parser.add_argument(
        "--update-readme", action="store_true", help="write the tables into README.md"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=(),
        metavar="MODULE",
        help="run these measurements only (e.g. turn memory_fork); updates their keys",
    )
    args = parser.parse_args()
    asyncio.run(main(args.quick, args.update_readme, tuple(args.only)))
