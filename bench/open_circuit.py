"""The open-circuit tool path with INFO logging on (issue #11): µs from a tool call to its
spoken fallback while the service's circuit is open, through the real agent, its tool
runtime and a real logging handler (INFO, redacting filter installed) writing to
/dev/null, as a normal worker logs.

Run: ``uv run python bench/open_circuit.py``. Not part of ``bench/run.py``'s table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import time

from livekit.agents.llm import ToolError

from src.agent import PandaDocTrialistAgent
from src.drill.harness import StandInRunContext
from src.redaction import install_redaction
from src.services.wiring import TrialistServices
from src.settings import settings_from_env
from src.state import TrialistData
from src.tools import usage

CALLS = 5_000
RUNS = 7


async def bench_open_circuit_tool() -> float:
    """Median µs per refused tool call."""
    root = logging.getLogger()
    handler = logging.FileHandler(os.devnull)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    install_redaction()
    env = {
        "AMPLITUDE_API_KEY": "bench-api-key",
        "AMPLITUDE_SECRET_KEY": "bench-secret-key",
        "AMPLITUDE_BASE_URL": "http://127.0.0.1:9",  # never reached: the circuit is open
    }
    settings = settings_from_env(env)
    services = TrialistServices.from_settings(settings)
    agent = PandaDocTrialistAgent(services, settings)
    breaker = agent.circuit_breakers["amplitude"]
    for _ in range(breaker.failure_threshold):
        breaker.record_failure(ConnectionError("down"))
    ctx = StandInRunContext(TrialistData(email="jane.doe@acme.example.com"))

    async def call() -> None:
        with contextlib.suppress(ToolError):
            await agent.run_tool(
                ctx, "get_trial_usage", lambda: usage.trial_usage(agent, ctx.userdata, "")
            )

    try:
        for _ in range(500):
            await call()
        runs = []
        for _ in range(RUNS):
            start = time.perf_counter_ns()
            for _ in range(CALLS):
                await call()
            runs.append((time.perf_counter_ns() - start) / CALLS / 1000)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
        await services.aclose()
    return statistics.median(runs)


if __name__ == "__main__":
    us = asyncio.run(bench_open_circuit_tool())
    print(f"open-circuit tool path (INFO logging on): {us:.1f} µs per call (target ≤ 20 µs)")
