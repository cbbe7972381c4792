"""The agent end to end, offline: the real AgentSession and openai plugin against the
sandbox's scripted model, the real clients against the sandbox services."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit.agents import NOT_GIVEN, AgentSession, APIConnectionError
from livekit.agents.llm import ToolError
from livekit.agents.tts import TTSError
from livekit.agents.voice.events import ErrorEvent
from livekit.agents.voice.run_result import RunResult

from src.agent import PandaDocTrialistAgent
from src.error_recovery import ERROR_RESPONSES, CircuitState, VoiceRetryPolicy
from src.identity import CallerIdentity, identity_from_job
from src.outbox import PendingWrite
from src.phrases import (
    ACCOUNT_FALLBACK,
    BAD_TOOL_ARGUMENTS,
    BOOK_FALLBACK,
    GOODBYE,
    NOTE_FAILED,
    NOTE_NO_CRM,
    NOTE_QUEUED,
    NOTE_WILL_CONFIRM,
    SLOTS_FALLBACK,
    UNKNOWN_TOOL,
    USAGE_FALLBACK,
    USAGE_NOT_FOUND,
)
from src.registry import READ, VENDORS
from src.sandbox import Sandbox
from src.sandbox.base import FaultKind
from src.sandbox.chilipiper import SANDBOX_ENV as CHILIPIPER_ENV
from src.sandbox.openai_server import ToolCall, Turn
from src.services.wiring import TrialistServices
from src.session import SpokenApology, build_session, build_tts, connect_options, on_session_error
from src.settings import Settings, settings_from_env
from src.state import TrialistData

JANE = "jane.doe@acme.example.com"
MARIA = "maria.garcia@initech.example.com"  # only in HubSpot
ALEX = "alex.kim@umbrella.example.com"  # in neither CRM


class NoSleep:
    """Recorded instead of waited: retries stay fast and their delays are checkable."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@dataclasses.dataclass
class Rig:
    sandbox: Sandbox
    settings: Settings
    services: TrialistServices
    agent: PandaDocTrialistAgent
    session: AgentSession[TrialistData]
    data: TrialistData
    sleep: NoSleep

    async def say(self, text: str) -> RunResult[Any]:
        return await self.session.run(user_input=text)


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox() as sb:
        yield sb


def fast_settings(env: dict[str, str]) -> Settings:
    settings = settings_from_env(env)
    return dataclasses.replace(
        settings,
        resilience=dataclasses.replace(
            settings.resilience,
            service_timeout=0.5,
            tool_deadline=3.0,
            llm_timeout=2.0,
            model_retry_interval=0.01,
        ),
    )


@pytest.fixture
async def rig(sandbox: Sandbox) -> AsyncIterator[Rig]:
    settings = fast_settings(sandbox.env())
    services = TrialistServices.from_settings(settings)
    sleep = NoSleep()
    agent = PandaDocTrialistAgent(services, settings, sleep=sleep)
    data = TrialistData(email=JANE)
    session = build_session(settings, userdata=data, tts_model=None, stt_model=None)
    async with session:
        await session.start(agent)
        yield Rig(sandbox, settings, services, agent, session, data, sleep)
    await services.aclose()


def call_as(rig: Rig, email: str) -> None:
    """This call's verified caller is ``email`` (as if the dispatch had said so)."""
    rig.data.identity = CallerIdentity("verified", email, "dispatch")
    rig.data.email = email


def tool_output(result: RunResult[Any], name: str) -> Any:
    for event in result.events:
        if event.type == "function_call_output" and event.item.name == name:
            return event.item
    raise AssertionError(f"no output of {name} in {result.events}")


def assistant_text(result: RunResult[Any]) -> str:
    return " ".join(e.item.text_content or "" for e in result.events if e.type == "message")


# ---------------------------------------------------------------------------------------
# construction
# ---------------------------------------------------------------------------------------


def test_agent_has_the_spec_breakers() -> None:
    agent = PandaDocTrialistAgent(TrialistServices())
    # one per registered vendor; the spec's four among them
    assert tuple(agent.circuit_breakers) == VENDORS.names()
    assert {"amplitude", "salesforce", "chilipiper", "hubspot"} <= set(agent.circuit_breakers)
    for name, breaker in agent.circuit_breakers.items():
        assert (breaker.failure_threshold, breaker.recovery_timeout) == (3, 30.0)
        assert breaker.name == name


