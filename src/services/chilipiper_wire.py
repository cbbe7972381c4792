"""ChiliPiper's wire format: every vendor fact the client relies on, in one place.

Sources: ``reference/apis/chilipiper-booking.md`` (the two-step booking, the meeting list
and Concierge, gathered from ChiliPiper's published API material) and
``reference/apis/chilipiper-meetings.openapi.yml`` (``meetingListPut``: ``page``,
``pageSize``, ``hasMore`` ``Yes``/``No``). The reference itself says field names "should
be checked against a live account before go-live": change them here and nowhere else.

Request builders and response parsers only (no I/O); :mod:`src.services.chilipiper` is
the client that sends them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import BadResponse
from ..redaction import get_logger
from .chilipiper_model import (
    BookingSession,
    ConciergeFields,
    FormField,
    Guest,
    SchedulingLink,
    utc_iso,
)

__all__ = [
    "CONCIERGE_EMAIL_FIELD",
    "CONCIERGE_INIT_PATH",
    "CONCIERGE_SCHEDULE_PATH",
    "DEFAULT_BASE_URL",
    "DEFAULT_CONCIERGE_FIELDS",
    "HAS_MORE",
    "INIT_PATH",
    "MEETINGS_PAGE_SIZE",
    "MEETINGS_PATH",
    "MEETING_LOOKUP_PAGES",
    "SCHEDULE_PATH",
    "ListedMeeting",
    "concierge_fields",
    "concierge_form",
    "init_request",
    "meeting_page",
    "meetings_query",
    "parse_outcome",
    "parse_session",
    "schedule_body",
    "schedule_path",
]

SERVICE = "chilipiper"
logger = get_logger("pandadoc.services.chilipiper")

# == ChiliPiper facts (reference/apis/chilipiper-booking.md, chilipiper-meetings.openapi.yml) ==
# Also ChiliPiper facts, kept with the plain values they check (no I/O there):
# chilipiper_model.MAX_WINDOW (a window of at most 7 days, availability and meeting list)
# and chilipiper_model.SLUG_PATTERN (the OpenAPI ``slug`` pattern).
DEFAULT_BASE_URL = "https://fire.chilipiper.com/api/fire-edge"
INIT_PATH = "/v1/org/schedulingLinks/init-simple"
SCHEDULE_PATH = "/v1/org/schedulingLinks/routing/{route_id}/schedule-simple"
CONCIERGE_INIT_PATH = "/v1/org/concierge/routers/{router}/rest"
CONCIERGE_SCHEDULE_PATH = "/v1/org/concierge/routing/{route_id}/schedule-simple"
# meetingListPut (scope meeting.read): ``{start, end (exclusive, <= 7 days), guestEmail,
# status, page (zero-based), pageSize}`` -> ``{"data": {"list": [...]}, "hasMore": "Yes" |
# "No"}``; each meeting has ``meetingId``, ``dateTime.start``, ``primaryGuest.value``.
MEETINGS_PATH = "/v2/org/meetings/meetings"
HAS_MORE = {"Yes": True, "No": False}
MEETINGS_PAGE_SIZE = 50
# A one-minute window for one guest holds one meeting, or a handful; pages beyond this
# many mean the answer cannot be trusted to end (the outcome stays unknown).
MEETING_LOOKUP_PAGES = 5
# Concierge start times may be plain instants or objects ``{startTime, attendees}`` (as
# the availability and hand-off endpoints answer); ``init-simple`` gives instants.
START_TIME_KEY = "startTime"
# Concierge routers take their own form field names; every trigger kind must include
# ``PersonEmail`` (the published onboarding material); the rest is the router's form,
# hence configurable (``CHILIPIPER_CONCIERGE_FIELDS``).
CONCIERGE_EMAIL_FIELD = "PersonEmail"
DEFAULT_CONCIERGE_FIELDS: ConciergeFields = (
    ("email", CONCIERGE_EMAIL_FIELD),
    ("first_name", "PersonFirstName"),
    ("last_name", "PersonLastName"),
    ("company", "CompanyName"),
)
# == end of ChiliPiper facts =====================================================================

_ROUTE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_MEETING_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def instant(value: Any, what: str) -> datetime:
    """An aware ISO-8601 instant in UTC, else :class:`BadResponse` (never the value)."""
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise BadResponse(SERVICE, f"{what} holds a value that is not a time") from None
    if parsed.tzinfo is None:
        raise BadResponse(SERVICE, f"{what} holds a time without a zone")
    return parsed.astimezone(UTC)


def start_time(value: Any) -> datetime:
    """A start time given as an instant or as an object ``{startTime, attendees}``."""
    if isinstance(value, dict):
        return instant(value.get(START_TIME_KEY), "startTimes[].startTime")
    return instant(value, "startTimes")


CONCIERGE_FACTS = ("email", "name", "first_name", "last_name", "company")
_FORM_REFERENCE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


def concierge_fields(text: str) -> ConciergeFields:
    """``CHILIPIPER_CONCIERGE_FIELDS``: ``fact=Reference`` pairs separated by commas, e.g.
    ``email=PersonEmail,name=FullName,company=CompanyName`` (facts: ``email``, ``name``,
    ``first_name``, ``last_name``, ``company``). Empty: :data:`DEFAULT_CONCIERGE_FIELDS`.
    ``ValueError`` (one line, naming the entry by position) when a pair is malformed, a
    fact is unknown or repeated, a reference is used twice, or ``email`` does not map to
    ``PersonEmail``."""
    if not text.strip():
        return DEFAULT_CONCIERGE_FIELDS
    pairs: list[tuple[str, str]] = []
    for n, entry in enumerate(text.split(","), start=1):
        fact, sep, ref = (part.strip() for part in entry.partition("="))
        if not sep or fact not in CONCIERGE_FACTS or not _FORM_REFERENCE.fullmatch(ref):
            raise ValueError(
                f"entry {n} must be fact=FormField with a fact among "
                f"{', '.join(CONCIERGE_FACTS)} and a field name of letters, digits, _ . -"
            )
        if any(fact == f or ref == r for f, r in pairs):
            raise ValueError(f"entry {n} repeats a fact or a form field")
        pairs.append((fact, ref))
    if ("email", CONCIERGE_EMAIL_FIELD) not in pairs:
        raise ValueError(f"email must map to {CONCIERGE_EMAIL_FIELD} (every router requires it)")
    return tuple(pairs)


def concierge_form(guest: Guest, fields: ConciergeFields) -> dict[str, str]:
    """The router's form for ``guest``: each of our facts under the router's own field
    name (``CHILIPIPER_CONCIERGE_FIELDS``); facts we do not know are left out."""
    first, _, last = guest.name.partition(" ")
    known = {
        "email": guest.email,
        "name": guest.name,
        "first_name": first,
        "last_name": last,
        "company": guest.company,
    }
    return {ref: known[key] for key, ref in fields if known.get(key)}


def init_request(
    link: SchedulingLink,
    guest: Guest,
    start: datetime,
    span: timedelta,
    fields: ConciergeFields,
) -> tuple[str, Any]:
    """The path and body that open a booking session."""
    interval = {"startsAt": utc_iso(start), "duration": f"PT{int(span.total_seconds())}S"}
    if link.router:
        # Concierge: the router's form is the input; with an interval it answers times
        # and a routing id (without one, a booking link).
        body = {
            "form": concierge_form(guest, fields),
            "options": {"guestTimezone": guest.timezone, "interval": interval},
        }
        return CONCIERGE_INIT_PATH.format(router=link.router), body
    ref: dict[str, Any] = {"id": link.id} if link.id else {"slug": link.slug}
    return INIT_PATH, {
        "link": ref,
        "guestEmail": guest.email,
        "guestTimezone": guest.timezone,
        "interval": interval,
        "outputs": ["StartTimes"],
    }


def schedule_path(link: SchedulingLink, route_id: str) -> str:
    template = CONCIERGE_SCHEDULE_PATH if link.router else SCHEDULE_PATH
    return template.format(route_id=route_id)


def parse_session(data: Any) -> BookingSession:
    """``{routeId, startTimes[], formFields[{reference, requirement, dataType}], failures}``;
    ``requirement`` is ``"Required"``/``"Optional"`` or ``{"type": "Hidden", "value": v}``.
    Concierge names its route ``routingId``; its start times may be objects."""
    route_id = data.get("routeId", data.get("routingId")) if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(route_id, str):
        raise BadResponse(SERVICE, "init-simple answer has no routeId")
    raw_times = data.get("startTimes", data.get("slots"))
    if not _ROUTE_ID.fullmatch(route_id):  # it becomes part of a URL path
        raise BadResponse(SERVICE, "init-simple answer has a malformed routeId")
    if not isinstance(raw_times, list):
        raise BadResponse(SERVICE, "init-simple answer has no startTimes list")
    times = tuple(start_time(t) for t in raw_times)
    fields: list[FormField] = []
    for item in data.get("formFields") or ():
        req = item.get("requirement") if isinstance(item, dict) else None
        ref = item.get("reference") if isinstance(item, dict) else None
        if isinstance(req, dict):
            kind, value = req.get("type"), req.get("value")
        else:
            kind, value = req, None
        if not isinstance(ref, str) or kind not in ("Required", "Optional", "Hidden"):
            raise BadResponse(SERVICE, "init-simple answer has a malformed form field")
        fields.append(FormField(ref, str(kind), None if value is None else str(value)))
    if data.get("failures"):
        logger.info("chilipiper: %d host calendars reported failures", len(data["failures"]))
    return BookingSession(route_id, times, tuple(fields))


def schedule_body(guest: Guest, starts_at: datetime, form: Mapping[str, str]) -> Any:
    return {
        "startTime": utc_iso(starts_at),
        "guestEmail": guest.email,
        "guestTimezone": guest.timezone,
        "formData": dict(form),
    }


def parse_outcome(data: Any) -> tuple[str | None, str | None]:
    """``(meetingId, None)`` for ``Success``, ``(None, reason)`` for ``Failure``."""
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "Success" and isinstance(data.get("meetingId"), str) and data["meetingId"]:
        return data["meetingId"], None
    if kind == "Failure":
        return None, str(data.get("reason") or "unspecified")
    raise BadResponse(SERVICE, "schedule-simple answer is neither Success nor Failure")


def meetings_query(email: str, starts_at: datetime, page: int) -> Any:
    """One page of the guest's active meetings starting in the minute at ``starts_at``."""
    return {
        "start": utc_iso(starts_at),
        "end": utc_iso(starts_at + timedelta(minutes=1)),
        "guestEmail": email,
        "status": ["Active"],
        "page": page,
        "pageSize": MEETINGS_PAGE_SIZE,
    }


