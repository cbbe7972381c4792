"""Benchmark of the error-recovery layer against peer libraries, all measured in one run.

Run from the repository root (peers live in the ``bench`` dependency group only)::

    uv run --group bench python bench/run.py

It prints a table and writes ``bench/results.json`` (with CPU model, cores, Python version
and date). Every figure is measured in this run; nothing is typed in by hand.

1. Overhead per successful call: ns/call (median of repeated runs) and the ratio to a bare
   ``await`` of the same coroutine, for our breaker, our retry + breaker call, our tool
   wrapper around it, and the same protection built from aiobreaker, purgatory,
   circuitbreaker, tenacity and (if it can run on asyncio) pybreaker.
2. Fail-fast latency while the circuit is open (call to fallback / rejection).
3. Time to resolution when Amplitude hangs or refuses connections: our voice budget
   (real ``AmplitudeClient`` against the sandbox, defaults of ``ResilienceSettings``),
   LiveKit's default ``APIConnectOptions`` retry loop, and a naive ``asyncio.wait_for``
   pattern. Wall clock of the real event loop; the hang cases run concurrently so the
   ~44 s LiveKit case overlaps the others.
4. Requests reaching a dead service over 20 sequential conversations (a fresh agent, and
   so fresh breakers, per conversation as in LiveKit's process-per-job model), with and
   without the breaker. Backoff sleeps are recorded instead of slept; "waiting" is the
   measured request time plus the recorded backoff.
5. Memory per agent instance and per 1,000 ``CircuitBreaker`` objects (tracemalloc).

Library log records are dropped (a ``NullHandler``) so warnings do not flood the output.

Layout: this file only orders the measurements and reports them. Each measurement has its
own module (``overhead``, ``fail_fast``, ``resolution``, ``dead_service``, ``memory``); the
peer-library adapters are in ``peers`` and the shared timing loop and table in ``common``.
They are imported as ``bench.<module>``, found like ``src`` through the repository root on
``sys.path`` (the editable install adds it), so ``python bench/run.py`` and
``python -m bench.run`` both work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from pathlib import Path

from bench.common import machine, table
from bench.dead_service import CONVERSATIONS, bench_dead_service
from bench.fail_fast import bench_fail_fast
from bench.memory import bench_memory
from bench.overhead import bench_overhead
from bench.peers import peer_versions
from bench.resolution import bench_resolution
from src.settings import ResilienceSettings

RESULTS = Path(__file__).with_name("results.json")


async def main() -> None:
    """Run the five measurements, write ``RESULTS`` and print the tables."""
    for name in ("pandadoc", "aiohttp", "circuitbreaker", "purgatory", "aiobreaker"):
        log = logging.getLogger(name)
        log.addHandler(logging.NullHandler())
        log.propagate = False
    started = time.perf_counter()
    dropped: dict[str, str] = {}
    info = machine()
    versions = peer_versions()
    for name, version in versions.items():
        if version == "not installed":
            dropped[name] = "not installed (run with --group bench)"

    # CPU-bound loops first, alone on the loop; then the ~44 s hang waits overlap with the
    # (I/O-bound) dead-service conversations.
    overhead = await bench_overhead(dropped)
    fail_fast = await bench_fail_fast()
    resolution, dead = await asyncio.gather(bench_resolution(), bench_dead_service())
    memory = bench_memory()
    elapsed = round(time.perf_counter() - started, 1)

    results = {
        "machine": info,
        "peers": versions,
        "dropped": dropped,
        "resilience_defaults": dataclasses.asdict(ResilienceSettings()),
        "overhead_ns_per_call": overhead,
        "fail_fast_ns": fail_fast,
        "time_to_resolution_s": resolution,
        "dead_service_conversations": dead,
        "memory": memory,
        "bench_seconds": elapsed,
        "notes": [
            "overhead and fail-fast: median of 9 interleaved rounds, nothing else on the loop",
            "time to resolution: all six policy/fault cases ran concurrently (one run each), "
            "overlapping the dead-service conversations",
            "dead service: each conversation is a new agent with closed breakers "
            "(LiveKit runs each job in its own process); backoff sleeps are recorded, "
            "not slept; waiting = measured request time + recorded backoff",
            "refused: requests never reach the sandbox journal, so 'attempts' counts them",
        ],
    }
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")

    print(f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, {info['date']}")
    print("Peers: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(table("1. Overhead per successful call", overhead))
    print(table("2. Fail-fast while open", fail_fast))
    print(table("3. Time to resolution (wall clock, sandbox Amplitude)", resolution))
    print(table(f"4. Dead service, {CONVERSATIONS} conversations (fresh agent each)", dead))
    print(table("5. Memory (tracemalloc)", [memory]))
    for name, reason in dropped.items():
        print(f"\nDropped {name}: {reason}")
    print(f"\nTotal bench time: {elapsed} s; results in {RESULTS.relative_to(Path.cwd())}")


if __name__ == "__main__":
    asyncio.run(main())