def test_breaker_settings_are_overridable() -> None:
    settings = settings_from_env(
        {"CIRCUIT_FAILURE_THRESHOLD": "5", "CIRCUIT_RECOVERY_TIMEOUT": "12.5"}
    )
    agent = PandaDocTrialistAgent(TrialistServices(), settings)
    assert {(b.failure_threshold, b.recovery_timeout) for b in agent.circuit_breakers.values()} == {
        (5, 12.5)
    }


def test_tool_schemas_describe_arguments() -> None:
    agent = PandaDocTrialistAgent(TrialistServices())
    names = {t.info.name for t in agent.tools}  # type: ignore[union-attr]
    assert names == {
        "get_trial_usage",
        "lookup_account",
        "check_demo_availability",
        "book_demo",
        "log_call_summary",
    }


@pytest.mark.parametrize(
    ("metadata", "attributes", "expected"),
    [
        ('{"email": "Jane.Doe@Acme.example.com", "name": "Jane  Doe"}', {}, (JANE, "Jane Doe")),
        ("", {"email": JANE}, (JANE, None)),
        ("not json", {}, (None, None)),
        ('{"email": "nope"}', {}, (None, None)),
        ('{"email": ["x"]}', {"name": "Sam"}, (None, "Sam")),
        ('["list"]', {}, (None, None)),
        ("", {"name": "jane.doe@acme.example.com"}, (None, None)),  # spoken in the greeting
        ("", {"name": "<b>Jane</b>"}, (None, None)),
    ],
)
def test_identity_from_job_is_validated(
    metadata: str, attributes: dict[str, str], expected: tuple[str | None, str | None]
) -> None:
    assert identity_from_job(metadata, attributes) == expected


# ---------------------------------------------------------------------------------------
# happy paths
# ---------------------------------------------------------------------------------------


async def test_trial_usage_happy_path(rig: Rig) -> None:
    result = await rig.say("How is my trial usage going?")
    result.expect.next_event().is_function_call(name="get_trial_usage")
    out = result.expect.next_event().is_function_call_output()
    assert not out.event().item.is_error
    assert "fourteen documents" in out.event().item.output
    msg = result.expect.next_event().is_message(role="assistant")
    assert "fourteen documents" in (msg.event().item.text_content or "")
    result.expect.no_more_events()
    assert rig.data.usage is not None and rig.data.usage.documents_created == 14


async def test_account_lookup_happy_path_uses_salesforce(rig: Rig) -> None:
    result = await rig.say("What's on my account record?")
    out = tool_output(result, "lookup_account")
    assert not out.is_error
    assert "Jane Doe" in out.output and "Acme Corp" in out.output
    assert rig.data.crm_source == "salesforce"
    assert rig.sandbox.hubspot.requests("/crm/*") == []


async def test_demo_availability_and_booking(rig: Rig) -> None:
    result = await rig.say("Do you have any demo times?")
    out = tool_output(result, "check_demo_availability")
    assert not out.is_error and "option 1" in out.output
    assert set(rig.data.offered_slots) == {1, 2, 3}
    result = await rig.say("Book the second option please")
    result.expect.next_event().is_function_call(name="book_demo", arguments={"option": 2})
    out = tool_output(result, "book_demo")
    assert not out.is_error and out.output.startswith("You're all set for a demo on")
    assert rig.data.booked_meeting is not None
    assert rig.data.booked_meeting.slot_id == rig.data.offered_slots[2].slot_id
    assert len(rig.sandbox.chilipiper.meetings) == 1


async def test_log_call_summary_writes_a_salesforce_task(rig: Rig) -> None:
    result = await rig.say("Please log a summary: wants a demo next week")
    out = tool_output(result, "log_call_summary")
    assert not out.is_error and "saved a note" in out.output
    assert rig.data.summaries_logged == 1
    assert len(rig.sandbox.salesforce.tasks) == 1
    # Assigned to the rep who owns Jane's record, not to the integration user.
    record = next(r for r in rig.sandbox.salesforce.records if r["Email"] == JANE)
    assert rig.sandbox.salesforce.tasks[0]["OwnerId"] == record["OwnerId"]


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------


