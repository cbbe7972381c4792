"""ChiliPiper client: find open demo times and secure one for a trialist.

Choices, and why:

* **Auth** is ``Authorization: Bearer <api-key>`` (``chilipiper-authentication.yml``); a
  key without the ``Bearer`` prefix is a 401, which is :class:`~src.errors.AuthenticationFailed`.
* **Availability** is ``POST /v1/org/availability/slots`` (read-only, despite the verb):
  the sales team's round-robin distribution is both the expected host
  (``AssigneeFromDistribution``) and the one required attendee (``DistributionAssignee``,
  ``required: true``, which the API insists on), for our demo meeting type. The
  ``meetingTypeRef.timestamp`` selects the meeting type's version; we send the current
  time, i.e. the version in effect now. The window is ``days`` calendar days from
  ``start`` (at most 7, so a weekday name is never ambiguous when spoken), and the
  earliest ``limit`` start times come back as :class:`DemoSlot`.
* **Securing the meeting.** The references in ``reference/apis`` describe no booking
  write: availability, meetings and scheduling links are read-only or link management.
  (They name a ``scheduling-link-init`` operation, "book via linkId", without describing
  it; the vendor's programmatic booking is a two-step session, init then schedule.) So
  :meth:`ChiliPiperClient.book_demo` sends one booking request to :data:`BOOKING_PATH`,
  **a contract of our own, served by the sandbox and not by ChiliPiper today**; its body
  reuses the availability shapes (meeting type, distribution host and attendee) plus
  ``startTime`` and ``guest``. Against production it answers 404, which the client
  reports as :class:`~src.errors.InvalidRequest` (a configuration gap, not a missing
  person, and nothing to retry). Replacing :meth:`ChiliPiperClient._send_booking` with
  the vendor's init/schedule pair is the one change needed when the reference gains it.
* **No double bookings.** Every booking request carries an ``Idempotency-Key`` header
  derived from the distribution, meeting type, guest email (case-folded) and slot start,
  so a retry, even one whose first attempt's response was lost, or one from another
  process, names the same booking; the server answers a repeated key with the meeting it
  already made. The client also remembers its own confirmed bookings by key and answers
  a repeat without a request. Hence ``book_demo`` is **safe to retry**; a slot someone
  else took meanwhile is :class:`SlotUnavailable` (409, not retried).

Retry safety: :meth:`~ChiliPiperClient.get_demo_slots` is read-only and
:meth:`~ChiliPiperClient.book_demo` is idempotent by key; both are safe to retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import aiohttp
import pydantic

from ..errors import BadResponse, InvalidRequest, NotFound
from ..phrases import booked
from ..redaction import get_logger, register_secret
from ..validation import is_valid_email
from .http import DEFAULT_HTTP_OPTIONS, HttpOptions, ServiceClient, ServiceHttp, parse_model

__all__ = [
    "AVAILABILITY_PATH",
    "BOOKING_PATH",
    "DEFAULT_BASE_URL",
    "IDEMPOTENCY_HEADER",
    "BookedMeeting",
    "ChiliPiperClient",
    "DemoSlot",
    "SlotUnavailable",
    "booking_key",
    "spoken_time",
]

SERVICE = "chilipiper"
DEFAULT_BASE_URL = "https://fire.chilipiper.com/api/fire-edge"
AVAILABILITY_PATH = "/v1/org/availability/slots"
#: Not in reference/apis: our booking contract, served by the sandbox (module docstring).
BOOKING_PATH = "/v1/org/meetings/book"
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_DAYS = 7

logger = get_logger("pandadoc.services.chilipiper")


class SlotUnavailable(InvalidRequest):
    """The chosen slot is no longer free (HTTP 409): offer fresh times instead."""


# -- speech ------------------------------------------------------------------------------


def spoken_time(when: datetime, tz: tzinfo) -> str:
    """``when`` in ``tz`` the way people say it: ``"Tuesday at 3 PM"``,
    ``"Friday at 9:30 AM"``, ``"Monday at 12 PM"``."""
    local = when.astimezone(tz)
    hour = local.hour % 12 or 12
    minutes = f":{local.minute:02d}" if local.minute else ""
    return f"{local:%A} at {hour}{minutes} {'AM' if local.hour < 12 else 'PM'}"


def _utc_iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class DemoSlot:
    """An open demo time.

    Attributes:
        slot_id: stable id derived from the start time alone (``slot-20250107T1500Z``),
            so the same time offered twice has the same id.
        starts_at: timezone-aware start time.
    """

    slot_id: str
    starts_at: datetime

    def __post_init__(self) -> None:
        if self.starts_at.tzinfo is None or self.starts_at.utcoffset() is None:
            raise ValueError("DemoSlot.starts_at must be timezone-aware")

    @classmethod
    def at(cls, starts_at: datetime) -> DemoSlot:
        """The slot starting at ``starts_at`` (aware), with its derived id."""
        if starts_at.tzinfo is None:
            raise ValueError("DemoSlot.starts_at must be timezone-aware")
        return cls(f"slot-{starts_at.astimezone(UTC):%Y%m%dT%H%MZ}", starts_at)

    def spoken(self, tz: tzinfo) -> str:
        """The start time in the caller's timezone ``tz``, e.g. ``"Tuesday at 3 PM"``."""
        return spoken_time(self.starts_at, tz)


