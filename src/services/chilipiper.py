"""ChiliPiper client: open a booking session, book a demo on it, never twice.

ChiliPiper's Edge API books server-side in two steps (``reference/apis/chilipiper-booking.md``):

1. :meth:`ChiliPiperClient.open_session` posts ``init-simple`` for the configured
   scheduling link (slug or id), the guest's email and time zone and a window of the next
   business days (or, configured with a Concierge router instead, posts the router's
   ``rest`` endpoint with the guest as its form). The answer is a single-use, short-lived
   **route id**, the open **start times** and the booking form's fields (Required /
   Optional / Hidden{value}). Read-only.
2. :meth:`ChiliPiperClient.book` posts ``schedule-simple`` on that route with the chosen
   start time and the form data; ChiliPiper answers ``Success{meetingId}`` or
   ``Failure{reason}``. This creates the meeting and sends invites at once.

**Never a double booking.** ChiliPiper documents no idempotency key, so ``schedule-simple``
is never re-sent blindly. The client remembers, for this conversation, every booking whose
outcome is unknown (a timeout, a dropped connection, a 5xx or a garbled 200 after the
request left, or a cancellation mid-flight; :func:`~src.services.http.write_outcome_is_ambiguous`).
The next :meth:`~ChiliPiperClient.book` for that guest and time first looks the meeting up
(``PUT /v2/org/meetings/meetings`` for the guest, a one-minute window at the start time,
well inside the API's 7-day limit) and schedules again only when it certainly does not
exist. So one :meth:`~ChiliPiperClient.book` call is **safe to retry**: the retry policy may
repeat it, and each attempt reconciles before it writes.

**Routes.** A route that was used (even by an attempt whose outcome is unknown), that
expired, or that ChiliPiper answered with ``Failure{reason}`` or 404 is renewed with a fresh
``init-simple`` before the next schedule; the failure reasons' vocabulary is not published,
so the client does not interpret them: if the fresh session still offers the time it books
it on the new route (once), otherwise the time is gone: :class:`SlotUnavailable`, which
carries the fresh session so the caller hears new options.

**Form fields.** Required fields are filled from what we know (email, name, company); one
we cannot fill raises :class:`FormIncomplete` (nothing is sent) and the tool hands the
booking to sales with the link's public booking URL. Hidden fields pass their value.

Field names that ChiliPiper's published material gives only informally (see the reference:
"should be checked against a live account before go-live") are isolated in the section
marked **UNCONFIRMED WIRE FORMAT** below; change them there and nowhere else.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from ..errors import BadResponse, InvalidRequest, NotFound, ServiceError
from ..redaction import get_logger, register_secret
from ..validation import is_valid_email
from .chilipiper_model import (
    MAX_WINDOW,
    BookedMeeting,
    BookingSession,
    DemoSlot,
    FormField,
    Guest,
    SchedulingLink,
    business_window,
    spoken_time,
    utc_iso,
)
from .http import (
    DEFAULT_HTTP_OPTIONS,
    HttpOptions,
    ServiceClient,
    ServiceHttp,
    write_outcome_is_ambiguous,
)

__all__ = [
    "CONCIERGE_INIT_PATH",
    "CONCIERGE_SCHEDULE_PATH",
    "DEFAULT_BASE_URL",
    "INIT_PATH",
    "MEETINGS_PATH",
    "SCHEDULE_PATH",
    "BookedMeeting",
    "BookingSession",
    "ChiliPiperClient",
    "DemoSlot",
    "FormField",
    "FormIncomplete",
    "Guest",
    "SchedulingLink",
    "SlotUnavailable",
    "business_window",
    "spoken_time",
]

SERVICE = "chilipiper"
DEFAULT_BASE_URL = "https://fire.chilipiper.com/api/fire-edge"
INIT_PATH = "/v1/org/schedulingLinks/init-simple"
SCHEDULE_PATH = "/v1/org/schedulingLinks/routing/{route_id}/schedule-simple"
CONCIERGE_INIT_PATH = "/v1/org/concierge/routers/{router}/rest"
CONCIERGE_SCHEDULE_PATH = "/v1/org/concierge/routing/{route_id}/schedule-simple"
MEETINGS_PATH = "/v2/org/meetings/meetings"  # meetingListPut, scope meeting.read

_ROUTE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_REASON = re.compile(r"[A-Za-z_]{1,64}")

logger = get_logger("pandadoc.services.chilipiper")


class SlotUnavailable(InvalidRequest):
    """The chosen time is no longer open. ``fresh`` is a new booking session (its open
    times are the options to offer now), or ``None`` when none could be opened."""

    def __init__(self, message: str, fresh: BookingSession | None = None) -> None:
        super().__init__(SERVICE, message, status=None)
        self.fresh = fresh


class FormIncomplete(InvalidRequest):
    """The booking form requires a field we cannot fill; nothing was sent."""


# == UNCONFIRMED WIRE FORMAT ===================================================================
# ChiliPiper publishes init-simple / schedule-simple only informally, and the meeting list's
# item shape only in prose ("payload structure might change"). Every field name below comes
# from that material and MUST be checked against a live account before go-live. Nothing
# else in this module depends on the names.


def _init_request(
    link: SchedulingLink, guest: Guest, start: datetime, span: timedelta
) -> tuple[str, Any]:
    """The path and body that open a booking session."""
    interval = {"startsAt": utc_iso(start), "duration": f"PT{int(span.total_seconds())}S"}
    if link.router:
        # Concierge: the router's form is the input; with an interval it answers times
        # and a routing id (without one, a booking link).
        form = {"email": guest.email, "name": guest.name, "company": guest.company}
        body = {
            "form": {k: v for k, v in form.items() if v},
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


def _schedule_path(link: SchedulingLink, route_id: str) -> str:
    template = CONCIERGE_SCHEDULE_PATH if link.router else SCHEDULE_PATH
    return template.format(route_id=route_id)


def _parse_session(data: Any) -> BookingSession:
    """``{routeId, startTimes[], formFields[{reference, requirement, dataType}], failures}``;
    ``requirement`` is ``"Required"``/``"Optional"`` or ``{"type": "Hidden", "value": v}``.
    Concierge names its route ``routingId``."""
    route_id = data.get("routeId", data.get("routingId")) if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(route_id, str):
        raise BadResponse(SERVICE, "init-simple answer has no routeId")
    raw_times = data.get("startTimes", data.get("slots"))
    if not _ROUTE_ID.fullmatch(route_id):  # it becomes part of a URL path
        raise BadResponse(SERVICE, "init-simple answer has a malformed routeId")
    if not isinstance(raw_times, list):
        raise BadResponse(SERVICE, "init-simple answer has no startTimes list")
    times = tuple(_instant(t, "startTimes") for t in raw_times)
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


def _schedule_body(guest: Guest, starts_at: datetime, form: Mapping[str, str]) -> Any:
    return {
        "startTime": utc_iso(starts_at),
        "guestEmail": guest.email,
        "guestTimezone": guest.timezone,
        "formData": dict(form),
    }


def _parse_outcome(data: Any) -> tuple[str | None, str | None]:
    """``(meetingId, None)`` for ``Success``, ``(None, reason)`` for ``Failure``."""
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "Success" and isinstance(data.get("meetingId"), str) and data["meetingId"]:
        return data["meetingId"], None
    if kind == "Failure":
        return None, str(data.get("reason") or "unspecified")
    raise BadResponse(SERVICE, "schedule-simple answer is neither Success nor Failure")


def _meetings_query(email: str, starts_at: datetime) -> Any:
    return {
        "start": utc_iso(starts_at),
        "end": utc_iso(starts_at + timedelta(minutes=1)),
        "guestEmail": email,
        "status": ["Active"],
        "pageSize": 50,
    }


def _meeting_ids(data: Any) -> list[str]:
    """Meeting ids in a list answer: items under ``data`` (schema) or ``results`` (prose),
    each with ``meetingId`` (or ``id``)."""
    items = data.get("data", data.get("results")) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise BadResponse(SERVICE, "meeting list answer has no list of meetings")
    ids: list[str] = []
    for item in items:
        found = item.get("meetingId", item.get("id")) if isinstance(item, dict) else None
        if not isinstance(found, str) or not found:
            raise BadResponse(SERVICE, "meeting list item has no meeting id")
        ids.append(found)
    return ids


# Form references we can fill, by normalised name (lower case, letters only).
_KNOWN_FIELDS = {
    "email": "email",
    "guestemail": "email",
    "name": "name",
    "fullname": "name",
    "firstname": "first",
    "lastname": "last",
    "company": "company",
    "companyname": "company",
    "organization": "company",
}
# == end of UNCONFIRMED WIRE FORMAT ============================================================


def _instant(value: Any, what: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise BadResponse(SERVICE, f"{what} holds a value that is not a time") from None
    if parsed.tzinfo is None:
        raise BadResponse(SERVICE, f"{what} holds a time without a zone")
    return parsed.astimezone(UTC)


def form_data(session: BookingSession, guest: Guest) -> dict[str, str]:
    """The ``formData`` for ``guest``: Hidden fields with their value, Required and
    Optional ones we can fill. :class:`FormIncomplete` names (for the log) a Required
    field we cannot fill."""
    first, _, last = guest.name.partition(" ")
    known = {
        "email": guest.email,
        "name": guest.name,
        "first": first,
        "last": last,
        "company": guest.company,
    }
    out: dict[str, str] = {}
    for f in session.form_fields:
        if f.requirement == "Hidden":
            out[f.reference] = f.value or ""
            continue
        value = known.get(_KNOWN_FIELDS.get(re.sub(r"[^a-z]", "", f.reference.lower()), ""), "")
        if value:
            out[f.reference] = value
        elif f.requirement == "Required":
            raise FormIncomplete(SERVICE, f"required booking form field {f.reference!r} unknown")
    return out


class ChiliPiperClient(ServiceClient):
    """Async ChiliPiper Edge API client for one conversation's demo booking.

    Args:
        api_key: ``CHILIPIPER_API_KEY``, sent as ``Authorization: Bearer <key>``.
        link: the scheduling link (``CHILIPIPER_SCHEDULING_LINK``) or Concierge router
            (``CHILIPIPER_CONCIERGE_ROUTER``) to book through.
        base_url: API root, default ``https://fire.chilipiper.com/api/fire-edge``.
        booking_url: the link's public booking page (``CHILIPIPER_BOOKING_URL``), handed
            to sales when server-side booking is not possible; never spoken.
        options: per-request timeouts (:data:`DEFAULT_HTTP_OPTIONS`).
        session: an ``aiohttp.ClientSession`` to use (not closed by :meth:`aclose`).
        now: the current time (aware) for renewed sessions' windows; default UTC now.
    """

    def __init__(
        self,
        api_key: str,
        link: SchedulingLink,
        base_url: str = DEFAULT_BASE_URL,
        *,
        booking_url: str = "",
        options: HttpOptions = DEFAULT_HTTP_OPTIONS,
        session: aiohttp.ClientSession | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not api_key or not (link.slug or link.id or link.router):
            raise ValueError("chilipiper: api_key and a scheduling link or router are required")
        register_secret(api_key)
        self._http = ServiceHttp(SERVICE, base_url, options=options, session=session)
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self.link = link
        self.booking_url = booking_url
        self._now = now
        self._spent: set[str] = set()  # routes a schedule was sent on (single-use)
        self._in_doubt: set[tuple[str, datetime]] = set()  # (email, start): outcome unknown
        self._booked: dict[tuple[str, datetime], BookedMeeting] = {}  # confirmed here
        self._lock = asyncio.Lock()

    async def open_session(
        self, guest: Guest, start: datetime, span: timedelta | None = None
    ) -> BookingSession:
        """A booking session for ``guest`` over ``[start, start + span)`` (default: the
        next three business days). Read-only, so safe to retry."""
        if span is None:
            start, span = business_window(start)
        if start.tzinfo is None or not timedelta(0) < span <= MAX_WINDOW:
            raise ValueError("start must be aware and the window 1 s to 7 days")
        if not is_valid_email(guest.email):
            raise InvalidRequest(SERVICE, "guest email is not well-formed")
        path, body = _init_request(self.link, guest, start, span)
        data = await self._http.request(
            "POST",
            path,
            json_body=body,
            headers=self._auth,
            on_404=InvalidRequest,  # the link does not exist: configuration, not retryable
            idempotent=True,  # opens a session, books nothing: a reset mid-body may be retried
        )
        session = _parse_session(data)
        end = start + span
        times = tuple(sorted(t for t in session.start_times if start <= t < end))
        return BookingSession(session.route_id, times, session.form_fields)

    async def find_meeting(self, email: str, starts_at: datetime) -> str | None:
        """The id of the guest's active meeting starting at ``starts_at``, if any."""
        data = await self._http.request(
            "PUT",
            MEETINGS_PATH,
            json_body=_meetings_query(email, starts_at),
            headers=self._auth,
            on_404=BadResponse,
        )
        ids = _meeting_ids(data)
        return ids[0] if ids else None

    async def book(
        self,
        session: BookingSession,
        slot: DemoSlot,
        guest: Guest,
        *,
        now: datetime | None = None,
    ) -> BookedMeeting:
        """Book ``slot`` for ``guest``; see the module docstring. Safe to retry. A renewed
        session's window starts at ``now`` (default: the client's clock).

        Raises:
            FormIncomplete: a Required form field is unknown (nothing sent).
            SlotUnavailable: the time is no longer open (``.fresh``: new options).
            ServiceError: anything else; an ambiguous one is reconciled by the next call.
        """
        key = (guest.email.casefold(), slot.starts_at.astimezone(UTC))
        async with self._lock:  # two bookings at once would race for one route
            known = self._booked.get(key)
            if known is None:
                known = await self._book(session, slot, guest, key, now)
                self._booked[key] = known
            return known

    async def _book(
        self,
        session: BookingSession,
        slot: DemoSlot,
        guest: Guest,
        key: tuple[str, datetime],
        now: datetime | None,
    ) -> BookedMeeting:
        if key in self._in_doubt:
            found = await self.find_meeting(guest.email, slot.starts_at)
            if found is not None:
                self._in_doubt.discard(key)
                logger.info("chilipiper: earlier booking found on reconciliation")
                return BookedMeeting(found, slot.starts_at, slot.slot_id)
            self._in_doubt.discard(key)  # the list answered: it certainly does not exist
            logger.info("chilipiper: earlier booking attempt did not apply")
        form_data(session, guest)  # fail before anything is sent
        if session.route_id in self._spent or not session.offers(key[1]):
            session = await self._renewed(guest, slot, now)
        for renewals in range(2):
            meeting_id = await self._schedule(session, slot, guest, key)
            if meeting_id is not None:
                logger.info("chilipiper: demo booked")
                return BookedMeeting(meeting_id, slot.starts_at, slot.slot_id)
            if renewals == 0:
                session = await self._renewed(guest, slot, now)
        raise SlotUnavailable("the time failed on a fresh route too", fresh=session)

    async def _renewed(self, guest: Guest, slot: DemoSlot, now: datetime | None) -> BookingSession:
        logger.info("chilipiper: renewing the booking route")
        fresh = await self.open_session(guest, now or self._now())
        if not fresh.offers(slot.starts_at.astimezone(UTC)):
            raise SlotUnavailable("the time is no longer open", fresh=fresh)
        return fresh

    async def _schedule(
        self, session: BookingSession, slot: DemoSlot, guest: Guest, key: tuple[str, datetime]
    ) -> str | None:
        """One ``schedule-simple``: the meeting id, or ``None`` when the route failed or
        is gone (renew it). The outcome is "in doubt" from before the request leaves."""
        body = _schedule_body(guest, slot.starts_at, form_data(session, guest))
        path = _schedule_path(self.link, session.route_id)
        self._spent.add(session.route_id)
        self._in_doubt.add(key)
        try:
            data = await self._http.request("POST", path, json_body=body, headers=self._auth)
            meeting_id, reason = _parse_outcome(data)
        except NotFound:
            self._in_doubt.discard(key)
            logger.info("chilipiper: booking route unknown or expired")
            return None
        except ServiceError as exc:
            if not write_outcome_is_ambiguous(exc):
                self._in_doubt.discard(key)
            raise
        self._in_doubt.discard(key)
        if meeting_id is None:
            shown = reason if reason and _REASON.fullmatch(reason) else "unrecognised reason"
            logger.info("chilipiper: schedule answered Failure (%s)", shown)
        return meeting_id