async def test_booking_requires_an_offered_slot(rig: Rig) -> None:
    result = await rig.say("Book the first option")
    out = tool_output(result, "book_demo")
    assert out.is_error and "haven't offered" in out.output
    await rig.say("Any demo times?")
    rig.sandbox.openai.say(Turn(tool_calls=[ToolCall("book_demo", {"option": 7})]), Turn("Ok."))
    result = await rig.say("the seventh one")
    out = tool_output(result, "book_demo")
    assert out.is_error and "isn't one of the times I offered" in out.output
    assert rig.sandbox.chilipiper.meetings == []


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "x" * 300 + "@example.com"])
async def test_bad_email_gets_a_natural_question(rig: Rig, email: str) -> None:
    before = copy.deepcopy(rig.data)
    rig.sandbox.openai.say(
        Turn(tool_calls=[ToolCall("get_trial_usage", {"email": email})]), Turn("Sure.")
    )
    result = await rig.say("check my usage")
    out = tool_output(result, "get_trial_usage")
    assert out.is_error and "spell it out" in out.output
    assert rig.sandbox.amplitude.journal == []
    assert rig.data == before


async def test_unknown_trial_user(rig: Rig) -> None:
    call_as(rig, "nobody@nowhere.example.com")
    before = copy.deepcopy(rig.data)
    result = await rig.say("check my usage")
    out = tool_output(result, "get_trial_usage")
    assert out.is_error and out.output == USAGE_NOT_FOUND
    assert rig.data == before  # the failed lookup changed nothing


# ---------------------------------------------------------------------------------------
# failures: a natural phrase, the conversation continues, state is as before
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "prompt", "tool", "fallback"),
    [
        ("amplitude", "How is my trial usage?", "get_trial_usage", USAGE_FALLBACK),
        ("chilipiper", "Any demo times?", "check_demo_availability", SLOTS_FALLBACK),
    ],
)
async def test_tool_under_service_failure(
    rig: Rig, service: str, prompt: str, tool: str, fallback: str
) -> None:
    await rig.say("What's on my account?")  # some state first
    before = copy.deepcopy(rig.data)
    getattr(rig.sandbox, service).inject("*", FaultKind.SERVICE_UNAVAILABLE)
    result = await rig.say(prompt)
    out = tool_output(result, tool)
    assert out.is_error and out.output == fallback
    assert rig.data == before
    assert len(rig.sleep.delays) == 2  # two voice retries, recorded not waited
    # the conversation carries on with what still works
    result = await rig.say("Please log a summary: interested")
    assert not tool_output(result, "log_call_summary").is_error


async def test_failed_booking_is_handed_to_sales(rig: Rig) -> None:
    await rig.say("Any demo times?")
    slot = rig.data.offered_slots[1]
    rig.sandbox.chilipiper.inject("*", FaultKind.SERVER_ERROR)
    result = await rig.say("Book the first option")
    out = tool_output(result, "book_demo")
    assert not out.is_error and "passed" in out.output and "sales team" in out.output
    assert rig.data.booked_meeting is None and rig.data.demo_requested == slot.slot_id
    [task] = rig.sandbox.salesforce.tasks
    assert task["Subject"].startswith("Demo requested (ref ")  # the write id, exactly once
    assert slot.starts_at.isoformat() in task["Description"]
    rig.sandbox.chilipiper.clear()
    # Three failed attempts in a row opened the circuit; recovered, it closes again.
    rig.agent.circuit_breakers["chilipiper"].reset()
    result = await rig.say("Book the first option")
    assert not tool_output(result, "book_demo").is_error
    assert rig.data.booked_meeting is not None
    assert len(rig.sandbox.chilipiper.meetings) == 1


async def test_failed_booking_with_no_crm_is_reported_not_booked(rig: Rig) -> None:
    await rig.say("Any demo times?")
    before = copy.deepcopy(rig.data)
    for server in (rig.sandbox.chilipiper, rig.sandbox.salesforce, rig.sandbox.hubspot):
        server.inject("*", FaultKind.SERVER_ERROR)
    out = tool_output(await rig.say("Book the first option"), "book_demo")
    assert out.is_error and out.output == BOOK_FALLBACK
    assert rig.data == before
    assert rig.agent.pending_writes == []