@dataclass(frozen=True)
class BookedMeeting:
    """A demo that is booked.

    Attributes:
        meeting_id: ChiliPiper's meeting id.
        starts_at: timezone-aware start time.
        slot_id: the :class:`DemoSlot` id it was booked from.
        link: the meeting's join/manage link, when the service returned one.
    """

    meeting_id: str
    starts_at: datetime
    slot_id: str
    link: str | None = None

    def spoken_summary(self, tz: tzinfo | None = None) -> str:
        """One sentence confirming the booking, never ids or links. With the caller's
        timezone ``tz`` it names the time (``"You're all set for a demo on Tuesday at
        3 PM."``); without one (default ``None``) it leaves the time out rather than
        speak it in a zone the caller may not be in."""
        return booked(None if tz is None else spoken_time(self.starts_at, tz))


def booking_key(distribution_id: str, meeting_type_id: str, email: str, starts_at: datetime) -> str:
    """The deterministic ``Idempotency-Key`` for booking ``email`` at ``starts_at``.

    A SHA-256 digest (hex, 40 characters kept), so the key reveals no email address.
    """
    material = "|".join(
        (distribution_id, meeting_type_id, email.strip().casefold(), _utc_iso(starts_at))
    )
    return "demo-" + hashlib.sha256(material.encode()).hexdigest()[:40]


# -- response models -------------------------------------------------------------------------


class _StartTime(pydantic.BaseModel):
    startTime: pydantic.AwareDatetime
    attendees: list[Any] = pydantic.Field(default_factory=list)


class _StartTimes(pydantic.BaseModel):
    meetingTypeRef: dict[str, Any]
    startTimes: list[_StartTime] = pydantic.Field(default_factory=list)
    failures: dict[str, Any]


class _Booking(pydantic.BaseModel):
    meetingId: str = pydantic.Field(min_length=1)
    startTime: pydantic.AwareDatetime
    joinUrl: str | None = None


def _utcnow() -> datetime:
    return datetime.now(UTC)


# -- client --------------------------------------------------------------------------------


