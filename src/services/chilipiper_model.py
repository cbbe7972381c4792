"""ChiliPiper values: scheduling link, booking session, slots, guest, booked meeting.

Plain data with no I/O; :mod:`src.services.chilipiper` (the client) re-exports them.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from ..phrases import booked

__all__ = [
    "MAX_WINDOW",
    "SLUG_PATTERN",
    "BookedMeeting",
    "BookingSession",
    "ConciergeFields",
    "DemoSlot",
    "FormField",
    "Guest",
    "SchedulingLink",
    "business_window",
    "spoken_time",
    "utc_iso",
]

MAX_WINDOW = timedelta(days=7)  # the API's longest window (availability, meeting list)
SLUG_PATTERN = re.compile(r"[-0-9a-z_]+")  # the OpenAPI ``slug`` pattern
# A Concierge router's form, as ``(our fact, the router's field reference)`` pairs; our
# facts are ``email``, ``name``, ``first_name``, ``last_name`` and ``company``
# (``CHILIPIPER_CONCIERGE_FIELDS``, parsed by :func:`~.chilipiper_wire.concierge_fields`).
ConciergeFields = tuple[tuple[str, str], ...]


# -- values --------------------------------------------------------------------------------


def spoken_time(when: datetime, tz: tzinfo) -> str:
    """``when`` in ``tz`` the way people say it: ``"Tuesday at 3 PM"``,
    ``"Friday at 9:30 AM"``, ``"Monday at 12 PM"``."""
    local = when.astimezone(tz)
    hour = local.hour % 12 or 12
    minutes = f":{local.minute:02d}" if local.minute else ""
    return f"{local:%A} at {hour}{minutes} {'AM' if local.hour < 12 else 'PM'}"


def utc_iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def business_window(now: datetime, business_days: int = 3) -> tuple[datetime, timedelta]:
    """From ``now`` to the end (UTC midnight) of the ``business_days``-th weekday after
    today: "the next few business days", never longer than the API's 7 days."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    day, counted = now.astimezone(UTC).date(), 0
    while counted < business_days:
        day += timedelta(days=1)
        counted += day.weekday() < 5
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
    return now, min(end - now, MAX_WINDOW)


@dataclass(frozen=True)
class SchedulingLink:
    """Where bookings are opened: a scheduling link (``CHILIPIPER_SCHEDULING_LINK``, its
    ``slug`` or its ``id``, a UUID), or a Concierge router (``CHILIPIPER_CONCIERGE_ROUTER``,
    its slug in ``router``)."""

    slug: str | None = None
    id: str | None = None
    router: str | None = None

    @classmethod
    def concierge(cls, value: str) -> SchedulingLink:
        """A Concierge router by slug; ``ValueError`` (without the value) otherwise."""
        value = value.strip()
        if not SLUG_PATTERN.fullmatch(value):
            raise ValueError("a Concierge router is a slug (a-z, 0-9, - and _)")
        return cls(router=value)

    @classmethod
    def parse(cls, value: str) -> SchedulingLink:
        """A UUID is an id, anything else must be a slug; ``ValueError`` otherwise (the
        message never repeats the value)."""
        value = value.strip()
        # Shaped like a UUID (hex groups split by four hyphens): meant as an id.
        if (re.fullmatch(r"[0-9a-fA-F-]+", value) and value.count("-") >= 4) or re.fullmatch(
            r"[0-9a-fA-F]{8}(-\w+){4}", value
        ):
            try:
                return cls(id=str(uuid.UUID(value)))
            except ValueError:
                raise ValueError("a scheduling link id must be a UUID") from None
        if SLUG_PATTERN.fullmatch(value):
            return cls(slug=value)
        raise ValueError("a scheduling link is a slug (a-z, 0-9, - and _) or a UUID")


@dataclass(frozen=True)
class DemoSlot:
    """An open demo time; ``slot_id`` derives from the start time alone
    (``slot-20250107T1500Z``), so the same time offered twice has the same id."""

    slot_id: str
    starts_at: datetime

    def __post_init__(self) -> None:
        if self.starts_at.tzinfo is None or self.starts_at.utcoffset() is None:
            raise ValueError("DemoSlot.starts_at must be timezone-aware")

    @classmethod
    def at(cls, starts_at: datetime) -> DemoSlot:
        if starts_at.tzinfo is None:
            raise ValueError("DemoSlot.starts_at must be timezone-aware")
        return cls(f"slot-{starts_at.astimezone(UTC):%Y%m%dT%H%MZ}", starts_at)

    def spoken(self, tz: tzinfo) -> str:
        return spoken_time(self.starts_at, tz)


@dataclass(frozen=True)
class FormField:
    """A booking-form field: ``requirement`` is Required, Optional or Hidden (then
    ``value`` is what must be passed)."""

    reference: str
    requirement: str
    value: str | None = None


@dataclass(frozen=True)
class BookingSession:
    """What ``init-simple`` answered: a single-use route and its open start times."""

    route_id: str
    start_times: tuple[datetime, ...]
    form_fields: tuple[FormField, ...] = ()

    def slots(self, limit: int = 3) -> list[DemoSlot]:
        return [DemoSlot.at(s) for s in sorted(self.start_times)[:limit]]

    def offers(self, starts_at: datetime) -> bool:
        return starts_at in self.start_times


@dataclass(frozen=True)
class Guest:
    """Who the demo is for. ``timezone`` is an IANA name."""

    email: str
    timezone: str
    name: str = ""
    company: str = ""


@dataclass(frozen=True)
class BookedMeeting:
    """A demo that exists in ChiliPiper."""

    meeting_id: str
    starts_at: datetime
    slot_id: str

    def spoken_summary(self, tz: tzinfo | None = None) -> str:
        """One sentence confirming the booking, never ids; without the caller's zone it
        leaves the time out rather than speak it in a zone the caller may not be in."""
        return booked(None if tz is None else spoken_time(self.starts_at, tz))