async def test_slot_taken_meanwhile_offers_fresh_times(rig: Rig) -> None:
    await rig.say("Any demo times?")
    taken = rig.data.offered_slots[1]
    first_route = rig.data.booking_session.route_id if rig.data.booking_session else ""
    rig.sandbox.chilipiper.take(taken.starts_at)
    out = tool_output(await rig.say("Book the first option"), "book_demo")
    assert not out.is_error and out.output.startswith("Someone just took that time.")
    assert "option 1 is" in out.output
    assert rig.data.booked_meeting is None and rig.sandbox.salesforce.tasks == []
    assert taken.slot_id not in {s.slot_id for s in rig.data.offered_slots.values()}
    assert rig.data.booking_session is not None
    assert rig.data.booking_session.route_id != first_route
    # the fresh options are bookable straight away
    assert not tool_output(await rig.say("Book the first option"), "book_demo").is_error
    assert len(rig.sandbox.chilipiper.meetings) == 2  # the other person's and ours


async def test_required_form_field_unknown_hands_off_with_the_booking_url(rig: Rig) -> None:
    rig.sandbox.chilipiper.form_fields.append({"reference": "phone", "requirement": "Required"})
    await rig.say("Any demo times?")
    slot = rig.data.offered_slots[1]
    out = tool_output(await rig.say("Book the first option"), "book_demo")
    assert not out.is_error and "sales team" in out.output and "email you a link" in out.output
    assert "http" not in out.output  # the link goes to sales, never into speech
    assert rig.sandbox.chilipiper.requests("*/schedule-simple") == []
    assert rig.data.demo_requested == slot.slot_id and rig.data.booked_meeting is None
    [task] = rig.sandbox.salesforce.tasks
    assert CHILIPIPER_ENV["CHILIPIPER_BOOKING_URL"] in task["Description"]


async def test_circuit_opens_after_three_failures_and_next_calls_send_nothing(
    rig: Rig,
) -> None:
    amplitude = rig.sandbox.amplitude
    amplitude.inject("*", FaultKind.SERVICE_UNAVAILABLE)
    out = tool_output(await rig.say("How is my trial usage?"), "get_trial_usage")
    assert out.output == USAGE_FALLBACK
    sent = len(amplitude.journal)
    assert sent == 3  # 1 + 2 retries: three failed attempts in a row open the circuit
    assert rig.agent.circuit_breakers["amplitude"].state is CircuitState.OPEN
    for _ in range(2):
        out = tool_output(await rig.say("How is my trial usage?"), "get_trial_usage")
        assert out.is_error and out.output == USAGE_FALLBACK
    assert len(amplitude.journal) == sent


@pytest.mark.parametrize("outage", ["down", "empty"])
async def test_hubspot_answers_when_salesforce_is_down_or_empty(rig: Rig, outage: str) -> None:
    if outage == "down":
        await rig.sandbox.salesforce.go_down()
    else:
        call_as(rig, MARIA)  # Salesforce has no record of her
    result = await rig.say("What's on my account?")
    out = tool_output(result, "lookup_account")
    assert not out.is_error
    assert rig.data.crm_source == "hubspot"
    assert len(rig.sandbox.hubspot.requests("/crm/v3/objects/contacts/search")) == 1


async def test_account_in_neither_crm(rig: Rig) -> None:
    call_as(rig, ALEX)
    out = tool_output(await rig.say("What's on my account?"), "lookup_account")
    assert out.is_error and "couldn't find an account" in out.output
    assert rig.data.crm_source is None


async def test_account_lookup_when_both_crms_fail(rig: Rig) -> None:
    rig.sandbox.salesforce.inject("*", FaultKind.SERVICE_UNAVAILABLE)
    rig.sandbox.hubspot.inject("*", FaultKind.SERVICE_UNAVAILABLE)
    out = tool_output(await rig.say("What's on my account?"), "lookup_account")
    assert out.is_error and out.output == ACCOUNT_FALLBACK


async def test_summary_during_crm_outage_is_queued_and_flushed(rig: Rig) -> None:
    await rig.say("What's on my account?")
    salesforce = rig.sandbox.salesforce
    salesforce.inject("/services/data/*/sobjects/Task*", FaultKind.RATE_LIMITED, retry_after=1)
    out = tool_output(await rig.say("Please log a summary: wants pricing"), "log_call_summary")
    assert out.is_error and out.output == NOTE_QUEUED
    assert len(rig.agent.pending_writes) == 1 and salesforce.tasks == []
    salesforce.clear()
    assert await rig.agent.flush_pending_writes() == 0
    assert len(salesforce.tasks) == 1
    assert "wants pricing" in str(salesforce.tasks[0])


