"""ChiliPiper stand-in: deterministic demo availability and idempotent bookings.

* ``POST /v1/org/availability/slots`` (reference shape): validates the request as the
  Edge API does (``expectedHost``, non-empty ``attendees`` each with ``type`` and a
  boolean ``required``, ``meetingTypeRef {id, timestamp}``, ``interval {startsAt,
  duration}``); anything missing or mistyped is 400 ``Invalid value for: body``
  (text/plain). Unknown distribution or meeting type: 404 in the default error shape
  ``{errorCode, errorMessage}``. Slots: every business day (Mon-Fri) in the interval, at
  the UTC hours of :data:`~src.sandbox.data.DEMO_SLOTS_PER_DAY`, from ``startsAt`` on;
  booked slots are left out. Deterministic: it depends on the request only, never the
  wall clock.
* ``POST`` :data:`~src.services.chilipiper.BOOKING_PATH` (our booking contract, not in
  the reference; see :mod:`src.services.chilipiper`): requires an ``Idempotency-Key``
  header (400 without). A key seen before with the very same request body returns the
  same meeting (200, ``Idempotent-Replayed: true``); with any other body it is 422, as
  strict idempotency stores answer. A start that is not an offered slot, or is already
  booked, is 409. Otherwise
  the meeting is stored on :attr:`ChiliPiperServer.meetings` (201).

Auth: ``Authorization: Bearer <CHILIPIPER_API_KEY>`` exactly; anything else is 401.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from aiohttp import web

from ..services.chilipiper import AVAILABILITY_PATH, BOOKING_PATH, IDEMPOTENCY_HEADER
from .base import SandboxServer
from .data import DEMO_SLOTS_PER_DAY, SANDBOX_CREDENTIALS

__all__ = ["ChiliPiperServer", "SandboxMeeting", "parse_duration"]

# Sales reps in the sandbox distribution; slots are assigned round-robin.
REP_USER_IDS = ("64ee0722-c7c6-4b48-bc89-356c99f1d25d", "9c1d2e3f-4a5b-4c6d-8e7f-0a1b2c3d4e5f")
MEETING_MINUTES = 30
_MAX_INTERVAL = timedelta(days=31)
_ID = re.compile(r"[^\s\\/]+")
_ISO_DURATION = re.compile(
    r"P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+)S)?)?"
)
_FINITE_DURATION = re.compile(
    r"(?P<n>\d+)\s*(?P<unit>days?|hours?|minutes?|mins?|seconds?|secs?)", re.IGNORECASE
)
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_NAMESPACE = uuid.UUID("0b6e8a52-3c1f-4d7a-9f10-5e2d8c4b7a61")


class _BadBody(ValueError):
    """The request body breaks the schema: answered with 400."""


def parse_duration(text: str) -> timedelta:
    """ISO 8601 (``P7D``, ``PT168H``, ``PT1H30M``) or Scala FiniteDuration (``7 days``,
    ``30 minutes``) as a timedelta; ``ValueError`` for anything else."""
    text = text.strip()
    iso = _ISO_DURATION.fullmatch(text)
    if iso is not None and text not in ("P", "PT") and not text.endswith("T"):
        seconds = sum(int(iso.group(u) or 0) * _UNIT_SECONDS[u] for u in "dhms")
        return timedelta(seconds=seconds)
    finite = _FINITE_DURATION.fullmatch(text)
    if finite is not None:
        unit = finite.group("unit").lower()[0]
        return timedelta(seconds=int(finite.group("n")) * _UNIT_SECONDS[unit])
    raise ValueError(f"unparseable duration {text!r}")


def _aware(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise _BadBody(what)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _BadBody(what) from exc
    if parsed.tzinfo is None:
        raise _BadBody(what)
    return parsed


def _ident(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise _BadBody(what)
    return value


@dataclass
class SandboxMeeting:
    meeting_id: str
    start_time: datetime
    guest_email: str
    guest_name: str | None
    idempotency_key: str
    assigned_user_id: str
    status: str = "Active"

    def to_json(self) -> dict[str, Any]:
        return {
            "meetingId": self.meeting_id,
            "meetingStatus": self.status,
            "startTime": self.start_time.isoformat().replace("+00:00", "Z"),
            "endTime": (self.start_time + timedelta(minutes=MEETING_MINUTES))
            .isoformat()
            .replace("+00:00", "Z"),
            "assignedUserId": self.assigned_user_id,
            "guestEmail": self.guest_email,
            "joinUrl": f"https://meet.sandbox.chilipiper.invalid/{self.meeting_id}",
        }


class ChiliPiperServer(SandboxServer):
    """ChiliPiper sandbox; see the module docstring.

    Attributes:
        meetings: booked meetings, in order.
        api_key, distribution_id, meeting_type_id: what it accepts (``SANDBOX_CREDENTIALS``).
    """

    name = "chilipiper"

    def __init__(self) -> None:
        self.api_key = SANDBOX_CREDENTIALS["CHILIPIPER_API_KEY"]
        self.distribution_id = SANDBOX_CREDENTIALS["CHILIPIPER_DISTRIBUTION_ID"]
        self.meeting_type_id = SANDBOX_CREDENTIALS["CHILIPIPER_MEETING_TYPE_ID"]
        self.meetings: list[SandboxMeeting] = []
        self._by_key: dict[str, SandboxMeeting] = {}
        self._bodies: dict[str, Any] = {}  # the request each idempotency key was first used for
        super().__init__()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(AVAILABILITY_PATH, self._slots)
        app.router.add_post(BOOKING_PATH, self._book)

    # -- helpers ---------------------------------------------------------------------------
    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        return web.json_response(
            {"errorCode": "Unauthorized", "errorMessage": "Missing or invalid API key"},
            status=401,
        )

    @staticmethod
    def _not_found(what: str) -> web.Response:
        return web.json_response(
            {"errorCode": "NotFound", "errorMessage": f"{what} not found"}, status=404
        )

    @staticmethod
    def _invalid(detail: str) -> web.Response:
        return web.Response(status=400, text=f"Invalid value for: body ({detail})")

    def _check_routing(self, body: Any) -> web.Response | None:
        """Validate host, attendees and meeting type; ``None`` when they are fine."""
        if not isinstance(body, dict):
            raise _BadBody("body")
        host = body.get("expectedHost")
        if not isinstance(host, dict):
            raise _BadBody("expectedHost")
        distributions: list[str] = []
        if host.get("type") == "AssigneeFromDistribution":
            distributions.append(_ident(host.get("distributionId"), "expectedHost.distributionId"))
        elif host.get("type") == "User":
            _ident(host.get("userId"), "expectedHost.userId")
        else:
            raise _BadBody("expectedHost.type")
        attendees = body.get("attendees")
        if not isinstance(attendees, list) or not attendees:
            raise _BadBody("attendees")
        for i, attendee in enumerate(attendees):
            where = f"attendees[{i}]"
            if not isinstance(attendee, dict) or not isinstance(attendee.get("required"), bool):
                raise _BadBody(f"{where}.required")
            kind = attendee.get("type")
            if kind == "DistributionAssignee":
                distributions.append(_ident(attendee.get("distributionId"), where))
            elif kind in ("ManuallyAssigned", "AdditionalAttendee"):
                _ident(attendee.get("userId"), where)
            elif kind == "AssignedViaTeam":
                _ident(attendee.get("userId"), where)
                _ident(attendee.get("teamId"), where)
            else:
                raise _BadBody(f"{where}.type")
        ref = body.get("meetingTypeRef")
        if not isinstance(ref, dict):
            raise _BadBody("meetingTypeRef")
        meeting_type = _ident(ref.get("id"), "meetingTypeRef.id")
        _aware(ref.get("timestamp"), "meetingTypeRef.timestamp")
        if any(d != self.distribution_id for d in distributions):
            return self._not_found("Distribution")
        if meeting_type != self.meeting_type_id:
            return self._not_found("Meeting type")
        return None

    def _booked_starts(self) -> set[datetime]:
        return {m.start_time for m in self.meetings if m.status == "Active"}

    @staticmethod
    def is_offered(start: datetime) -> bool:
        """Whether ``start`` is on the slot grid (business day, listed UTC hour)."""
        utc = start.astimezone(UTC)
        return (
            utc.weekday() < 5
            and utc.hour in DEMO_SLOTS_PER_DAY
            and (utc.minute, utc.second, utc.microsecond) == (0, 0, 0)
        )

    def slots_between(self, start: datetime, end: datetime) -> list[datetime]:
        """Free slot starts in ``[start, end)``, earliest first."""
        booked = self._booked_starts()
        found: list[datetime] = []
        day: date = start.astimezone(UTC).date()
        while datetime.combine(day, time(0), UTC) < end:
            if day.weekday() < 5:
                for hour in sorted(DEMO_SLOTS_PER_DAY):
                    candidate = datetime.combine(day, time(hour), UTC)
                    if start <= candidate < end and candidate not in booked:
                        found.append(candidate)
            day += timedelta(days=1)
        return found

    def _rep_for(self, start: datetime) -> str:
        return REP_USER_IDS[int(start.timestamp() // 3600) % len(REP_USER_IDS)]

    # -- handlers --------------------------------------------------------------------------
    async def _slots(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = await request.json()
            problem = self._check_routing(body)
            interval = body.get("interval")
            if not isinstance(interval, dict) or not isinstance(interval.get("duration"), str):
                raise _BadBody("interval")
            start = _aware(interval.get("startsAt"), "interval.startsAt")
            try:
                duration = parse_duration(interval["duration"])
            except ValueError as exc:
                raise _BadBody("interval.duration") from exc
            if not timedelta(0) < duration <= _MAX_INTERVAL:
                raise _BadBody("interval.duration")
        except _BadBody as exc:
            return self._invalid(str(exc))
        except ValueError:
            return self._invalid("body")
        if problem is not None:
            return problem
        start_times = [
            {
                "startTime": s.isoformat().replace("+00:00", "Z"),
                "attendees": [
                    {
                        "type": "StrictRoundRobinAssignee",
                        "distributionId": self.distribution_id,
                        "userId": self._rep_for(s),
                        "required": True,
                    }
                ],
            }
            for s in self.slots_between(start, start + duration)
        ]
        return web.json_response(
            {"meetingTypeRef": body["meetingTypeRef"], "startTimes": start_times, "failures": {}}
        )

    async def _book(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        key = request.headers.get(IDEMPOTENCY_HEADER, "").strip()
        if not 0 < len(key) <= 255:
            return web.Response(status=400, text=f"Invalid value for: header {IDEMPOTENCY_HEADER}")
        try:
            body = await request.json()
            problem = self._check_routing(body)
            start = _aware(body.get("startTime"), "startTime")
            guest = body.get("guest")
            if not isinstance(guest, dict):
                raise _BadBody("guest")
            email = guest.get("email")
            if not isinstance(email, str) or not re.fullmatch(r".+@.+", email):
                raise _BadBody("guest.email")
            name = guest.get("name")
            if name is not None and not isinstance(name, str):
                raise _BadBody("guest.name")
        except _BadBody as exc:
            return self._invalid(str(exc))
        except ValueError:
            return self._invalid("body")
        if problem is not None:
            return problem
        start = start.astimezone(UTC)

        existing = self._by_key.get(key)
        if existing is not None:
            # Strict, as idempotency stores are: a key replays only the very same request.
            if self._bodies.get(key) != body:
                return web.json_response(
                    {
                        "errorCode": "IdempotencyKeyReused",
                        "errorMessage": "This key was used for a different booking",
                    },
                    status=422,
                )
            response = web.json_response(existing.to_json(), status=200)
            response.headers["Idempotent-Replayed"] = "true"
            return response
        if not self.is_offered(start) or start in self._booked_starts():
            return web.json_response(
                {"errorCode": "SlotUnavailable", "errorMessage": "The slot is not available"},
                status=409,
            )
        meeting = SandboxMeeting(
            meeting_id=str(uuid.uuid5(_NAMESPACE, key)),
            start_time=start,
            guest_email=email,
            guest_name=name,
            idempotency_key=key,
            assigned_user_id=self._rep_for(start),
        )
        self.meetings.append(meeting)
        self._by_key[key] = meeting
        self._bodies[key] = body
        return web.json_response(meeting.to_json(), status=201)
