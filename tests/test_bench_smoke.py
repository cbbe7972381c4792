"""Smoke test of the benchmark (``bench/run.py``), which never runs in CI: every
measurement module imports and has ``measure``, and the tool-path cases really drive the
production tool (its answer, its open circuit). No timing is asserted; the peer libraries
(``bench`` dependency group) are not needed."""

from __future__ import annotations

import importlib
import inspect

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