async def test_ambiguous_write_is_looked_for_then_sent_once(rig: Rig) -> None:
    await rig.say("What's on my account?")
    salesforce = rig.sandbox.salesforce
    salesforce.inject("/services/data/*/sobjects/Task*", FaultKind.SERVER_ERROR, count=1)
    out = tool_output(await rig.say("Please log a summary: call me"), "log_call_summary")
    assert out.is_error and out.output == NOTE_WILL_CONFIRM  # not "don't count on it"
    [write] = rig.agent.pending_writes
    assert write.verify and salesforce.tasks == []
    assert await rig.agent.flush_pending_writes() == 0
    # Looked for by its write id first (certainly absent), then sent exactly once.
    [query] = [
        e for e in salesforce.requests("/services/data/*/query") if "FROM Task" in str(e.query)
    ]
    assert write.write_id in str(query.query)
    assert len(salesforce.requests("/services/data/*/sobjects/Task*", "POST")) == 2
    [task] = salesforce.tasks
    assert task["Subject"].endswith(f"(ref {write.write_id})")


# ---------------------------------------------------------------------------------------
# the LLM itself fails: the error handler speaks, the session goes on
# ---------------------------------------------------------------------------------------


async def test_llm_unreachable_gets_a_spoken_apology(rig: Rig) -> None:
    await rig.sandbox.openai.go_down()
    result = await rig.say("hello?")
    spoken = assistant_text(result)
    assert spoken.endswith("I apologize for the interruption.")
    assert (
        spoken.removesuffix(" I apologize for the interruption.")
        in (ERROR_RESPONSES["service_unavailable"])
    )
    history = [
        item.text_content
        for item in rig.session.history.items
        if item.type == "message" and item.role == "assistant"
    ]
    assert spoken in history
    await rig.sandbox.openai.come_up()
    result = await rig.say("How is my trial usage?")
    assert not tool_output(result, "get_trial_usage").is_error


# ---------------------------------------------------------------------------------------
# the TTS itself fails: the apology rendered in advance is played
# ---------------------------------------------------------------------------------------


async def test_tts_failure_plays_the_prerendered_apology(sandbox: Sandbox) -> None:
    settings = fast_settings(sandbox.env())
    tts_model = build_tts(settings)  # the real openai TTS, against the stand-in
    apology = SpokenApology()
    assert await apology.prerender(tts_model)
    assert sum(frame.duration for frame in apology.frames) > 0.5
    session = build_session(
        settings, userdata=TrialistData(), tts_model=None, stt_model=None, apology=apology
    )
    said: list[tuple[str, Any]] = []
    async with session:
        await session.start(PandaDocTrialistAgent(TrialistServices(), settings))
        real_say = session.say

        def spy(text: str, **kwargs: Any) -> Any:
            said.append((text, kwargs.get("audio")))
            return real_say(text, **kwargs)

        session.say = spy  # type: ignore[method-assign]
        await sandbox.openai.go_down()
        failure = TTSError(
            timestamp=0.0, label="openai.TTS", error=APIConnectionError(), recoverable=False
        )
        task = on_session_error(session, ErrorEvent(error=failure, source=tts_model), apology)
        assert task is not None
        await task
        history = [i.text_content for i in session.history.items if i.type == "message"]
    assert said[0][0] == apology.text
    assert said[0][1] is not None and not isinstance(said[0][1], type(NOT_GIVEN))
    assert apology.text in history
    assert len(sandbox.openai.requests("/v1/audio/speech")) == 1  # only the pre-render


async def test_apology_without_tts_audio_is_still_said(sandbox: Sandbox) -> None:
    settings = fast_settings(sandbox.env())
    await sandbox.openai.go_down()
    apology = SpokenApology()
    tts_options = connect_options(settings).tts_conn_options  # voice-tuned, no long waits
    assert not await apology.prerender(build_tts(settings), tts_options)
    assert not await apology.prerender(None)
    session = build_session(
        settings, userdata=TrialistData(), tts_model=None, stt_model=None, apology=apology
    )
    async with session:
        await session.start(PandaDocTrialistAgent(TrialistServices(), settings))
        failure = TTSError(
            timestamp=0.0, label="openai.TTS", error=APIConnectionError(), recoverable=False
        )
        recoverable = failure.model_copy(update={"recoverable": True})
        assert on_session_error(session, ErrorEvent(error=recoverable, source=None)) is None
        task = on_session_error(session, ErrorEvent(error=failure, source=None), apology)
        assert task is not None
        await task
        spoken = [
            i.text_content
            for i in session.history.items
            if i.type == "message" and i.role == "assistant"
        ]
    assert len(spoken) == 1 and spoken[0] is not None
    assert spoken[0].endswith("I apologize for the interruption.")


