"""Drill scenarios where two protections meet (issue #23): the retry budget after an
outage, the rate rules against a flapping vendor, and the outbox against a write that
cannot go. Each plays its own turns on a :class:`~src.drill.harness.Conversation` and
returns a :class:`SeamOutcome` (its turns, what went wrong, a note for the table)."""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from src.drill.harness import Conversation, TurnResult
from src.error_recovery import CircuitState
from src.outbox import OutboxPolicy, PendingWrite
from src.outbox.cli import _list, outbox_for
from src.sandbox import FaultKind
from src.services.wiring import TrialistServices
from src.store import StoreGuard, open_store

__all__ = [
    "FLAPPING_CALLS",
    "POISON_ATTEMPTS",
    "SeamOutcome",
    "blip_after_outage",
    "flapping_half",
    "outbox_poison_head",
]

USAGE = "how is my trial usage?"
FLAPPING_CALLS = 12  # past the rate rule's minimum of 10 calls
POISON_ATTEMPTS = 3  # the drill's dead-letter limit (production: OUTBOX_MAX_ATTEMPTS)
DELIVERABLE = 20
NO_CACHE = {"AMPLITUDE_USAGE_CACHE_TTL": "0"}  # every lookup goes to the vendor


@dataclass
class SeamOutcome:
    turns: list[TurnResult]
    problems: list[str] = field(default_factory=list)
    note: str = ""


def _answered(turn: TurnResult, tool: str) -> bool:
    """The tool ran and answered with data (not a spoken fallback)."""
    return any(t.name == tool and not t.is_error for t in turn.tools)


async def blip_after_outage(conv: Conversation) -> SeamOutcome:
    """A dead usage service (the circuit opens), healed (the probe closes it), then one
    reset mid-body: the retry budget still has a retry for it, so the caller hears data."""
    amplitude = conv.sandbox.amplitude
    amplitude.inject("*", FaultKind.SERVICE_UNAVAILABLE)
    dead = await conv.turn(USAGE)
    amplitude.clear()
    conv.clock.advance(conv.settings.resilience.recovery_timeout + 1)
    healed = await conv.turn(USAGE)
    budget = conv.agent.retry_budgets["amplitude"]
    retries_before = budget.retries
    amplitude.inject("*", FaultKind.RESET_MID_BODY, count=1)
    blip = await conv.turn(USAGE)
    problems = []
    if _answered(dead, "get_trial_usage"):
        problems.append("the dead vendor answered")
    if not _answered(healed, "get_trial_usage"):
        problems.append("the healed vendor's probe was not answered")
    if not _answered(blip, "get_trial_usage"):
        problems.append("the blip was not retried: the caller heard the fallback")
    retried = budget.retries - retries_before
    note = (
        f"dead: {dead.requests.get('amplitude', 0)} requests; blip retried {retried}x; "
        f"budget refused {budget.refused}"
    )
    return SeamOutcome([dead, healed, blip], problems, note)


async def flapping_half(conv: Conversation) -> SeamOutcome:
    """Every other user search fails (each failure retried at once): every call is
    answered and the circuit stays closed (the rate rule judges calls, not attempts)."""
    conv.sandbox.amplitude.inject("*/usersearch", FaultKind.FLAPPING, every=2)
    turns = [await conv.turn(USAGE) for _ in range(FLAPPING_CALLS)]
    answered = sum(_answered(t, "get_trial_usage") for t in turns)
    breaker = conv.agent.circuit_breakers["amplitude"]
    problems = []
    if answered < FLAPPING_CALLS:
        problems.append(f"{FLAPPING_CALLS - answered} of {FLAPPING_CALLS} calls unanswered")
    if breaker.state is not CircuitState.CLOSED:
        problems.append(f"the circuit is {breaker.state.value}")
    requests = sum(t.requests.get("amplitude", 0) for t in turns)
    note = f"{answered}/{FLAPPING_CALLS} answered, {requests} requests, {breaker.state.value}"
    return SeamOutcome(turns, problems, note)


async def outbox_poison_head(conv: Conversation) -> SeamOutcome:
    """A HubSpot write this process cannot send (HubSpot not configured) waits ahead of
    20 Salesforce writes in a SQLite store: one drain delivers the 20; the head is tried
    once per drain and dead-lettered after its attempts, then listed for an operator."""
    problems: list[str] = []
    record = str(next(r["Id"] for r in conv.sandbox.salesforce.records if r["object"] == "Contact"))
    services = TrialistServices.from_settings(conv.settings)
    if services.hubspot is not None:
        await services.hubspot.aclose()
        services.hubspot = None
    with tempfile.TemporaryDirectory(prefix="drill-outbox-") as folder:
        url = f"sqlite:///{Path(folder) / 'store.db'}"
        store = open_store(url)
        policy = OutboxPolicy(max_attempts=POISON_ATTEMPTS)
        outbox = outbox_for(conv.settings, services, StoreGuard(store), policy=policy)
        try:
            poison = PendingWrite("hubspot", "901", "Call summary", "for an absent CRM")
            await store.outbox_put(poison.write_id, poison.to_json())
            for n in range(DELIVERABLE):
                write = PendingWrite("salesforce", record, f"Call summary {n}", f"note {n}")
                await store.outbox_put(write.write_id, write.to_json())
            left = await outbox.flush()
            delivered = len(conv.sandbox.salesforce.tasks)
            if delivered != DELIVERABLE or left != 1:
                problems.append(f"one drain delivered {delivered} of {DELIVERABLE}")
            for _ in range(POISON_ATTEMPTS - 1):
                await outbox.flush()
            items = await store.outbox_list()
            listing = io.StringIO()
            with contextlib.redirect_stdout(listing):
                await _list(url)
        finally:
            await services.aclose()
            await store.aclose()
    dead = [i for i in items if i.dead]
    if [i.id for i in dead] != [poison.write_id] or len(items) != 1:
        problems.append("the undeliverable write was not dead-lettered alone")
    if poison.write_id[:12] not in listing.getvalue() or "DEAD" not in listing.getvalue():
        problems.append("the dead letter is not listed")
    turn = await conv.turn("what's on my account?")  # the conversation carries on
    note = (
        f"{delivered}/{DELIVERABLE} delivered in one drain; the head dead-lettered after "
        f"{POISON_ATTEMPTS} attempts ({dead[0].dead if dead else 'not'}) and listed"
    )
    return SeamOutcome([turn], problems, note)
