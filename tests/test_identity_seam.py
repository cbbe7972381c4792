"""Caller identity at the write seam (issue #25), end to end: the real AgentSession and
openai plugin against the sandbox's scripted model, the real clients against the sandbox
services. A caller who is not verified learns nothing about whether an address has a
record, and nothing is written on anyone's record in their name."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator

import pytest
from livekit.agents import AgentSession
from prometheus_client import REGISTRY

from src.agent import PandaDocTrialistAgent
from src.identity import CallerIdentity
from src.phrases import NO_SLOTS_OFFERED, NOTE_WILL_CONFIRM, PRIVACY_CLAIMED
from src.sandbox import Sandbox
from src.sandbox.base import FaultKind
from src.services.wiring import TrialistServices
from src.session import build_session
from src.state import TrialistData
from src.tools.crm import INTAKE_PREFIX
from src.tools.policy import MAX_SIP_CHECKS
from tests.test_agent import NoSleep, Rig, fast_settings, tool_output

JANE = "jane.doe@acme.example.com"  # a Salesforce Lead and a HubSpot contact
NOBODY = "pat.jones@nowhere.example.com"  # no record anywhere
SAM = "sam.lee@globex.example.com"  # a Salesforce Contact
SAM_NUMBER = "12125550187"
STRANGER_NUMBER = "13105550199"


@contextlib.asynccontextmanager
async def call(
    data: TrialistData, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[Sandbox, Rig]]:
    """A conversation on a fresh sandbox (its own journals and calendars)."""
    async with Sandbox() as sandbox:
        settings = fast_settings({**sandbox.env(), **(env or {})})
        # These tests are about what is said and sent, not timing: an attempt gets 2 s, so
        # a loop pause in the in-process sandbox (seen once in a full run: the first phone
        # check's two reads both over 0.5 s) is not mistaken for a hang.
        settings = dataclasses.replace(
            settings, resilience=dataclasses.replace(settings.resilience, service_timeout=2.0)
        )
        services = TrialistServices.from_settings(settings)
        sleep = NoSleep()
        agent = PandaDocTrialistAgent(services, settings, sleep=sleep)
        session: AgentSession[TrialistData] = build_session(
            settings, userdata=data, tts_model=None, stt_model=None
        )
        try:
            async with session:
                await session.start(agent)
                yield sandbox, Rig(sandbox, settings, services, agent, session, data, sleep)
        finally:
            await services.aclose()


def add_intake_contact(sandbox: Sandbox, contact_id: str) -> None:
    """The placeholder "unverified intake" contact an operator creates in HubSpot."""
    template = next(iter(sandbox.hubspot.contacts.values()))
    sandbox.hubspot.contacts[contact_id] = {
        **{name: None for name in template},
        "hs_object_id": contact_id,
        "email": "unverified-intake@pandadoc.example.com",
        "lastname": "Unverified intake",
        "createdate": template["createdate"],
        "lastmodifieddate": template["lastmodifieddate"],
    }


def unknown(number: str | None = None) -> TrialistData:
    return TrialistData(identity=CallerIdentity(caller_number=number))


def refusals(tool: str, reason: str) -> float:
    labels = {"tool": tool, "reason": reason}
    return REGISTRY.get_sample_value("pandadoc_identity_refusals_total", labels) or 0.0


def record_ids(sandbox: Sandbox, email: str) -> set[str]:
    ids = {r["Id"] for r in sandbox.salesforce.records if r["Email"] == email}
    return ids | {c for c, p in sandbox.hubspot.contacts.items() if p["email"] == email}


def assert_nothing_on_records(sandbox: Sandbox, email: str) -> None:
    """No Task or note on any record, and no request that names the record."""
    assert all("WhoId" not in task for task in sandbox.salesforce.tasks)
    assert all(note.contact_ids == () for note in sandbox.hubspot.notes)
    journals = json.dumps(
        [(e.path, e.query, e.body) for s in sandbox.servers.values() for e in s.journal],
        default=str,
    )
    for record_id in record_ids(sandbox, email):
        assert record_id not in journals


CONVERSATION = (
    ("get_trial_usage", "How is my trial usage? It's {email}"),
    ("lookup_account", "What's on my account record, {email}?"),
    ("check_demo_availability", "Any demo times available?"),
    ("book_demo", "Book the first option"),  # ChiliPiper fails: handed to sales
    ("book_demo", "Book the second option please"),
    ("log_call_summary", "Please log a note: loved the templates, wants a discount"),
)


async def _conversation(email: str, number: str | None) -> tuple[list[str], list[str], Sandbox]:
    """Every tool, a demo hand-off among them; (what each tool answered, the CRM and
    Amplitude requests made, the sandbox)."""
    said: list[str] = []
    async with call(unknown(number)) as (sandbox, rig):
        for i, (tool, text) in enumerate(CONVERSATION):
            if i == 3:
                sandbox.chilipiper.inject("*", FaultKind.SERVER_ERROR)
            said.append(tool_output(await rig.say(text.format(email=email)), tool).output)
            if i == 3:
                sandbox.chilipiper.clear()
                rig.agent.circuit_breakers["chilipiper"].reset()
        requests = [
            f"{e.method} {e.path}"
            for s in (sandbox.salesforce, sandbox.hubspot, sandbox.amplitude)
            for e in s.journal
            if "oauth2" not in e.path
        ]
        assert_nothing_on_records(sandbox, email)
        return said, requests, sandbox


@pytest.mark.parametrize("number", [None, STRANGER_NUMBER], ids=["web", "phone"])
async def test_an_address_with_a_record_and_one_without_sound_the_same(
    number: str | None,
) -> None:
    jane, jane_requests, jane_box = await _conversation(JANE, number)
    nobody, nobody_requests, nobody_box = await _conversation(NOBODY, number)
    assert jane == nobody  # the same sentence for every tool
    assert jane[0] == jane[1] == PRIVACY_CLAIMED
    assert "sales team" in jane[3] and jane[4].startswith("You're all set")
    assert jane[5] == "Thanks, I've saved a note of our call for the team."
    # The same requests, in the same number: nothing to time apart.
    assert sorted(jane_requests) == sorted(nobody_requests)
    assert jane_box.amplitude.journal == []
    if number is None:
        assert jane_requests == [
            "POST /services/data/v63.0/sobjects/Task",
            "POST /services/data/v63.0/sobjects/Task",
        ]
    # The note and the hand-off went to the unverified intake, masked in the subject.
    for box, masked in ((jane_box, "j***@acme.example.com"), (nobody_box, "p***@nowhere")):
        handoff, note = box.salesforce.tasks
        assert note["Subject"].startswith(f"{INTAKE_PREFIX} {masked}")
        assert handoff["Subject"].startswith(f"{INTAKE_PREFIX} {masked}")
        assert "loved the templates" in note["Description"]
        # No intake owner configured: the integration user, never the record's rep.
        assert "OwnerId" not in note and "OwnerId" not in handoff


async def test_intake_owner_and_hubspot_intake_record_are_configurable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    owner = "005Hs00000A1b2eIAB"  # the sandbox's "Trialist Desk" user
    before = refusals("log_call_summary", "intake")
    with caplog.at_level(logging.INFO, logger="pandadoc.agent"):
        async with call(unknown(), {"SALESFORCE_INTAKE_OWNER_ID": owner}) as (sandbox, rig):
            await rig.say(f"How is my trial usage? It's {JANE}")
            await rig.say("Please log a note: call me back")
            [task] = sandbox.salesforce.tasks
            assert task["OwnerId"] == owner and "WhoId" not in task
    assert refusals("log_call_summary", "intake") == before + 1
    assert "(intake)" in caplog.text and "j***@acme.example.com" in caplog.text
    assert JANE not in caplog.text
    # Without Salesforce, HubSpot: a note on the intake record (or on nothing).
    no_salesforce = {"SALESFORCE_INSTANCE_URL": "", "SALESFORCE_CLIENT_ID": ""}
    intake = "51000001"
    for env, expected in (({}, ()), ({"HUBSPOT_INTAKE_RECORD_ID": intake}, (intake,))):
        async with call(unknown(), {**no_salesforce, **env}) as (sandbox, rig):
            add_intake_contact(sandbox, intake)
            await rig.say(f"How is my trial usage? It's {JANE}")
            out = tool_output(await rig.say("Please log a note: call me back"), "log_call_summary")
            assert not out.is_error
            [note] = sandbox.hubspot.notes
            assert note.contact_ids == expected
            assert note.body.startswith(f"{INTAKE_PREFIX} j***@acme.example.com")


async def test_an_ambiguous_intake_write_is_looked_for_then_sent_once() -> None:
    async with call(unknown()) as (sandbox, rig):
        await rig.say(f"How is my trial usage? It's {NOBODY}")
        salesforce = sandbox.salesforce
        salesforce.inject("/services/data/*/sobjects/Task*", FaultKind.SERVER_ERROR, count=1)
        out = tool_output(await rig.say("Please log a note: call me"), "log_call_summary")
        assert out.output == NOTE_WILL_CONFIRM
        [write] = rig.agent.pending_writes
        assert write.verify and write.record_id == ""
        assert await rig.agent.flush_pending_writes() == 0
        # Looked for among the Tasks on nobody (certainly absent), then sent exactly once.
        [query] = [
            e for e in salesforce.requests("/services/data/*/query") if "FROM Task" in str(e.query)
        ]
        assert "WhoId = null" in query.query["q"] and write.write_id in query.query["q"]
        [task] = salesforce.tasks
        assert "WhoId" not in task and task["Subject"].endswith(f"(ref {write.write_id})")
        assert await rig.agent.flush_pending_writes() == 0
        assert len(salesforce.tasks) == 1


async def test_a_verified_callers_writes_are_unchanged() -> None:
    async with call(TrialistData(email=JANE)) as (sandbox, rig):
        await rig.say("Please log a note: wants a demo")
        [task] = sandbox.salesforce.tasks
        jane = next(r for r in sandbox.salesforce.records if r["Email"] == JANE)
        assert task["WhoId"] == jane["Id"] and task["OwnerId"] == jane["OwnerId"]
        assert not task["Subject"].startswith(INTAKE_PREFIX)


# ---------------------------------------------------------------------------------------
# a changed email: nothing bound to the old address survives
# ---------------------------------------------------------------------------------------


async def test_a_changed_email_drops_the_old_addresses_demo_times() -> None:
    async with call(unknown()) as (sandbox, rig):
        await rig.say(f"How is my trial usage? It's {JANE}")
        await rig.say("Any demo times available?")
        assert rig.data.offered_slots and rig.data.booking_session is not None
        await rig.say(f"Sorry, my usage under {NOBODY} I meant")
        assert (rig.data.email, rig.data.identity.email) == (NOBODY, NOBODY)
        assert rig.data.offered_slots == {} and rig.data.booking_session is None
        out = tool_output(await rig.say("Book the first option"), "book_demo")
        assert out.output == NO_SLOTS_OFFERED  # never booked under the first address
        await rig.say("Any demo times available?")
        await rig.say("Book the first option")
        assert [m.guest_email for m in sandbox.chilipiper.meetings] == [NOBODY]


# ---------------------------------------------------------------------------------------
# parallel tools: one identity decision at a time, the phone-check limit holds
# ---------------------------------------------------------------------------------------


async def test_parallel_tools_cannot_exceed_the_phone_check_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from src.sandbox.openai_server import ToolCall, Turn

    addresses = (JANE, NOBODY, "maria.garcia@initech.example.com", SAM)
    before = refusals("get_trial_usage", "sip_limit")
    async with call(unknown(STRANGER_NUMBER)) as (sandbox, rig):
        sandbox.openai.say(
            Turn(tool_calls=[ToolCall("get_trial_usage", {"email": a}) for a in addresses])
        )
        with caplog.at_level(logging.INFO, logger="pandadoc.agent"):
            result = await rig.say("How is the trial usage of all of these?")
        outputs = [e.item.output for e in result.events if e.type == "function_call_output"]
        assert outputs == [PRIVACY_CLAIMED] * len(addresses)
        contact_queries = sandbox.salesforce.requests("/services/data/*/query")
        batch_reads = sandbox.hubspot.requests("/crm/v3/objects/contacts/batch/read")
        assert len(contact_queries) == len(batch_reads) == MAX_SIP_CHECKS
        assert len(rig.data.identity_ledger.phone_checks) == MAX_SIP_CHECKS
        assert rig.data.identity.sip_checked == tuple(rig.data.identity_ledger.phone_checks)
        assert rig.data.identity.trust == "claimed"
        assert sandbox.amplitude.journal == []
    assert refusals("get_trial_usage", "sip_limit") == before + len(addresses) - MAX_SIP_CHECKS
    assert "(sip_limit)" in caplog.text and SAM not in caplog.text


async def test_the_limit_holds_when_a_verified_tool_fails_afterwards() -> None:
    async with call(unknown(SAM_NUMBER)) as (sandbox, rig):
        sandbox.amplitude.inject("*", FaultKind.SERVICE_UNAVAILABLE)
        out = tool_output(await rig.say(f"How is my trial usage? It's {SAM}"), "get_trial_usage")
        assert out.is_error  # Amplitude failed: the tool's changes were rolled back ...
        assert rig.data.identity.trust == "none"
        assert rig.data.identity_ledger.phone_checks == [SAM]  # ... but not the check
        sandbox.amplitude.clear()
        rig.agent.circuit_breakers["amplitude"].reset()
        await rig.say(f"Usage for {JANE} then?")
        checks = len(sandbox.salesforce.requests("/services/data/*/query"))
        assert checks == MAX_SIP_CHECKS
        out = tool_output(await rig.say(f"What's my usage? {NOBODY}"), "get_trial_usage")
        assert out.output == PRIVACY_CLAIMED
        # Sam again: verified by the earlier match, without a new request.
        out = tool_output(await rig.say(f"Sorry, I'm {SAM}: my usage?"), "get_trial_usage")
        assert "one document" in out.output
        assert rig.data.identity.describe() == "verified(sip)"
        assert len(sandbox.salesforce.requests("/services/data/*/query")) == checks
