"""Turn scope: the tools of one reply run concurrently on change sets (a failing tool
leaves no trace and never erases a sibling's save)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from livekit.agents.llm import ToolError

from src.drill.harness import Conversation, StandInRunContext
from src.error_recovery import CircuitBreaker, ErrorRecoveryMixin
from src.error_recovery.changeset import WriteTracked
from src.errors import ServiceUnavailable
from src.phrases import FILLER, FILLER_WRITE
from src.registry import declaration_of
from src.sandbox import FaultKind
from src.sandbox.openai_server import ToolCall, Turn
from src.settings import SettingsError, settings_from_env
from src.state import TrialistData
from src.tools.turn import TurnBook


@dataclass
class State:
    email: str = "jane@acme.example.com"
    usage: str | None = None
    facts: list[str] = field(default_factory=list)
    offered: dict[int, str] = field(default_factory=dict)


@dataclass(slots=True)
class Slotted:
    email: str = "jane@acme.example.com"
    usage: str | None = None
    facts: list[str] = field(default_factory=list)


class Agent(ErrorRecoveryMixin):
    def __init__(self) -> None:
        self.circuit_breakers: dict[str, CircuitBreaker] = {}


def failure() -> ServiceUnavailable:
    return ServiceUnavailable("amplitude", "503", status=503)


async def test_siblings_run_concurrently() -> None:
    agent, state = Agent(), State()
    both = asyncio.Barrier(2)

    async def tool() -> str:
        await both.wait()  # deadlocks if the wrapper runs tools one at a time
        return "ok"

    ctx = StandInRunContext(state)
    results = await asyncio.wait_for(
        asyncio.gather(
            agent.handle_tool_with_error_recovery(ctx, "a", tool),
            agent.handle_tool_with_error_recovery(ctx, "b", tool),
        ),
        5.0,
    )
    assert results == ["ok", "ok"]


@pytest.mark.parametrize("state_type", [State, Slotted])
@pytest.mark.parametrize("saver_first", [True, False])
async def test_failure_leaves_no_trace_and_keeps_a_siblings_save(
    state_type: type[Any], saver_first: bool
) -> None:
    agent, state = Agent(), state_type(facts=["on trial"])
    ctx = StandInRunContext(state)
    saver_done, failer_done = asyncio.Event(), asyncio.Event()

    async def saver() -> str:
        if not saver_first:
            await failer_done.wait()
        state.usage = "three documents"
        state.facts.append("saved")
        return "saved"

    async def failer() -> None:
        state.email = "typo@acme.example.com"
        state.facts.append("half-written")
        if saver_first:
            await saver_done.wait()
        raise failure()

    async def run_saver() -> str:
        try:
            return await agent.handle_tool_with_error_recovery(ctx, "saver", saver)
        finally:
            saver_done.set()

    async def run_failer() -> None:
        try:
            await agent.handle_tool_with_error_recovery(ctx, "failer", failer)
        finally:
            failer_done.set()

    saved, failed = await asyncio.gather(run_saver(), run_failer(), return_exceptions=True)
    assert saved == "saved"
    assert isinstance(failed, ToolError)
    assert ctx.userdata is state
    assert state.usage == "three documents"  # the sibling's save survives
    assert state.email == "jane@acme.example.com"  # the failed tool's write is gone
    # The list was changed by both: the save wins, so "saved" stays; a field that only
    # the failed tool touched is always restored.
    assert "saved" in state.facts


async def test_failure_alone_restores_containers_in_place() -> None:
    agent, state = Agent(), State(facts=["a"], offered={1: "slot"})
    facts, offered = state.facts, state.offered

    async def tool() -> None:
        state.facts.append("b")
        state.offered.clear()
        state.offered[2] = "other"
        state.usage = "x"
        raise failure()

    with pytest.raises(ToolError):
        await agent.handle_tool_with_error_recovery(StandInRunContext(state), "t", tool)
    assert state == State(facts=["a"], offered={1: "slot"})
    assert state.facts is facts and state.offered is offered


async def test_dict_state_key_added_then_failed_is_removed() -> None:
    agent, state = Agent(), {"step": 1}

    async def tool() -> None:
        state["step"] = 2
        state["new"] = True
        raise failure()

    with pytest.raises(ToolError):
        await agent.handle_tool_with_error_recovery(StandInRunContext(state), "t", tool)
    assert state == {"step": 1}


async def test_no_deep_copy_of_the_state() -> None:
    """State that cannot be deep-copied (a client, a socket) is still protected: the
    change set keeps references, never copies."""

    class Uncopyable:
        def __deepcopy__(self, memo: dict[int, Any]) -> Any:
            raise TypeError("holds a socket")

    @dataclass
    class Holder:
        client: Any
        usage: str | None = None

    agent, state = Agent(), Holder(Uncopyable())
    client = state.client

    async def tool() -> None:
        state.usage = "x"
        state.client = None
        raise failure()

    with pytest.raises(ToolError):
        await agent.handle_tool_with_error_recovery(StandInRunContext(state), "t", tool)
    assert state.client is client and state.usage is None


@dataclass
class Tracked(WriteTracked):
    email: str = "jane@acme.example.com"
    usage: str | None = None


async def test_cancelled_sibling_rolls_back_and_the_other_commits() -> None:
    """The saver ends while the hung sibling's write is in the state: with write
    tracking the saver does not claim it, and the cancelled sibling undoes it."""
    agent, state = Agent(), Tracked()
    ctx = StandInRunContext(state)
    started = asyncio.Event()

    async def hang() -> None:
        state.email = "partial@acme.example.com"
        started.set()
        await asyncio.Event().wait()

    async def save() -> str:
        await started.wait()
        state.usage = "kept"
        return "ok"

    hung = asyncio.create_task(agent.handle_tool_with_error_recovery(ctx, "hang", hang))
    assert await agent.handle_tool_with_error_recovery(ctx, "save", save) == "ok"
    hung.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hung
    assert state.usage == "kept" and state.email == "jane@acme.example.com"


async def test_sibling_write_between_a_failures_write_and_its_end_is_kept() -> None:
    """A writes, B overwrites the same field and saves while A still runs, A fails: the
    field keeps B's value (observation alone could not tell whose it is)."""
    agent, state = Agent(), Tracked()
    ctx = StandInRunContext(state)
    a_wrote, b_done = asyncio.Event(), asyncio.Event()

    async def a() -> None:
        state.email = "a@acme.example.com"
        state.usage = "from a"
        a_wrote.set()
        await b_done.wait()
        raise failure()

    async def b() -> str:
        await a_wrote.wait()
        state.email = "b@acme.example.com"
        b_done.set()
        return "ok"

    results = await asyncio.gather(
        agent.handle_tool_with_error_recovery(ctx, "a", a),
        agent.handle_tool_with_error_recovery(ctx, "b", b),
        return_exceptions=True,
    )
    assert isinstance(results[0], ToolError) and results[1] == "ok"
    assert state.email == "b@acme.example.com" and state.usage is None


