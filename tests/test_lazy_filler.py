"""The filler scheduler starts only for slow work (issue #29): LiveKit's
``RunContext.with_filler`` costs two tasks, session listeners and an idle wait per tool
call, so :meth:`ToolRuntime.filler` starts it once the work has taken
``LAZY_FILLER_SHARE`` of ``FILLER_DELAY`` and lets it dwell for the rest; the caller hears
the filler at the same moment. Short real delays (tens of milliseconds)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from src.settings import settings_from_env
from src.tools.runtime import LAZY_FILLER_SHARE, ToolRuntime
from src.tools.turn import TurnBook

FILLER_DELAY = 0.08


class Context:
    """A RunContext's ``with_filler`` and ``session.agent_state``, recorded."""

    def __init__(self, agent_state: str = "thinking") -> None:
        self.session = SimpleNamespace(agent_state=agent_state)
        self.entered: list[dict[str, Any]] = []
        self.exited = 0

    @contextlib.asynccontextmanager
    async def with_filler(self, source: Any, **options: Any) -> AsyncIterator[None]:
        self.entered.append({"source": source, **options})
        try:
            yield
        finally:
            self.exited += 1


def _runtime() -> Any:
    settings = settings_from_env({"FILLER_DELAY": str(FILLER_DELAY)})
    return SimpleNamespace(settings=settings)


async def _work(context: Context, seconds: float, *, turn: bool = True) -> None:
    book = TurnBook(asyncio.get_running_loop().time)
    the_turn = book.turn_for(context, 5.0) if turn else None
    async with ToolRuntime.filler(_runtime(), context, "One moment.", turn=the_turn):  # type: ignore[arg-type]
        await asyncio.sleep(seconds)


async def test_quick_work_never_starts_the_scheduler() -> None:
    context = Context()
    await _work(context, 0.0)
    await asyncio.sleep(FILLER_DELAY)  # past the moment it would have started
    assert context.entered == []


async def test_slow_work_starts_it_with_the_rest_of_the_dwell_and_closes_it() -> None:
    context = Context()
    await _work(context, FILLER_DELAY * 1.5)
    assert len(context.entered) == 1
    options = context.entered[0]
    head = FILLER_DELAY * LAZY_FILLER_SHARE
    assert abs(options["delay"] - (FILLER_DELAY - head)) < 1e-9  # fires at FILLER_DELAY
    assert options["max_steps"] == 2  # a turn's filler, then one progress sentence
    assert callable(options["source"])  # the turn's FillerSource
    assert context.exited == 1  # the scheduler is closed with the work


async def test_while_the_agent_speaks_the_full_dwell_applies() -> None:
    context = Context(agent_state="speaking")
    await _work(context, FILLER_DELAY * 1.5, turn=False)
    assert [o["delay"] for o in context.entered] == [FILLER_DELAY]
    assert context.entered[0]["source"] == "One moment."
    assert context.exited == 1


async def test_a_cancelled_tool_closes_a_started_scheduler() -> None:
    context = Context()
    task = asyncio.create_task(_work(context, 10.0))
    await asyncio.sleep(FILLER_DELAY)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert len(context.entered) == 1
    assert context.exited == 1
