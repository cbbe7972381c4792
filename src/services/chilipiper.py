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
well inside the API's 7-day limit; the documented answer ``{"data": {"list": [...]},
"hasMore": "Yes"|"No"}`` is read page by page and each meeting's ``primaryGuest.value`` and
``dateTime.start`` are checked here) and schedules again only when it certainly does not
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
booking to sales with the link's public booking URL. Hidden fields pass their value. A
Concierge router's form takes the router's own field names: ``CHILIPIPER_CONCIERGE_FIELDS``
maps our facts to them (``PersonEmail`` is always required).

Every vendor fact (paths, field names, page sizes; some given by ChiliPiper only
informally: "should be checked against a live account before go-live") lives in
:mod:`src.services.chilipiper_wire`, with its source; change them there and nowhere else.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import aiohttp

from ..errors import BadResponse, InvalidRequest, NotFound, ServiceError
from ..redaction import get_logger, register_secret
from ..validation import is_valid_email
from .chilipiper_model import (
    MAX_WINDOW,
    BookedMeeting,
    BookingSession,
    ConciergeFields,
    DemoSlot,
    FormField,
    Guest,
    SchedulingLink,
    business_window,
    spoken_time,
)
from .chilipiper_wire import (
    CONCIERGE_INIT_PATH,
    CONCIERGE_SCHEDULE_PATH,
    DEFAULT_BASE_URL,
    DEFAULT_CONCIERGE_FIELDS,
    INIT_PATH,
    MEETING_LOOKUP_PAGES,
    MEETINGS_PATH,
    SCHEDULE_PATH,
    init_request,
    meeting_page,
    meetings_query,
    parse_outcome,
    parse_session,
    schedule_body,
    schedule_path,
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
        concierge_fields: a Concierge router's form field names for our facts
            (``CHILIPIPER_CONCIERGE_FIELDS``; default ``PersonEmail`` and name and company).
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
        concierge_fields: ConciergeFields = DEFAULT_CONCIERGE_FIELDS,
    ) -> None:
        if not api_key or not (link.slug or link.id or link.router):
            raise ValueError("chilipiper: api_key and a scheduling link or router are required")
        register_secret(api_key)
        self._http = ServiceHttp(SERVICE, base_url, options=options, session=session)
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self.link = link
        self.booking_url = booking_url
        self.concierge_fields = concierge_fields
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
        path, body = init_request(self.link, guest, start, span, self.concierge_fields)
        data = await self._http.request(
            "POST",
            path,
            json_body=body,
            headers=self._auth,
            on_404=InvalidRequest,  # the link does not exist: configuration, not retryable
            idempotent=True,  # opens a session, books nothing: a reset mid-body may be retried
        )
        session = parse_session(data)
        end = start + span
        times = tuple(sorted(t for t in session.start_times if start <= t < end))
        return BookingSession(session.route_id, times, session.form_fields)

    async def find_meeting(self, email: str, starts_at: datetime) -> str | None:
        """The id of the guest's active meeting starting at ``starts_at``, or ``None`` when
        the list certainly holds none. Every returned meeting's guest and start are checked
        here (the server-side filter is not trusted alone), and ``hasMore`` is followed
        page by page. Read-only. A list that does not end within
        :data:`~.chilipiper_wire.MEETING_LOOKUP_PAGES` pages is :class:`BadResponse`
        (the outcome stays unknown)."""
        wanted = starts_at.astimezone(UTC)
        for page in range(MEETING_LOOKUP_PAGES):
            data = await self._http.request(
                "PUT",
                MEETINGS_PATH,
                json_body=meetings_query(email, wanted, page),
                headers=self._auth,
                on_404=BadResponse,
                idempotent=True,  # a read: a reset mid-body may be retried
            )
            meetings, more = meeting_page(data)
            found = next((m for m in meetings if m.is_for(email, wanted)), None)
            others = sum(not m.is_for(email, wanted) for m in meetings)
            if others:
                logger.info("chilipiper: meeting list returned %d other meetings; ignored", others)
            if found is not None:
                return found.meeting_id
            if not more:
                return None
        raise BadResponse(
            SERVICE, f"meeting list still had more after {MEETING_LOOKUP_PAGES} pages"
        )

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
        body = schedule_body(guest, slot.starts_at, form_data(session, guest))
        path = schedule_path(self.link, session.route_id)
        self._spent.add(session.route_id)
        self._in_doubt.add(key)
        try:
            data = await self._http.request("POST", path, json_body=body, headers=self._auth)
            meeting_id, reason = parse_outcome(data)
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