# ---------------------------------------------------------------------------------------
# malformed tool calls: LiveKit's parser text never reaches the model
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "sentence"),
    [
        (ToolCall("book_demo", {"option": "the blue one"}), BAD_TOOL_ARGUMENTS),
        (ToolCall("book_demo", '{"option": '), BAD_TOOL_ARGUMENTS),
        (ToolCall("get_trial_usage", {"email": 42}), BAD_TOOL_ARGUMENTS),
        (
            ToolCall("log_call_summary", {"summary": "hi", "interest": "extreme"}),
            BAD_TOOL_ARGUMENTS,
        ),
        (ToolCall("delete_account", {}), UNKNOWN_TOOL),
    ],
)
async def test_malformed_tool_call_reaches_the_model_as_a_plain_sentence(
    rig: Rig, call: ToolCall, sentence: str
) -> None:
    before = copy.deepcopy(rig.data)
    rig.sandbox.openai.say(Turn(tool_calls=[call]), Turn("Could you say that again?"))
    result = await rig.say("do the thing")
    assert "say that again" in assistant_text(result)
    seen = [o.content for o in rig.sandbox.openai.tool_outputs()]
    assert seen == [sentence]
    for text in seen:
        assert not re.search(r"pydantic|http|validation|Error|Args|\{", text)
    assert rig.data == before


async def test_hanging_salesforce_leaves_hubspot_its_share_of_the_deadline(rig: Rig) -> None:
    settings = rig.agent.settings
    rig.agent.settings = dataclasses.replace(
        settings, resilience=dataclasses.replace(settings.resilience, tool_deadline=1.2)
    )
    rig.agent.retry_policy = VoiceRetryPolicy(base_delay=0.0, max_delay=0.0, jitter=False)
    rig.sandbox.salesforce.inject("/services/data/*", FaultKind.HANG)
    started = time.monotonic()
    result = await rig.say("What's on my account?")
    elapsed = time.monotonic() - started
    out = tool_output(result, "lookup_account")
    assert not out.is_error and "Jane Doe" in out.output
    assert rig.data.crm_source == "hubspot"
    assert elapsed < 1.2 + 0.8  # the tool deadline plus model round trips


async def test_repeated_model_failures_end_with_a_spoken_goodbye(sandbox: Sandbox) -> None:
    settings = fast_settings(sandbox.env())
    settings = dataclasses.replace(
        settings,
        resilience=dataclasses.replace(settings.resilience, max_unrecoverable_errors=2),
    )
    session = build_session(
        settings, userdata=TrialistData(email=JANE), tts_model=None, stt_model=None
    )
    closed: list[str] = []
    session.on("close", lambda event: closed.append(str(event.reason)))
    agent = PandaDocTrialistAgent(TrialistServices(), settings, sleep=NoSleep())
    async with session:
        await session.start(agent)
        await sandbox.openai.go_down()
        first = assistant_text(await session.run(user_input="hello?"))
        assert first.endswith("I apologize for the interruption.")
        with contextlib.suppress(RuntimeError):
            await session.run(user_input="are you there?")
        for _ in range(100):
            if closed:
                break
            await asyncio.sleep(0.02)
        spoken = [
            i.text_content
            for i in session.history.items
            if i.type == "message" and i.role == "assistant"
        ]
    assert spoken == [first, GOODBYE]
    assert closed and "error" not in closed[0]  # we ended it, after the goodbye


async def test_progress_resets_the_failure_count(rig: Rig) -> None:
    await rig.sandbox.openai.go_down()
    await rig.say("hello?")
    await rig.sandbox.openai.come_up()
    await rig.say("How is my trial usage?")  # a real answer: the model works again
    await rig.sandbox.openai.go_down()
    for _ in range(rig.settings.resilience.max_unrecoverable_errors - 1):
        text = assistant_text(await rig.say("hello again?"))
        assert text.endswith("I apologize for the interruption.")
        assert text != GOODBYE


# ---------------------------------------------------------------------------------------
# the outbox of CRM writes: never lost, never sent twice
# ---------------------------------------------------------------------------------------

TASKS = "/services/data/*/sobjects/Task"