@dataclass(frozen=True)
class ListedMeeting:
    """One meeting of a list answer: its id, start and guest (as documented)."""

    meeting_id: str
    starts_at: datetime
    guest_email: str

    def is_for(self, email: str, starts_at: datetime) -> bool:
        return self.guest_email.casefold() == email.casefold() and self.starts_at == starts_at


def _listed(item: Any) -> ListedMeeting:
    if not isinstance(item, dict):
        raise BadResponse(SERVICE, "meeting list item is not an object")
    meeting_id = item.get("meetingId")
    when = item.get("dateTime")
    guest = item.get("primaryGuest")
    if not isinstance(meeting_id, str) or not _MEETING_ID.fullmatch(meeting_id):
        raise BadResponse(SERVICE, "meeting list item has no meetingId")
    if not isinstance(when, dict) or "start" not in when:
        raise BadResponse(SERVICE, "meeting list item has no dateTime.start")
    email = guest.get("value") if isinstance(guest, dict) else None
    if not isinstance(email, str) or not email:
        raise BadResponse(SERVICE, "meeting list item has no primaryGuest.value")
    return ListedMeeting(meeting_id, instant(when["start"], "dateTime.start"), email)


def meeting_page(data: Any) -> tuple[list[ListedMeeting], bool]:
    """The meetings of one list answer and whether another page follows. Any other shape
    (a bare list under ``data``, an item without the documented fields) is
    :class:`BadResponse`: "certainly not booked" is never concluded from what we cannot
    read."""
    inner = data.get("data") if isinstance(data, dict) else None
    items = inner.get("list") if isinstance(inner, dict) else None
    if not isinstance(items, list):
        raise BadResponse(SERVICE, "meeting list answer has no data.list")
    more = HAS_MORE.get(data.get("hasMore")) if isinstance(data.get("hasMore"), str) else None
    if more is None:
        raise BadResponse(SERVICE, "meeting list answer has no hasMore Yes/No")
    return [_listed(item) for item in items], more