# -- a real AgentSession: one reply, two tools --------------------------------------------

OVERRIDES: dict[str, Any] = {
    "service_timeout": 0.3,
    "tool_deadline": 1.0,
    "jitter": False,
    "llm_timeout": 2.0,
    "model_retry_interval": 0.05,
}


async def test_one_reply_two_tools_one_fails_one_saves() -> None:
    """The model asks for usage and for a call summary in one reply. The summary finds
    the CRM record (and writes it into the state), then the write itself fails and is
    queued, so the tool fails; usage (slow, so it ends last) saves. The save survives; the
    failed tool left no trace in the state."""
    async with Conversation(overrides=OVERRIDES, skip_sleeps=True) as conv:
        before: TrialistData = copy.deepcopy(conv.data)
        assert before.crm_record_id is None and before.usage is None
        conv.sandbox.servers["amplitude"].inject("*", FaultKind.SLOW, delay_ms=150)
        conv.sandbox.servers["salesforce"].inject(
            "/services/data/*/sobjects/*", FaultKind.SERVICE_UNAVAILABLE
        )
        conv.sandbox.openai.say(
            Turn(
                tool_calls=[
                    ToolCall("get_trial_usage", {"email": ""}),
                    ToolCall("log_call_summary", {"summary": "Wants a demo.", "interest": "high"}),
                ]
            ),
            Turn("Here is what I found."),
        )
        turn = await conv.turn("usage, and note that I want a demo")
        assert turn.failure is None
        outputs = {t.name: t for t in turn.tools}
        assert not outputs["get_trial_usage"].is_error
        assert outputs["log_call_summary"].is_error  # queued: the tool did not succeed
        assert conv.agent.pending_writes  # the write waits outside the session state
        after = conv.data
        assert after.usage is not None  # the sibling's save survives
        # The failed tool's record lookup left no trace.
        assert (after.crm_source, after.crm_record_id, after.crm_summary) == (None, None, None)
        assert after.summaries_logged == 0
        assert dataclass_fields_except(after, "usage") == dataclass_fields_except(before, "usage")


