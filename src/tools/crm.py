"""The CRM tools: who the caller is (the record found by :mod:`src.tools.records`), and
the writes (call summaries, demo hand-offs) that go to that record, or, for a caller who
is not verified, to the *unverified intake* (:func:`intake_write`)."""

from __future__ import annotations

from typing import Literal

from livekit.agents.llm import ToolError

from src import report
from src.outbox import PendingWrite, WriteOutcome
from src.phrases import (
    ACCOUNT_FALLBACK,
    ACCOUNT_NOT_FOUND,
    ASK_EMAIL,
    NOTE_EMPTY,
    NOTE_FAILED,
    NOTE_NO_CRM,
    NOTE_NO_RECORD,
    NOTE_QUEUED,
    NOTE_SAVED,
    NOTE_UNCONFIRMED,
    NOTE_WILL_CONFIRM,
)
from src.redaction import get_logger, mask_email
from src.state import TrialistData
from src.tools.policy import Refusal, count_intake, readable_address
from src.tools.records import find_crm_record
from src.tools.runtime import ToolRuntime

__all__ = ["INTAKE_PREFIX", "crm_write", "intake_write", "log_summary", "lookup_account"]

#: The start of an unverified-intake Task subject / note (then the masked claimed email).
INTAKE_PREFIX = "Caller not verified, claimed"

logger = get_logger("pandadoc.agent")

MAX_SUMMARY_CHARS = 2000


async def lookup_account(rt: ToolRuntime, data: TrialistData, email: str) -> str:
    """Who the caller is in the CRM, as quoted data with one sentence to pass on
    (:meth:`~src.services.crm.CrmContact.for_model`); saves the record in ``data``. Only
    for the caller's own, verified identity (:mod:`src.tools.policy`)."""
    access = await readable_address(rt, data, email, "lookup_account")
    if isinstance(access, Refusal):
        return access.sentence
    address = access.email
    found = access.record or await find_crm_record(rt, address)
    data.email = address
    if found is None:
        raise ToolError(ACCOUNT_NOT_FOUND)
    data.crm_source, data.crm_record_id = found.source, found.id
    data.crm_owner_id = found.owner_id
    data.crm_summary = found.spoken_summary()
    data.name = data.name or found.full_name
    data.company = data.company or found.company
    rt.outbox.flush_soon()  # the CRM answers again: send what waited, in the background
    return found.for_model()


async def log_summary(rt: ToolRuntime, data: TrialistData, summary: str, interest: str) -> str:
    """Save a call summary to the caller's CRM record; every outcome is an honest
    sentence (saved, will be saved, not saved, or not known)."""
    deadline_at = rt.deadline()
    text = " ".join(str(summary).split())
    if not text:
        raise ToolError(NOTE_EMPTY)
    text = text[:MAX_SUMMARY_CHARS]
    level = interest if interest in ("low", "medium", "high") else "medium"
    subject = f"Trialist call summary (interest: {level})"
    try:
        outcome = await crm_write(rt, data, subject, text, deadline_at, tool="log_call_summary")
    except ToolError as exc:
        if exc.message == ASK_EMAIL:
            raise
        raise ToolError(NOTE_NO_CRM) from None  # no CRM could even find the record
    if outcome == "saved":
        data.summaries_logged += 1
        return NOTE_SAVED
    if outcome == "no_record":
        raise ToolError(NOTE_NO_RECORD)
    if outcome == "queued":
        raise ToolError(NOTE_QUEUED)
    if outcome == "rejected":
        raise ToolError(NOTE_FAILED)
    if outcome == "checking":
        raise ToolError(NOTE_WILL_CONFIRM)
    raise ToolError(NOTE_UNCONFIRMED)


async def crm_write(
    rt: ToolRuntime,
    data: TrialistData,
    subject: str,
    body: str,
    deadline_at: float,
    *,
    tool: str,
) -> WriteOutcome | Literal["no_record"]:
    """Write to the verified caller's CRM record (looked up first if needed); a caller
    who is not verified gets :func:`intake_write` instead. A write that certainly did
    not apply is queued in the outbox, outside the session state, so a tool's rollback
    cannot drop it."""
    if not (data.identity.verified and data.identity.email):
        return await intake_write(rt, data, subject, body, deadline_at, tool=tool)
    if data.crm_record_id is None or data.crm_source is None:
        if not data.email:
            raise ToolError(ASK_EMAIL)
        found = await find_crm_record(rt, data.email, deadline_at)
        if found is None:
            return "no_record"
        data.crm_source, data.crm_record_id = found.source, found.id
        data.crm_owner_id = found.owner_id
        data.crm_summary = found.spoken_summary()
    write = PendingWrite(
        data.crm_source, data.crm_record_id, subject, body, owner_id=data.crm_owner_id
    )
    outcome = await rt.outbox.send(write, deadline_at)
    report.write(rt, outcome)
    if outcome in ("queued", "checking"):
        await rt.outbox.queue(write)
    return outcome


async def intake_write(
    rt: ToolRuntime,
    data: TrialistData,
    subject: str,
    body: str,
    deadline_at: float,
    *,
    tool: str,
) -> WriteOutcome:
    """A non-verified caller's note or hand-off, written to the *unverified intake*: a
    Salesforce Task with no ``WhoId`` (owned by ``SALESFORCE_INTAKE_OWNER_ID``), or,
    without Salesforce, a HubSpot note associated with ``HUBSPOT_INTAKE_RECORD_ID`` or
    with nothing. Nothing is looked up, so neither the sentence nor the time it takes
    depends on whether the claimed address has a record, and nothing lands on a record
    as if its owner had said it. The subject says so, with the claimed email masked."""
    if not data.email:
        raise ToolError(ASK_EMAIL)
    source = (
        "salesforce"
        if rt.services.salesforce is not None
        else "hubspot"
        if rt.services.hubspot is not None
        else None
    )
    if source is None:
        raise ToolError(ACCOUNT_FALLBACK)
    count_intake(tool, data.email, data.identity)
    write = PendingWrite(
        source,
        "",  # attached to no person's record
        f"{INTAKE_PREFIX} {mask_email(data.email)}: {subject}",
        f"Unverified caller ({data.identity.describe()}). The email they gave, not "
        f"checked: {data.email}. Not attached to any record; confirm who they are "
        f"before acting on it.\n\n{body}",
    )
    outcome = await rt.outbox.send(write, deadline_at)
    if outcome in ("queued", "checking"):
        await rt.outbox.queue(write)
    return outcome