class ChiliPiperClient(ServiceClient):
    """Async ChiliPiper Edge API client for demo availability and booking.

    Args:
        api_key: ChiliPiper API key (``CHILIPIPER_API_KEY``), sent as a bearer token.
        distribution_id: the sales team's round-robin distribution
            (``CHILIPIPER_DISTRIBUTION_ID``).
        meeting_type_id: the demo meeting type (``CHILIPIPER_MEETING_TYPE_ID``).
        base_url: API root, default production ``https://fire.chilipiper.com/api/fire-edge``
            (``CHILIPIPER_BASE_URL``).
        options: per-request timeouts in seconds (:data:`DEFAULT_HTTP_OPTIONS`).
        session: an ``aiohttp.ClientSession`` to use (not closed by :meth:`aclose`).
        now: current time (aware), for the meeting type version; default UTC now.
    """

    def __init__(
        self,
        api_key: str,
        distribution_id: str,
        meeting_type_id: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        options: HttpOptions = DEFAULT_HTTP_OPTIONS,
        session: aiohttp.ClientSession | None = None,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        if not api_key or not distribution_id or not meeting_type_id:
            raise ValueError(
                "chilipiper: api_key, distribution_id and meeting_type_id are required"
            )
        register_secret(api_key)
        self._http = ServiceHttp(SERVICE, base_url, options=options, session=session)
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._distribution_id = distribution_id
        self._meeting_type_id = meeting_type_id
        self._now = now
        self._booked: dict[str, BookedMeeting] = {}
        self._booking_locks: dict[str, asyncio.Lock] = {}
        self._booking_bodies: dict[str, dict[str, Any]] = {}

    def _routing(self) -> dict[str, Any]:
        """Meeting type, host and attendee: the same in availability and booking."""
        return {
            "expectedHost": {
                "type": "AssigneeFromDistribution",
                "distributionId": self._distribution_id,
            },
            "attendees": [
                {
                    "type": "DistributionAssignee",
                    "distributionId": self._distribution_id,
                    "required": True,
                }
            ],
            "meetingTypeRef": {"id": self._meeting_type_id, "timestamp": _utc_iso(self._now())},
        }

    async def get_demo_slots(
        self, start: datetime, days: int = 5, limit: int = 3
    ) -> list[DemoSlot]:
        """The earliest open demo times from ``start`` on.

        Args:
            start: timezone-aware beginning of the window (usually now).
            days: window length in calendar days, 1 to 7 (default 5).
            limit: most slots to return, 1 to 10 (default 3).

        Returns:
            Up to ``limit`` slots, earliest first; an empty list when nothing is open.
            Read-only, so safe to retry.
        """
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("start must be timezone-aware")
        if not 1 <= days <= MAX_DAYS:
            raise ValueError(f"days must be between 1 and {MAX_DAYS}")
        if not 1 <= limit <= 10:
            raise ValueError("limit must be between 1 and 10")
        body = {
            **self._routing(),
            "interval": {"startsAt": _utc_iso(start), "duration": f"P{days}D"},
        }
        data = await self._http.request(
            "POST",
            AVAILABILITY_PATH,
            json_body=body,
            headers=self._auth,
            on_404=BadResponse,
            idempotent=True,  # a read despite POST: a reset mid-body may be retried
        )
        parsed = parse_model(SERVICE, _StartTimes, data)
        end = start + timedelta(days=days)
        starts = sorted({s.startTime for s in parsed.startTimes if start <= s.startTime < end})
        if not starts and parsed.failures:
            logger.info(
                "chilipiper: no slots; %d host calendars reported failures", len(parsed.failures)
            )
        return [DemoSlot.at(s) for s in starts[:limit]]

    async def book_demo(self, email: str, name: str, slot: DemoSlot) -> BookedMeeting:
        """Book the demo at ``slot`` for the guest ``email`` (``name`` may be blank).

        Safe to retry: the request carries a deterministic ``Idempotency-Key``, so
        repeating it (after a timeout, a lost response, or from another process) returns
        the same meeting instead of making a second one; a booking this client already
        confirmed is answered from memory without a request.

        Raises:
            InvalidRequest: ``email`` or ``name`` is unusable (nothing is sent), or the
                service rejected the booking; the booking endpoint missing (404) is
                reported this way too (see the module docstring).
            SlotUnavailable: someone else took the slot (409); offer fresh times.
            BadResponse: the answer is not a booking of the requested time.
            ServiceError: any other failure, translated by the HTTP layer.
        """
        email = email.strip()
        if not is_valid_email(email):
            raise InvalidRequest(SERVICE, "guest email is not well-formed")
        name = " ".join(name.split())
        if len(name) > 200 or any(unicodedata.category(ch).startswith("C") for ch in name):
            raise InvalidRequest(SERVICE, "guest name is unusable")
        key = booking_key(self._distribution_id, self._meeting_type_id, email, slot.starts_at)
        lock = self._booking_locks.setdefault(key, asyncio.Lock())
        async with lock:  # same key in flight twice here: the second waits for the first
            known = self._booked.get(key)
            if known is not None:
                logger.debug("chilipiper: booking already confirmed, not resending")
                return known
            meeting = await self._send_booking(key, email, name, slot)
            self._booked[key] = meeting
            self._booking_bodies.pop(key, None)
        if not lock.locked():
            self._booking_locks.pop(key, None)
        logger.info("chilipiper: demo booked")
        return meeting

    async def _send_booking(self, key: str, email: str, name: str, slot: DemoSlot) -> BookedMeeting:
        body = self._booking_bodies.get(key)
        if body is None:
            guest: dict[str, str] = {"email": email}
            if name:
                guest["name"] = name
            body = {**self._routing(), "startTime": _utc_iso(slot.starts_at), "guest": guest}
            # A retry must repeat the very same request under its key (the routing
            # carries a timestamp): strict idempotency stores reject a changed body.
            self._booking_bodies[key] = body
        try:
            data = await self._http.request(
                "POST",
                BOOKING_PATH,
                json_body=body,
                headers={**self._auth, IDEMPOTENCY_HEADER: key},
            )
        except InvalidRequest as exc:
            if exc.status == 409:
                raise SlotUnavailable(SERVICE, "the slot is no longer free", status=409) from exc
            raise
        except NotFound as exc:
            raise InvalidRequest(
                SERVICE, "chilipiper booking endpoint is not available", status=404
            ) from exc
        booking = parse_model(SERVICE, _Booking, data)
        if booking.startTime != slot.starts_at:
            raise BadResponse(SERVICE, "chilipiper booked a different time than requested")
        return BookedMeeting(
            meeting_id=booking.meetingId,
            starts_at=booking.startTime,
            slot_id=slot.slot_id,
            link=booking.joinUrl,
        )
