"""Fleet benchmark: a dead vendor against many conversations, each in its own process.

Run from the repository root::

    uv run python bench/fleet.py            # prints the rows; bench/run.py keeps them in
                                            # bench/results.json (key "fleet")

20 conversations x 3 usage lookups against an Amplitude that answers every request with
503, production defaults (real backoff sleeps, real timeouts), one process per
conversation (forkserver, as LiveKit's worker on Linux). Conversations come one after
another, then 5 at a time; the breakers are shared through a SQLite file and through a
real ``redis-server`` (started here on a free port), with ``memory://`` (each process
alone, as before the fleet store) as the baseline. Printed: requests that reached the
vendor, wall time, and the time for a circuit one process opens to be seen by another
(a watcher process polling the way conversations do; median and max of several trials).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import Budget, Report  # noqa: E402
from src.drill.fleet import FleetJob, run_fleet_async  # noqa: E402
from src.sandbox import FaultKind, Sandbox  # noqa: E402
from tests.fleet_helpers import RedisServer  # noqa: E402

CONVERSATIONS = 20
LOOKUPS = 3
VISIBILITY_TRIALS = 5
NO_VISIBILITY: dict[str, Any] = {
    "seen_by_other_process_median_ms": "-",
    "seen_by_other_process_max_ms": "-",
    "trials": "-",
}


async def dead_vendor(store_url: str, at_once: int) -> dict[str, Any]:
    async with Sandbox() as sandbox:
        sandbox.amplitude.inject("*", FaultKind.SERVICE_UNAVAILABLE)
        env = {**sandbox.env(), "RESILIENCE_STORE_URL": store_url}
        started = time.perf_counter()
        results = await run_fleet_async(
            [FleetJob(env, lookups=LOOKUPS, real_sleep=True) for _ in range(CONVERSATIONS)],
            at_once=at_once,
        )
        wall = time.perf_counter() - started
        waits = [s for r in results for s in r.tool_seconds]
        return {
            "requests_to_vendor": len(sandbox.amplitude.requests()),
            "wall_seconds": round(wall, 2),
            "tool_wait_median_s": round(statistics.median(waits), 3),
            "tool_wait_max_s": round(max(waits), 3),
        }


async def visibility(store_url: Callable[[int], str]) -> dict[str, Any]:
    """One process opens the circuit; a watcher process notes when it sees it open. Each
    trial has a store of its own (``store_url(trial)``): what a trial leaves behind (an
    open circuit, a spent retry budget) must not decide the next one."""
    seen: list[float] = []
    for trial in range(VISIBILITY_TRIALS):
        async with Sandbox() as sandbox:
            sandbox.amplitude.inject("*", FaultKind.SERVICE_UNAVAILABLE)
            env = {**sandbox.env(), "RESILIENCE_STORE_URL": store_url(trial)}
            start_at = time.time() + 1.0
            watcher, opener = await run_fleet_async(
                [
                    FleetJob(env, watch=10.0, start_at=start_at - 0.5),
                    FleetJob(env, lookups=1, start_at=start_at),
                ],
                at_once=2,
            )
            if opener.opened_at_wall and watcher.saw_open_at_wall:
                seen.append(watcher.saw_open_at_wall - opener.opened_at_wall)
    return {
        "seen_by_other_process_median_ms": round(statistics.median(seen) * 1000, 1)
        if seen
        else None,
        "seen_by_other_process_max_ms": round(max(seen) * 1000, 1) if seen else None,
        "trials": f"{len(seen)}/{VISIBILITY_TRIALS}",
    }


async def measure(budget: Budget) -> Report:
    """Table 10 of ``bench/run.py``: the dead vendor over 20 conversations in 20 real
    processes, through the real tool path, per store. ``--quick``: SQLite alone, one
    conversation after another, no visibility trials."""
    rows = await main(quick=budget.quick)
    return Report(
        "fleet",
        rows,
        tables=[
            (
                f"10. Fleet: dead vendor, {CONVERSATIONS} conversations x {LOOKUPS} lookups, "
                "one process each",
                rows,
            )
        ],
        notes=[
            "Fleet: real job processes (forkserver), real backoff sleeps and timeouts, "
            "Amplitude answering 503; memory:// is each process alone (no sharing)."
        ],
    )


async def main(quick: bool = False) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis")
        redis.start()
        try:
            stores = (
                ("memory (no sharing)", lambda n: "memory://"),
                ("sqlite", lambda n: f"sqlite:///{tmp}/fleet-{n}.db"),
                ("redis", lambda n: f"{redis.url[:-1]}{n % 16}"),
            )
            for label, make_url in stores[1:2] if quick else stores:
                for n, at_once in enumerate((1,) if quick else (1, 5)):
                    url = make_url(n)
                    row = {"store": label, "at_once": at_once, **await dead_vendor(url, at_once)}
                    row.update(NO_VISIBILITY)  # every row has the table's columns
                    if not quick and label != "memory (no sharing)" and at_once == 1:
                        row.update(await visibility(lambda t, f=make_url: f(8 + t)))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            redis.stop()
    return rows


if __name__ == "__main__":
    asyncio.run(main())  # each row is printed as it is measured