async def outbox(rig: Rig, count: int) -> list[PendingWrite]:
    await rig.say("What's on my account?")
    record = rig.data.crm_record_id
    assert record is not None
    writes = [PendingWrite("salesforce", record, "Queued note", f"note {i}") for i in range(count)]
    rig.agent.pending_writes.extend(writes)
    return writes


async def test_concurrent_flushes_send_each_write_once(rig: Rig) -> None:
    await outbox(rig, 3)
    results = await asyncio.gather(
        rig.agent.flush_pending_writes(), rig.agent.flush_pending_writes()
    )
    assert results == [0, 0]
    assert sorted(t["Description"] for t in rig.sandbox.salesforce.tasks) == [
        "note 0",
        "note 1",
        "note 2",
    ]


async def test_a_cancelled_flush_neither_loses_nor_doubles(rig: Rig) -> None:
    await outbox(rig, 3)
    salesforce = rig.sandbox.salesforce
    salesforce.inject(TASKS, FaultKind.HANG)
    flush = asyncio.create_task(rig.agent.flush_pending_writes())
    for _ in range(300):  # until the first write is in flight (3 s at most)
        if salesforce.requests(TASKS, "POST"):
            break
        await asyncio.sleep(0.01)
    assert salesforce.requests(TASKS, "POST")
    queued_meanwhile = PendingWrite("salesforce", rig.data.crm_record_id or "", "Later", "late")
    rig.agent.pending_writes.append(queued_meanwhile)
    flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flush
    salesforce.clear()
    # The write in flight has an unknown outcome: kept, to be looked for before a resend.
    assert [w.body for w in rig.agent.pending_writes] == ["note 0", "note 1", "note 2", "late"]
    assert rig.agent.pending_writes[0].verify
    assert await rig.agent.flush_pending_writes() == 0
    bodies = [t["Description"] for t in salesforce.tasks]
    assert sorted(bodies) == ["late", "note 0", "note 1", "note 2"]  # each exactly once


async def test_a_write_without_time_for_an_attempt_is_queued_unsent(rig: Rig) -> None:
    [write] = await outbox(rig, 1)
    rig.agent.pending_writes.clear()
    outcome = await rig.agent.outbox.send(write, deadline_at=rig.agent.retry_clock() + 0.1)
    assert outcome == "queued"
    assert rig.sandbox.salesforce.requests(TASKS) == []


async def test_a_rejected_write_is_reported_and_dropped(rig: Rig) -> None:
    await rig.say("What's on my account?")
    # A 400 means the CRM refused the write itself: re-sending cannot help.
    rig.data.crm_record_id = "003000000000000ZZZ"  # a record the CRM does not have
    out = tool_output(await rig.say("Please log a summary: call me"), "log_call_summary")
    assert out.is_error and out.output == NOTE_FAILED
    assert rig.agent.pending_writes == []


async def test_no_request_starts_without_time_for_it(rig: Rig) -> None:
    client = rig.services.amplitude
    assert client is not None
    with pytest.raises(ToolError) as info:
        await rig.agent.protected(
            "amplitude",
            lambda: client.get_trial_usage(JANE),
            USAGE_FALLBACK,
            kind=READ,
            deadline_at=rig.agent.retry_clock() + 0.05,
        )
    assert info.value.message == USAGE_FALLBACK
    assert rig.sandbox.amplitude.journal == []
    assert rig.agent.circuit_breakers["amplitude"].failure_count == 0


async def test_one_demo_per_caller(rig: Rig) -> None:
    await rig.say("Any demo times?")
    assert not tool_output(await rig.say("Book the first option"), "book_demo").is_error
    again = tool_output(await rig.say("Book the first option"), "book_demo")
    assert not again.is_error and again.output.startswith("You're all set")  # same slot: same
    other = tool_output(await rig.say("Book the second option"), "book_demo")
    assert other.is_error and "already have a demo booked" in other.output
    assert len(rig.sandbox.chilipiper.meetings) == 1


async def test_summary_when_no_crm_can_find_the_record(rig: Rig) -> None:
    for server in (rig.sandbox.salesforce, rig.sandbox.hubspot):
        server.inject("*", FaultKind.SERVICE_UNAVAILABLE)
    out = tool_output(await rig.say("Please log a summary: call me"), "log_call_summary")
    assert out.is_error and out.output == NOTE_NO_CRM
    assert rig.agent.pending_writes == []
