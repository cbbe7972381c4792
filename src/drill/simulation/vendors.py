"""In-process stand-ins for the four vendors, on virtual time.

They keep the sandbox's semantics (:mod:`src.sandbox`): the same people
(:data:`~src.sandbox.data.TRIAL_USERS`), a journal of every request and of every write
applied, and faults served per request. Each request takes the next outcome of the
vendor's schedule (set per step by the state machine), then the vendor's mode
(healthy, down, flapping). The failures are the ones our HTTP layer
(:mod:`src.services.http`) raises for the same wire events: a status becomes the error
:func:`~src.services.http.error_for_status` gives, a hang or a lost answer waits out the
request's time limit and is a :class:`~src.errors.ServiceTimeout`, a reset mid-body is a
:class:`~src.errors.ConnectionFailed` for a read and an outcome-unknown
:class:`~src.errors.BadResponse` for a write, a malformed body is a ``BadResponse``.

Amplitude is our real :class:`~src.services.amplitude.AmplitudeClient` (its quota and
usage cache included) over an in-process HTTP stand-in (:class:`AmplitudeHttp`);
Salesforce, HubSpot and ChiliPiper are stand-in clients with the methods the tools call.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from src.attempt import ATTEMPT_TIMER, VENDOR_CONTACT
from src.errors import BadResponse, ConnectionFailed, NotFound, ServiceError, ServiceTimeout
from src.latency import REQUEST_LIMIT
from src.sandbox.amplitude import generate_events
from src.sandbox.data import TRIAL_USERS, TrialUser
from src.services.chilipiper import BookedMeeting, BookingSession, DemoSlot, Guest
from src.services.crm import CrmContact
from src.services.http import error_for_status, write_outcome_is_ambiguous

from .clock import VirtualClock

__all__ = [
    "PEOPLE",
    "SENDER",
    "AmplitudeHttp",
    "ChiliPiperStandIn",
    "HubSpotStandIn",
    "Outcome",
    "SalesforceStandIn",
    "Vendor",
    "Vendors",
]

T = TypeVar("T")
# A meeting ChiliPiper holds: (guest email, start, meeting id, the conversation that
# booked it). Two conversations of one caller may each book a time (ChiliPiper may have
# several reps free at it); one conversation's booking held twice is a double send.
Meeting = tuple[str, datetime, str, int]
_CONVERSATIONS = itertools.count(1)
#: The world's key of the job whose process sends a request (``None``: a drain from
#: another process), set by :class:`~.world.World` around a job's steps.
SENDER: ContextVar[int | None] = ContextVar("sim_sender", default=None)
PEOPLE: tuple[TrialUser, ...] = TRIAL_USERS
FAST_S = 0.05  # a healthy answer
SLOW_S = 1.2  # slow but healthy: under the 2.5 s request limit
LONG_RETRY_AFTER_S = 10.0  # longer than the retry policy's max delay


class Outcome(StrEnum):
    OK = "ok"
    SLOW = "slow"
    E500 = "500"
    E503 = "503"
    RATE_LIMITED = "429"  # Retry-After: 1 s
    RATE_LIMITED_LONG = "429-long"  # Retry-After: 10 s
    HANG = "hang"
    RESET = "reset-mid-body"
    MALFORMED = "malformed"
    LOST = "applied-answer-lost"  # a write applied, its answer lost (a read: a hang)


ANSWERED = frozenset({Outcome.OK, Outcome.SLOW})


@dataclass
class Request:
    vendor: str
    op: str
    outcome: Outcome
    at: float
    applied: bool = False
    # the retry attempt it was sent in (that attempt's timer, kept alive here so its id
    # stays unique): one answer may take several requests (Amplitude's usersearch, then
    # useractivity), and the breaker counts attempts, not requests
    attempt: object = None
    job: int | None = None  # the job whose process sent it (SENDER)
    # the protected call it was sent in (what that call listens with, kept alive here):
    # the rate rules judge calls, as the caller felt them
    call: object = None
    done: float = 0.0  # when an answered request's answer came (the clock)

    @property
    def answered(self) -> bool:
        return self.outcome in ANSWERED


def latest_per(requests: Iterable[Request], key: Callable[[Request], int]) -> Iterator[Request]:
    """Each unit's latest request, newest unit first, from ``requests`` given newest
    first; a unit is the requests sharing ``key`` (an attempt, a call). A failed request
    ends its unit, so the unit failed when its latest request did."""
    seen: set[int] = set()
    for req in requests:
        unit = key(req)
        if unit not in seen:
            seen.add(unit)
            yield req


def _attempt(req: Request) -> int:
    return id(req.attempt) if req.attempt is not None else id(req)  # untagged: its own


def _call(req: Request) -> int:
    return id(req.call) if req.call is not None else id(req)


def last_attempts_failed(journal: list[Request], n: int = 3, job: int | None = None) -> bool:
    """Whether the last ``n`` attempts in ``journal`` (with ``job``: that job's own) all
    failed (the breaker's honest reason to open). Walks back only as far as the ``n``
    attempts take."""
    mine = (r for r in reversed(journal) if job is None or r.job == job)
    last = list(itertools.islice(latest_per(mine, _attempt), n))
    return len(last) == n and not any(r.answered for r in last)


#: Requests of a call sent once by its own choice (the outbox's send: its retry is the
#: next flush); the rate rules leave such calls to the consecutive rule.
SENT_ONCE_OPS = frozenset({"create_task", "create_note"})


def rate_rule_honest(
    journal: list[Request],
    job: int,
    window: int,
    minimum: int,
    threshold: float,
    since: float = float("-inf"),
) -> bool:
    """Whether ``job``'s last ``window`` calls in ``journal`` (at least ``minimum``,
    sent from ``since`` on) failed, as the caller felt them (a call's last request
    failed), at ``threshold`` or more: the failure-rate rule's honest reason to open.
    Calls sent once by choice (:data:`SENT_ONCE_OPS`) are not judged, as the rule does
    not judge them."""
    recent = itertools.takewhile(lambda r: r.at >= since, reversed(journal))
    mine = (r for r in recent if r.job == job and r.op not in SENT_ONCE_OPS)
    calls = list(itertools.islice(latest_per(mine, _call), window))
    failed = sum(not r.answered for r in calls)
    return len(calls) >= minimum and failed >= threshold * len(calls)


@dataclass
class Write:
    """A note, Task or meeting the vendor holds."""

    vendor: str
    record_id: str
    text: str
    at: float


@dataclass
class Vendor:
    """One vendor's faults and journal. ``mode``: ``healthy``, ``down`` (every request
    503) or ``flapping`` (every other request 503)."""

    name: str
    clock: VirtualClock
    service_timeout: float
    mode: str = "healthy"
    schedule: deque[Outcome] = field(default_factory=deque)
    journal: list[Request] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    _flip: int = 0

    def peek(self, n: int) -> list[Outcome]:
        """The next ``n`` outcomes, without taking them (the oracle's replay)."""
        out = list(itertools.islice(self.schedule, n))
        flip = self._flip
        while len(out) < n:
            out.append(self._mode_outcome(flip))
            flip += 1
        return out

    def _mode_outcome(self, flip: int) -> Outcome:
        if self.mode == "down":
            return Outcome.E503
        if self.mode == "flapping":
            return Outcome.E503 if flip % 2 == 0 else Outcome.OK
        return Outcome.OK

    def _next(self) -> Outcome:
        if self.schedule:
            return self.schedule.popleft()
        outcome = self._mode_outcome(self._flip)
        self._flip += 1
        return outcome

    @property
    def healthy(self) -> bool:
        return self.mode == "healthy" and not self.schedule

    def last_failed(self, n: int = 3, job: int | None = None) -> bool:
        """Whether the last ``n`` attempts (with ``job``: that job's own) all failed
        (the breaker's honest reason)."""
        return last_attempts_failed(self.journal, n, job)

    def _limit(self) -> float:
        adapted = REQUEST_LIMIT.get()
        return min(self.service_timeout, adapted) if adapted else self.service_timeout

    async def serve(
        self, op: str, answer: Callable[[], T], *, write: Callable[[], None] | None = None
    ) -> T:
        """One request: ``write`` applies it at the vendor, ``answer`` builds the
        answer (it may raise ``NotFound``, an answer too)."""
        outcome = self._next()
        timer = ATTEMPT_TIMER.get()
        attempt = timer[0] if timer is not None else None
        req = Request(
            self.name,
            op,
            outcome,
            self.clock.now(),
            attempt=attempt,
            job=SENDER.get(),
            call=VENDOR_CONTACT.get(),
        )
        self.journal.append(req)

        def apply() -> None:
            if write is not None:
                write()
                req.applied = True

        if outcome in (Outcome.OK, Outcome.SLOW):
            await self.clock.sleep(SLOW_S if outcome is Outcome.SLOW else FAST_S)
            apply()
            req.done = self.clock.now()
            return answer()
        await self.clock.sleep(FAST_S)
        if outcome in (Outcome.E500, Outcome.E503):
            raise _status(self.name, int(outcome.value))
        if outcome is Outcome.RATE_LIMITED:
            raise _status(self.name, 429, "1")
        if outcome is Outcome.RATE_LIMITED_LONG:
            raise _status(self.name, 429, str(int(LONG_RETRY_AFTER_S)))
        if outcome in (Outcome.HANG, Outcome.LOST):
            if outcome is Outcome.LOST:
                apply()
            await self.clock.sleep(self._limit())
            raise ServiceTimeout(self.name, f"{self.name} did not answer within the limit")
        apply()  # reset mid-body and malformed: the server answered, so a write applied
        if outcome is Outcome.RESET and write is None:
            raise ConnectionFailed(self.name, f"{self.name} connection lost mid-body")
        raise BadResponse(self.name, f"{self.name} sent a broken body")


def _status(service: str, status: int, retry_after: str | None = None) -> ServiceError:
    headers = {"Retry-After": retry_after} if retry_after else {}
    error = error_for_status(service, status, headers)
    assert error is not None
    return error


class Vendors:
    """The four stand-ins of one simulated world (shared by every conversation)."""

    NAMES = ("amplitude", "salesforce", "hubspot", "chilipiper")

    def __init__(self, clock: VirtualClock, service_timeout: float) -> None:
        self.clock = clock
        self.by_name = {n: Vendor(n, clock, service_timeout) for n in self.NAMES}
        self.meetings: list[Meeting] = []

    def __getitem__(self, name: str) -> Vendor:
        return self.by_name[name]

    def set_schedule(self, schedules: Mapping[str, list[Outcome]]) -> None:
        for name, vendor in self.by_name.items():
            vendor.schedule = deque(schedules.get(name, ()))


def record_id(vendor: str, person: TrialUser) -> str:
    prefix = {"salesforce": "00Q", "hubspot": "hs-"}[vendor]
    return f"{prefix}{person.amplitude_id:012d}"


def owner_of(record: str) -> TrialUser | None:
    return next((p for p in PEOPLE if record.endswith(f"{p.amplitude_id:012d}")), None)


def _person(email: str) -> TrialUser | None:
    wanted = email.strip().casefold()
    return next((p for p in PEOPLE if p.email.casefold() == wanted), None)


def _contact(vendor: str, person: TrialUser) -> CrmContact:
    return CrmContact(
        id=record_id(vendor, person),
        source=vendor,
        first_name=person.first_name,
        last_name=person.last_name,
        company=person.company,
        title=person.title,
        owner_id="005000000000001" if vendor == "salesforce" else None,
        phone=person.phone or None,
    )


class _StandIn:
    def __init__(self, vendor: Vendor) -> None:
        self.vendor = vendor

    async def aclose(self) -> None:
        return None


class SalesforceStandIn(_StandIn):
    async def find_person(self, email: str) -> CrmContact:
        def answer() -> CrmContact:
            person = _person(email)
            if person is None or not person.in_salesforce:
                raise NotFound("salesforce", "no record")
            return _contact("salesforce", person)

        return await self.vendor.serve("find_person", answer)

    async def create_task(
        self, record: str, subject: str, body: str, *, owner_id: str | None = None
    ) -> str:
        v = self.vendor
        return await v.serve(
            "create_task",
            lambda: f"00T{len(v.writes):012d}",
            write=lambda: v.writes.append(Write(v.name, record, subject, v.clock.now())),
        )

    async def task_exists(self, record: str, ref: str) -> bool:
        v = self.vendor
        return await v.serve(
            "task_exists", lambda: any(w.record_id == record and ref in w.text for w in v.writes)
        )


class HubSpotStandIn(_StandIn):
    async def find_contact(self, email: str) -> CrmContact:
        def answer() -> CrmContact:
            person = _person(email)
            if person is None or not person.in_hubspot:
                raise NotFound("hubspot", "no record")
            return _contact("hubspot", person)

        return await self.vendor.serve("find_contact", answer)

    async def create_note(self, record: str, text: str) -> str:
        v = self.vendor
        return await v.serve(
            "create_note",
            lambda: f"{len(v.writes) + 1}",
            write=lambda: v.writes.append(Write(v.name, record, text, v.clock.now())),
        )

    async def note_exists(self, ref: str) -> bool:
        v = self.vendor
        return await v.serve("note_exists", lambda: any(ref in w.text for w in v.writes))


class ChiliPiperStandIn(_StandIn):
    """Opening a booking session and booking on it; an unknown earlier outcome is looked
    up before booking again, and bookings of one conversation go one at a time, a time
    booked here answered from memory (the real client's reconciliation, its lock and its
    cache, per conversation: two tools of one reply booking the same time are one)."""

    booking_url = ""

    def __init__(self, vendor: Vendor, meetings: list[Meeting]) -> None:
        super().__init__(vendor)
        self.meetings = meetings
        self.conversation = next(_CONVERSATIONS)  # one stand-in per job process
        self._in_doubt: set[tuple[str, datetime]] = set()
        self._booked: dict[tuple[str, datetime], BookedMeeting] = {}
        self._lock = asyncio.Lock()

    async def open_session(self, guest: Guest, now: datetime) -> BookingSession:
        start = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        times = tuple(start + timedelta(days=1, hours=h) for h in (1, 3, 5))
        return await self.vendor.serve(
            "open_session", lambda: BookingSession(f"route-{len(self.vendor.journal)}", times)
        )

    async def book(
        self, session: BookingSession, slot: DemoSlot, guest: Guest, *, now: datetime | None = None
    ) -> BookedMeeting:
        key = (guest.email.casefold(), slot.starts_at.astimezone(UTC))
        async with self._lock:
            known = self._booked.get(key)
            if known is None:
                known = self._booked[key] = await self._book(key, slot)
            return known

    async def _book(self, key: tuple[str, datetime], slot: DemoSlot) -> BookedMeeting:
        v = self.vendor
        if key in self._in_doubt:
            found = await v.serve(
                "find_meeting", lambda: next((m for m in self.meetings if m[:2] == key), None)
            )
            self._in_doubt.discard(key)
            if found is not None:
                return BookedMeeting(found[2], slot.starts_at, slot.slot_id)
        meeting_id = f"meeting-{len(self.meetings) + 1}"
        self._in_doubt.add(key)
        try:
            await v.serve(
                "schedule",
                lambda: None,
                write=lambda: self.meetings.append((*key, meeting_id, self.conversation)),
            )
        except ServiceError as exc:
            if not write_outcome_is_ambiguous(exc):
                self._in_doubt.discard(key)
            raise
        self._in_doubt.discard(key)
        return BookedMeeting(meeting_id, slot.starts_at, slot.slot_id)


class AmplitudeHttp:
    """Stands in for :class:`~src.services.http.ServiceHttp` under the real Amplitude
    client: ``usersearch`` and ``useractivity`` answered as the sandbox answers them."""

    def __init__(self, vendor: Vendor) -> None:
        self.vendor = vendor

    async def aclose(self) -> None:
        return None

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        key = str((kw.get("params") or {}).get("user", ""))
        now = self.vendor.clock.utc_now()

        def answer() -> Any:
            person = next(
                (p for p in PEOPLE if key.casefold() in (p.email.casefold(), str(p.amplitude_id))),
                None,
            )
            if path.endswith("usersearch"):
                if person is None:
                    return {"matches": [], "type": "nomatch"}
                return {
                    "matches": [{"user_id": person.email, "amplitude_id": person.amplitude_id}],
                    "type": "match_user_or_device_id",
                }
            if person is None:
                raise BadResponse("amplitude", "amplitude answered HTTP 400")
            events = generate_events(person, now)
            end = (now + timedelta(days=person.trial_days_left)).date().isoformat()
            return {
                "userData": {
                    "user_id": person.email,
                    "amplitude_id": person.amplitude_id,
                    "num_events": len(events),
                    "properties": {"trial_end_date": end, "company": person.company},
                },
                "events": events,
            }

        return await self.vendor.serve(path.rsplit("/", 1)[-1], answer)
