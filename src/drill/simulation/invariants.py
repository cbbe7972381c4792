"""The invariants, checked after every step; each is a plain function of the world that
returns what it found wrong (an empty list: it holds). Their names are what the test
suite and ``python -m src.drill simulate`` report.

* ``exactly_once``: no note, Task or meeting is held twice by its vendor (a meeting:
  twice for one conversation's booking).
* ``nothing_promised_lost``: a write the caller heard was saved is applied now; one
  they heard will be saved is applied by a drain that runs while its vendor is healthy
  and the write is due (not in its backoff), or sits in the dead-letter list.
* ``harm_free``: a read answered by its fallback where plain bounded retries, without
  breaker, budget or rate rule, would have got the data from the same fault schedule
  (:func:`oracle_answers`), unless the vendor really failed its last three attempts (a
  usage attempt is two requests), or the job's own open circuit refused it after the
  job's own last three attempts failed, or its own recent calls had failed (as its
  callers felt them) at the failure-rate threshold: the rate rule's honest reason (with
  the store down a process judges alone; a rate window is a process's own).
* ``probes_end_honestly``: no breaker is left half-open or holding a probe when no call
  is in flight, and a half-open circuit closes only after its vendor answered.
* ``store_faults_contained``: no store fault (nor anything but a vendor's failure)
  reaches a caller, and no step breaks.
* ``own_identity_only``: a caller hears only their own data, and writes go to their
  own record.
* ``nothing_technical``: no status code, URL, exception text, id or email is spoken.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from livekit.agents.llm import ToolError

from src.errors import CircuitOpenError, ServiceError
from src.settings import ResilienceSettings
from src.tools.runtime import MIN_ATTEMPT_S

from .adapter import FALLBACK, VENDOR_OF, half_open, probe_in_flight
from .vendors import FAST_S, PEOPLE, SLOW_S, Outcome, owner_of
from .world import World

__all__ = ["INVARIANTS", "oracle_answers"]

HOUR_S = 3600.0
DEFAULTS = ResilienceSettings()


def exactly_once(world: World) -> list[str]:
    found = []
    for name in ("salesforce", "hubspot"):
        refs = Counter(
            m.group(1) for w in world.vendors[name].writes for m in [_REF.search(w.text)] if m
        )
        found += [f"{name} holds write {ref[:8]} {n} times" for ref, n in refs.items() if n > 1]
    # one conversation's booking held twice (two calls of one caller may each book)
    meetings = Counter((email, start, by) for email, start, _, by in world.vendors.meetings)
    found += [f"{n} meetings for one booking" for n in meetings.values() if n > 1]
    return found


_REF = re.compile(r"\(ref ([0-9a-f]{32})\)")


def nothing_promised_lost(world: World) -> list[str]:
    found = []
    for p in world.promises.values():
        if p.saved and not world.applied(p.write_id):
            found.append(f"a {p.vendor} write the caller heard was saved is not there")
    for drain in world.drains[-1:]:
        if drain.store_down:
            continue
        live = {w.write_id for j in world.jobs.values() for w in j.agent.outbox.pending}
        exempt = live | world.memory_only | world.lost_by_store | drain.dead_letters
        exempt |= drain.not_due  # backing off (or claimed elsewhere): not this drain's
        for p in drain.promised:
            if (
                p.vendor in drain.healthy
                and p.write_id not in exempt
                and not world.applied(p.write_id)
            ):
                found.append(
                    f"a promised {p.vendor} write was not applied by a drain with "
                    f"{p.vendor} healthy ({drain.left} left waiting)"
                )
    world.drains.clear()
    return found


def oracle_answers(
    outcomes: list[Outcome],
    budget: float,
    r: ResilienceSettings = DEFAULTS,
    per_answer: int = 1,
) -> bool:
    """Whether plain bounded retries (no breaker, budget or rate rule) get an answer from
    these outcomes within ``budget`` seconds, with the longest backoff each time and the
    same rules of the turn (``Retry-After`` longer than the max delay and a hang are not
    waited out; a broken body is not repeated). An answer takes ``per_answer`` requests
    in a row (a usage lookup is a user search, then that user's activity); one that
    fails fails the attempt, and a retry starts the answer over."""
    t = 0.0
    min_attempt = max(min(MIN_ATTEMPT_S, r.service_timeout), r.service_timeout)
    queue = list(outcomes)
    for i in range(1 + r.max_retries):
        failed: Outcome | None = None
        took = 0.0  # the attempt's requests, one after the other
        for _ in range(per_answer):
            if not queue:
                return False  # past what was recorded: not judged
            outcome = queue.pop(0)
            took += SLOW_S if outcome is Outcome.SLOW else FAST_S
            if outcome not in (Outcome.OK, Outcome.SLOW):
                failed = outcome
                break
        if failed is None:
            return True
        if failed in (Outcome.HANG, Outcome.LOST, Outcome.MALFORMED, Outcome.RATE_LIMITED_LONG):
            return False
        t += took
        delay = min(r.max_delay, r.base_delay * 2**i)
        if failed is Outcome.RATE_LIMITED:
            delay = max(delay, 1.0)
        if t + delay + min_attempt >= budget:
            return False
        t += delay
    return False


def harm_free(world: World) -> list[str]:
    r = world.settings.resilience
    found = []
    for h in world.heard:
        if not h.alone or h.arg or h.tool not in FALLBACK or h.said != FALLBACK[h.tool]:
            continue
        person = PEOPLE[h.person]
        vendor = VENDOR_OF.get(h.tool, "salesforce")
        budget = min(r.turn_deadline, r.tool_deadline)
        if h.tool == "account":
            if not person.in_salesforce:
                continue
            budget -= min(r.service_timeout, budget / 3)  # HubSpot's reserve
        quota = world.quota_spent_at
        if h.tool == "usage" and quota is not None and world.clock.now() - quota < HOUR_S:
            continue  # the vendor's own hourly quota: the oracle could not ask either
        if h.failed_before[vendor] or world.vendors[vendor].last_failed():
            continue  # a circuit open on a vendor that really failed its last three
        if h.own_circuit.get(vendor):
            continue  # the job's own circuit, on the three attempts it saw fail
        per_answer = 2 if h.tool == "usage" else 1  # user search, then activity
        if oracle_answers(h.oracle[vendor], budget, r, per_answer):
            why = type(h.cause).__name__ if h.cause is not None else "a refusal"
            found.append(
                f"{h.tool}: fallback ({why}) where plain retries answer from "
                f"{[o.value for o in h.oracle[vendor]]}"
            )
    return found


def probes_end_honestly(world: World) -> list[str]:
    found = []
    for key, job in world.jobs.items():
        for name, breaker in job.agent.circuit_breakers.items():
            if probe_in_flight(breaker) or half_open(breaker):
                found.append(f"job {key}: {name} left half-open with no call in flight")
    for job in world.all_jobs():
        opened_at: dict[str, int] = {}
        for name, old, new, seen in job.transitions:
            if new == "half_open":
                opened_at[name] = seen
            elif old == "half_open":  # the probe's verdict (an open circuit that adopts
                # the fleet's closed view, e.g. once the store is back, is no probe's)
                start = opened_at.pop(name, None)
                since = world.vendors[name].journal[start:seen] if start is not None else []
                if new == "closed" and start is not None and not any(r.answered for r in since):
                    found.append(f"{name}: a half-open circuit closed without a vendor answer")
        job.transitions.clear()
    return found


def store_faults_contained(world: World) -> list[str]:
    found = list(world.crashes)
    world.crashes.clear()
    for h in world.heard:
        cause = h.cause
        if cause is None or isinstance(cause, ServiceError | CircuitOpenError | ToolError):
            continue
        found.append(f"{h.tool}: the caller heard a fallback for {type(cause).__name__}")
    return found


def own_identity_only(world: World) -> list[str]:
    found = []
    for h in world.heard:
        for i, other in enumerate(PEOPLE):
            if i == h.person:
                continue
            marks = (other.company, other.last_name, other.email)
            if any(m and re.search(rf"\b{re.escape(m)}\b", h.said) for m in marks):
                found.append(f"{h.tool}: a caller heard another person's data")
    for job in world.all_jobs():
        for w in job.writes.values():
            owner = owner_of(w.record_id)
            if owner is not None and owner is not job.person:
                found.append("a write went to another person's record")
    return found


_TECHNICAL = re.compile(
    r"\b[1-5]\d\d\b|https?:|://|www\.|@|(?-i:[A-Z]\w*(?:Error|Exception)\b|Traceback)|"
    r"\b[0-9a-f]{8,}\b|"
    r"\b00[A-Za-z0-9]{13,16}\b|\bhs-\d+|\bcircuit\b|\bref\b",
    re.IGNORECASE,
)


def nothing_technical(world: World) -> list[str]:
    return [
        f"{h.tool}: spoken text holds {m.group(0)!r}"
        for h in world.heard
        for m in [_TECHNICAL.search(h.said)]
        if m
    ]


INVARIANTS: dict[str, Callable[[World], list[str]]] = {
    "exactly_once": exactly_once,
    "nothing_promised_lost": nothing_promised_lost,
    "harm_free": harm_free,
    "probes_end_honestly": probes_end_honestly,
    "store_faults_contained": store_faults_contained,
    "own_identity_only": own_identity_only,
    "nothing_technical": nothing_technical,
}
