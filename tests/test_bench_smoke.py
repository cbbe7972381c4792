"""Smoke test of the benchmark (``bench/run.py``), which never runs in CI: every
measurement module imports and has ``measure``, and the tool-path cases really drive the
production tool (its answer, its open circuit). No timing is asserted; the peer libraries
(``bench`` dependency group) are not needed."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import os
from pathlib import Path

from bench import fullstack
from bench.run import MEASUREMENTS
from bench.workload import usage
from src.error_recovery import CircuitState
from src.phrases import USAGE_FALLBACK


def test_every_measurement_module_imports_and_has_measure() -> None:
    for name in MEASUREMENTS:
        module = importlib.import_module(name)
        assert inspect.iscoroutinefunction(module.measure), name


async def test_full_stack_case_answers_through_the_production_tool() -> None:
    case = fullstack.ours()()
    assert await case() == usage().spoken_summary()
    assert case.client.calls == 1
    assert case.ctx.userdata.usage == usage()


async def test_open_circuit_case_times_an_open_circuit() -> None:
    # After the breaker opens, the vendor must see no more calls and the caller hears
    # the usage fallback, or the bench would be timing something else.
    case = fullstack.ours(down=True)()
    for _ in range(5):
        assert await case() == USAGE_FALLBACK
    assert case.bot.circuit_breakers["amplitude"].state is CircuitState.OPEN
    seen = case.client.calls
    for _ in range(5):
        assert await case() == USAGE_FALLBACK
    assert case.client.calls == seen


async def test_full_stack_case_stays_on_the_tool_path_past_a_turn_deadline() -> None:
    # The case reuses one RunContext; each call must still be a fresh reply, or after
    # TURN_DEADLINE the bench would time the "no time left" fallback, not the tool.
    case = fullstack.ours()()
    clock = case.bot.retry_clock
    skew = [0.0]
    case.bot.retry_clock = lambda: clock() + skew[0]  # type: ignore[method-assign]
    assert await case() == usage().spoken_summary()
    skew[0] = 60.0  # a minute later, same context
    assert await case() == usage().spoken_summary()


def test_turn_bench_bare_agent_offers_the_model_our_exact_tool_schemas() -> None:
    from livekit.agents.llm import ToolContext
    from livekit.agents.llm._provider_format import openai as openai_format

    from bench.turn import BareAgent, Replayer
    from src.agent import PandaDocTrialistAgent
    from src.services.wiring import TrialistServices

    bare = BareAgent(Replayer({}, {}))
    ours = PandaDocTrialistAgent(TrialistServices())
    for strict in (True, False):
        bare_schemas = openai_format.to_fnc_ctx(ToolContext(bare.tools), strict=strict)
        our_schemas = openai_format.to_fnc_ctx(ToolContext(ours.tools), strict=strict)
        assert len(our_schemas) >= 5
        assert bare_schemas == our_schemas
    assert bare.instructions == ours.instructions


def test_turn_bench_ratios_are_per_round_medians() -> None:
    from bench.turn import TURNS, VARIANTS, Samples, TurnSample, figures

    samples = Samples()
    for round_ in range(5):
        for variant in VARIANTS:
            scale = {"bare": 10.0, "ours": 12.0}[variant[0]] * (1 + round_)
            if variant[1] == "stock":
                scale *= 2
            samples.by_variant[variant].append(
                [TurnSample(kind, scale, 1.0, 0.5, ()) for kind, _ in TURNS]
            )
    _, ratios, extra = figures(samples)
    assert extra["turn_cpu_vs_bare_patched"] == 1.2  # 12/10 in every round
    assert extra["turn_cpu_vs_bare_stock"] == 0.6  # 12/(2*10)
    assert extra["turn_cpu_vs_bare_patched_interval"] == [1.2, 1.2]
    assert {r["met"] for r in ratios if r["target"] != "-"} == {"NO"}


def test_the_forkserver_preloads_every_module_of_ours_the_agent_imports() -> None:
    import src.agent
    from src import heap

    preload = heap.preload_modules()
    assert "src.agent" not in preload  # the job reads the main file itself
    for name in ("src.session", "src.error_recovery", "src.tools", "src.store"):
        assert name in preload
    ours = [n for n in preload if n not in heap.FIRST_CALL_IMPORTS]
    assert all(n.split(".")[0] == "src" and importlib.util.find_spec(n) for n in ours)
    assert "src.services.salesforce" in ours  # a vendor client: imported on first use
    assert all(importlib.util.find_spec(n) for n in heap.FIRST_CALL_IMPORTS)
    assert "src.store.redis_store" in heap.preload_modules(redis=True)
    assert src.agent.server._preload_modules  # handed to LiveKit's worker


async def test_a_conversation_imports_nothing_of_ours_the_forkserver_left_out(
    tmp_path: Path,
) -> None:
    """What a job imports on first use is private memory in every job: the worker's
    preload list must hold every module of ours (and of the first-call list) that a
    ten-turn conversation imports (a job process, as ``bench/memory_fork.py`` runs it)."""
    import subprocess
    import sys

    from src.sandbox.remote import SandboxProcess

    script = """
import asyncio, json, runpy, sys
worker = runpy.run_path("src/agent.py", run_name="__worker__")
for name in worker["server"]._preload_modules:
    __import__(name)
before = set(sys.modules)
from bench import memory_fork
main = runpy.run_path("src/agent.py", run_name="__mp_main__")
tools = asyncio.run(memory_fork._ours(main, None))
print(json.dumps({"tools": tools, "new": sorted(set(sys.modules) - before)}))
"""
    async with SandboxProcess() as sandbox:
        env = {
            **os.environ,
            **sandbox.env(),
            "RESILIENCE_STORE_URL": f"sqlite:///{tmp_path / 'resilience.db'}",
        }
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(child.communicate(), 120)
    assert child.returncode == 0, stderr.decode()[-2000:]
    found = json.loads(stdout.decode().strip().splitlines()[-1])
    assert found["tools"] >= 5  # the conversation reached every vendor
    assert [n for n in found["new"] if n.split(".")[0] == "src"] == []