def dataclass_fields_except(data: TrialistData, skip: str) -> dict[str, Any]:
    return {k: v for k, v in vars(data).items() if k != skip}


# -- one turn budget ------------------------------------------------------------------------


class Handle:
    """Stands in for the reply's SpeechHandle (weakly referenced by the turn book)."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tools_of_one_reply_share_the_turn_deadline() -> None:
    clock = FakeClock()
    book = TurnBook(clock)
    reply, other = Handle(), Handle()
    first = book.turn_for(SimpleNamespace(speech_handle=reply), 6.0)
    clock.now += 4.0  # a tool of the same reply starting late
    assert book.turn_for(SimpleNamespace(speech_handle=reply), 6.0) is first
    assert first.deadline_at == 106.0
    assert book.turn_for(SimpleNamespace(speech_handle=other), 6.0).deadline_at == 110.0
    assert book.turn_for(SimpleNamespace(), 6.0).deadline_at == 110.0  # no reply: fresh


def test_a_later_step_of_the_same_reply_gets_a_fresh_turn() -> None:
    """LiveKit keeps one SpeechHandle for a reply and the reply to its tool results
    (``num_steps`` grows): the second step is a new model reply, with its own budget and
    filler, not what a slow first step left over."""
    clock = FakeClock()
    book = TurnBook(clock)
    reply = Handle()
    reply.num_steps = 1  # type: ignore[attr-defined]
    first = book.turn_for(SimpleNamespace(speech_handle=reply), 6.0)
    first.filler_claimed = True
    clock.now += 5.5  # the first step's tools were slow
    reply.num_steps = 2  # type: ignore[attr-defined]
    second = book.turn_for(SimpleNamespace(speech_handle=reply), 6.0)
    assert second is not first and second.deadline_at == 111.5
    assert not second.filler_claimed
    assert book.turn_for(SimpleNamespace(speech_handle=reply), 6.0) is second


def test_one_filler_per_turn() -> None:
    turn = TurnBook(FakeClock()).turn_for(SimpleNamespace(speech_handle=Handle()), 6.0)
    sources = [turn.claim_filler("One moment."), turn.claim_filler("Saving that now.")]
    assert [s(0) for s in sources] == ["One moment.", None]


async def test_late_tool_gets_what_is_left_and_crm_keeps_its_fair_share() -> None:
    """A CRM lookup that starts 4 s into a 6 s turn plans inside the 2 s left: Salesforce
    keeps back a third of it for HubSpot (not a fixed share of a fresh deadline)."""
    async with Conversation(overrides=OVERRIDES, skip_sleeps=True) as conv:
        agent = conv.agent
        clock = conv.clock
        turn_deadline = 6.0
        agent.settings = dataclasses.replace(
            agent.settings,
            resilience=dataclasses.replace(
                agent.settings.resilience,
                service_timeout=2.5,
                tool_deadline=6.0,
                turn_deadline=turn_deadline,
            ),
        )
        ctx = SimpleNamespace(speech_handle=Handle(), userdata=conv.data)
        seen: dict[str, float] = {}

        async def first() -> str:
            seen["first"] = agent.deadline() - clock()
            clock.advance(4.0)
            return "ok"

        async def late() -> str:
            seen["late"] = agent.deadline() - clock()
            seen["reserve"] = agent.reserve()
            return "ok"

        await agent.run_tool(ctx, "first", first)
        await agent.run_tool(ctx, "late", late)
        assert seen["first"] == pytest.approx(turn_deadline, abs=0.05)
        assert seen["late"] == pytest.approx(turn_deadline - 4.0, abs=0.05)
        assert seen["reserve"] == pytest.approx((turn_deadline - 4.0) / 3, abs=0.05)


async def test_two_hanging_tools_of_one_reply_end_within_one_turn_and_one_filler() -> None:
    """Usage and account in one reply while every vendor hangs: both answer with their
    fallback inside one turn budget (not one after the other), and the caller hears at
    most one filler sentence."""
    overrides = {**OVERRIDES, "filler_delay": 0.2, "tool_deadline": 1.0, "turn_deadline": 1.0}
    async with Conversation(overrides=overrides, skip_sleeps=True) as conv:
        for tool in ("get_trial_usage", "lookup_account"):  # every vendor they use hangs
            declaration = declaration_of(tool)
            assert declaration is not None
            for name in declaration.vendors():
                conv.sandbox.servers[name].inject("*", FaultKind.HANG)
        conv.sandbox.openai.say(
            Turn(
                tool_calls=[
                    ToolCall("get_trial_usage", {"email": ""}),
                    ToolCall("lookup_account", {"email": ""}),
                ]
            ),
            Turn("Sorry, I can't see that right now."),
        )
        turn = await conv.turn("usage and account please")
        assert turn.failure is None
        assert sorted(t.name for t in turn.tools) == ["get_trial_usage", "lookup_account"]
        assert all(t.is_error for t in turn.tools)
        assert turn.tool_resolution_s is not None
        assert turn.tool_resolution_s < 1.0 + 0.8  # upper bound: one budget, not two
        fillers = [s for s in turn.said if s in (FILLER, FILLER_WRITE)]
        assert len(fillers) == 1, turn.said


def test_turn_deadline_defaults_to_the_tool_deadline() -> None:
    assert settings_from_env({"TOOL_DEADLINE": "4.5"}).resilience.turn_deadline == 4.5
    both = settings_from_env({"TOOL_DEADLINE": "4.5", "TURN_DEADLINE": "5"})
    assert both.resilience.turn_deadline == 5.0
    with pytest.raises(SettingsError, match="TURN_DEADLINE"):
        settings_from_env({"TURN_DEADLINE": "0"})


async def test_tracked_write_is_undone_at_once_while_a_sibling_runs() -> None:
    """With write tracking the failed tool's own assignment is rolled back when it fails,
    not when the sibling ends: the sibling never sees the half-written value."""
    agent, state = Agent(), Tracked()
    ctx = StandInRunContext(state)
    failed, seen = asyncio.Event(), []

    async def fails() -> None:
        state.email = "typo@acme.example.com"
        raise failure()

    async def sibling() -> str:
        await failed.wait()
        seen.append(state.email)
        return "ok"

    async def run_failing() -> None:
        try:
            await agent.handle_tool_with_error_recovery(ctx, "fails", fails)
        finally:
            failed.set()

    results = await asyncio.gather(
        agent.handle_tool_with_error_recovery(ctx, "sibling", sibling),
        run_failing(),
        return_exceptions=True,
    )
    assert results[0] == "ok" and isinstance(results[1], ToolError)
    assert seen == ["jane@acme.example.com"]


def test_a_context_copied_inside_a_tool_does_not_keep_its_snapshot_alive() -> None:
    """A task or timer started inside a tool copies the context (and the change set in
    it); once the tool ended, that copy must not keep the tool's snapshot alive."""
    import contextvars
    import gc
    import weakref

    from src.error_recovery.changeset import ToolChanges

    class Box:
        pass

    @dataclass
    class State:
        box: Any = None
        notes: list[Any] = field(default_factory=list)

    for end in ("commit", "rollback"):
        first = Box()
        state = State(box=first, notes=[Box()])
        gone = weakref.ref(first)
        changes = ToolChanges(state)
        copied = contextvars.copy_context()  # what create_task / call_later keep
        state.box = Box()
        state.notes.append(Box())
        getattr(changes, end)()
        if end == "rollback":
            assert state.box is first
            state.box = Box()  # now only the snapshot could still hold `first`
        del first
        gc.collect()
        assert gone() is None, f"the snapshot outlived the tool ({end})"
        assert len(copied) >= 1  # the copy itself is still alive
