"""Memory: the RSS of one job process through its life, and the bytes per agent.

A conversation needs a whole job process (LiveKit runs each job in its own), so the first
table is that process's resident memory after each stage, measured in a real subprocess
(:mod:`bench.memory_job`) talking to the sandbox over HTTP. The second is what one more
agent instance costs inside it (tracemalloc: bytes allocated and still alive after
building 50 agents, their 4 breakers included, without vendor clients), and 1,000
``CircuitBreaker`` objects.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Budget, Report, Rows
from src.agent import PandaDocTrialistAgent
from src.error_recovery import CircuitBreaker
from src.sandbox import Sandbox
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


def per_agent() -> dict[str, Any]:
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


async def job_process() -> dict[str, Any]:
    """Run :mod:`bench.memory_job` in a fresh interpreter against a sandbox in this one."""
    root = Path(__file__).resolve().parent.parent
    async with Sandbox() as sandbox:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.memory_job",
            cwd=root,
            env={**os.environ, **sandbox.env()},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"memory job exited {proc.returncode}: {tail[0]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def measure(budget: Budget) -> Report:
    job = await job_process()
    rows: Rows = []
    previous = 0
    for stage, kib in job["stages"].items():
        rss = kib["VmRSS"]
        rows.append(
            {
                "job process stage": stage,
                "RSS MB": round(rss / 1024, 1),
                "+ MB": round((rss - previous) / 1024, 1) if previous else "",
                "peak MB": round(kib["VmHWM"] / 1024, 1),
            }
        )
        previous = rss
    agent = per_agent()
    return Report(
        key="memory",
        data={"job_process": rows, "tool_calls_in_conversation": job["tool_calls"], **agent},
        tables=[
            ("8. Memory of one job process (real subprocess, /proc RSS)", rows),
            ("9. Memory per agent inside a process (tracemalloc)", [agent]),
        ],
        notes=[
            f"job process: {job['turns']} text turns ({job['tool_calls']} tool calls) "
            "through build_session against the sandbox's scripted model; no room, no audio"
        ],
    )
