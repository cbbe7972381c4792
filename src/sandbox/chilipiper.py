"""ChiliPiper stand-in: the Edge API's two-step booking, strictly.

* ``POST`` :data:`~src.services.chilipiper.INIT_PATH` (``init-simple``): ``link {slug|id}``
  naming the configured scheduling link (else 404), ``guestEmail``, ``guestTimezone`` (an
  IANA zone), ``interval {startsAt, duration}`` (at most 7 days) and ``outputs``. Answers a
  fresh single-use ``routeId``, the free ``startTimes`` (business days at the UTC hours of
  :data:`~src.sandbox.data.DEMO_SLOTS_PER_DAY`), the link's ``formFields`` and
  ``failures``. Deterministic: the times depend on the request only.
* ``POST`` ``/v1/org/schedulingLinks/routing/{routeId}/schedule-simple``: an unknown route
  is 404; a route that was used or is older than :attr:`ChiliPiperServer.route_ttl`
  seconds (on :attr:`ChiliPiperServer.clock`) answers ``Failure{reason: RouteExpired}``; a
  time the route did not offer or that is taken meanwhile ``Failure{reason:
  SlotNoLongerAvailable}``. A Required form field missing, or a Hidden one with another
  value, is 400. Otherwise the meeting is stored on :attr:`ChiliPiperServer.meetings`
  and the answer is ``Success{meetingId}``. Every schedule uses the route up.
* Concierge: ``POST /v1/org/concierge/routers/{router}/rest`` with ``{form: {...},
  options: {guestTimezone, interval}}`` opens a route the same way (``routingId``; no form
  fields); without an interval it answers ``{bookingUrl}``. The form takes the router's
  own fields (:attr:`ChiliPiperServer.router_form`): ``PersonEmail`` is required and an
  unknown key is 400. Its start times are objects ``{startTime, attendees}``. Its routes
  are booked at ``/v1/org/concierge/routing/{routingId}/schedule-simple`` (same rules).
* ``PUT`` :data:`~src.services.chilipiper.MEETINGS_PATH`: meetings starting in
  ``[start, end)`` (at most 7 days), filtered by ``guestEmail`` (unless
  :attr:`ChiliPiperServer.guest_filter` is off: a coarse server-side filter) and
  ``status``, ``pageSize`` (default 10) per zero-based ``page``; answers only the
  documented shape ``{"data": {"list": [...]}, "hasMore": "Yes"|"No", "hasMoreItems"}``,
  each meeting with ``meetingId``, ``dateTime {start, end}`` and ``primaryGuest {value}``.

Errors use the vendor's envelope ``{errorCode, errorMessage, arguments}``; a malformed body
is 400 ``Invalid value for: body`` as plain text. Auth: ``Authorization: Bearer <key>``.

Scenario controls: :meth:`~ChiliPiperServer.take` (someone else books a time),
:meth:`~ChiliPiperServer.steal_next_schedule`, :meth:`~ChiliPiperServer.expire_routes`,
:meth:`~ChiliPiperServer.lose_next_schedule` (the answer is lost, after or before it
applied), :meth:`~ChiliPiperServer.drop_next_answer` (booked, then the connection drops).
"""

from __future__ import annotations

import asyncio
import re
import time as _time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from ..services.chilipiper import (
    CONCIERGE_INIT_PATH,
    CONCIERGE_SCHEDULE_PATH,
    INIT_PATH,
    MEETINGS_PATH,
)
from .base import SandboxServer
from .data import DEMO_SLOTS_PER_DAY

__all__ = ["SANDBOX_ENV", "ChiliPiperServer", "SandboxMeeting", "parse_duration"]

REP_USER_IDS = ("64ee0722-c7c6-4b48-bc89-356c99f1d25d", "9c1d2e3f-4a5b-4c6d-8e7f-0a1b2c3d4e5f")
LINK_ID = "3f2b6c1e-8d4a-4e5f-9a0b-1c2d3e4f5a6b"
CONCIERGE_ROUTER = "inbound-demo"
MEETING_MINUTES = 30
_MAX_WINDOW = timedelta(days=7)
_ISO_DURATION = re.compile(
    r"P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+)S)?)?"
)
_FINITE_DURATION = re.compile(
    r"(?P<n>\d+)\s*(?P<unit>days?|hours?|minutes?|mins?|seconds?|secs?)", re.IGNORECASE
)
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_SCHEDULE_ROUTE = "/v1/org/schedulingLinks/routing/{route_id}/schedule-simple"


# The env lines that open this stand-in (printed by the sandbox; not secrets).
SANDBOX_ENV: dict[str, str] = {
    "CHILIPIPER_API_KEY": "sandbox-chilipiper-api-key",
    "CHILIPIPER_SCHEDULING_LINK": "pandadoc-demo",
    "CHILIPIPER_BOOKING_URL": "https://pandadoc.chilipiper.invalid/book/pandadoc-demo",
}


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
    return parsed.astimezone(UTC)


def _text(body: dict[str, Any], key: str, pattern: str = r".+") -> str:
    value = body.get(key)
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        raise _BadBody(key)
    return value


def _zone(body: dict[str, Any]) -> str:
    name = _text(body, "guestTimezone")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long
        raise _BadBody("guestTimezone") from None
    return name


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class SandboxMeeting:
    meeting_id: str
    start_time: datetime
    guest_email: str
    form_data: dict[str, str]
    assigned_user_id: str
    status: str = "Active"

    def to_json(self) -> dict[str, Any]:
        """A meeting as the documented meeting list carries it."""
        return {
            "meetingId": self.meeting_id,
            "status": self.status,
            "dateTime": {
                "start": _iso(self.start_time),
                "end": _iso(self.start_time + timedelta(minutes=MEETING_MINUTES)),
            },
            "primaryGuest": {"type": "Email", "value": self.guest_email},
            "assignedUserId": self.assigned_user_id,
        }


@dataclass
class _Route:
    created: float
    start_times: list[datetime]
    used: bool = False


class ChiliPiperServer(SandboxServer):
    """ChiliPiper sandbox; see the module docstring.

    Attributes:
        meetings: booked meetings, in order.
        slug / link_id: the scheduling link it serves (either may name it).
        form_fields: the link's booking form, as ``init-simple`` reports it.
        route_ttl: seconds a route stays usable, on ``clock`` (default monotonic time).
    """

    name = "chilipiper"

    def __init__(self) -> None:
        self.api_key = SANDBOX_ENV["CHILIPIPER_API_KEY"]
        self.slug = SANDBOX_ENV["CHILIPIPER_SCHEDULING_LINK"]
        self.link_id = LINK_ID
        self.router = CONCIERGE_ROUTER
        self.booking_url = SANDBOX_ENV["CHILIPIPER_BOOKING_URL"]
        self.meetings: list[SandboxMeeting] = []
        self.form_fields: list[dict[str, Any]] = [
            {"reference": "email", "requirement": "Required", "dataType": "Email"},
            {"reference": "company", "requirement": "Optional", "dataType": "Text"},
            {
                "reference": "source",
                "requirement": {"type": "Hidden", "value": "voice-agent"},
                "dataType": "Text",
            },
        ]
        self.router_form = ("PersonEmail", "PersonFirstName", "PersonLastName", "CompanyName")
        self.guest_filter = True
        self.route_ttl = 600.0
        self.clock: Callable[[], float] = _time.monotonic
        self.routes: dict[str, _Route] = {}
        self._lose_next: bool | None = None  # applied-before-losing flag for the next schedule
        self._lost = asyncio.Event()
        self._steal_next = False
        self._drop_next = False
        super().__init__()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(INIT_PATH, self._init)
        app.router.add_post(_SCHEDULE_ROUTE, self._schedule)
        app.router.add_post(CONCIERGE_INIT_PATH, self._concierge)
        app.router.add_post(CONCIERGE_SCHEDULE_PATH, self._schedule)
        app.router.add_put(MEETINGS_PATH, self._list)

    # -- scenario controls -------------------------------------------------------------------
    def take(self, start: datetime, email: str = "someone.else@example.com") -> SandboxMeeting:
        """Someone else books ``start`` (as through another channel)."""
        start = start.astimezone(UTC)
        meeting = SandboxMeeting(str(uuid.uuid4()), start, email, {}, self._rep_for(start))
        self.meetings.append(meeting)
        return meeting

    def steal_next_schedule(self) -> None:
        """Someone else books the time the next ``schedule-simple`` asks for, just before it
        arrives."""
        self._steal_next = True

    def expire_routes(self) -> None:
        """Every route handed out so far expires."""
        for route in self.routes.values():
            route.created = -1e18

    def lose_next_schedule(self, *, applied: bool) -> None:
        """The next ``schedule-simple`` gets no answer (it hangs until :meth:`clear`);
        ``applied`` says whether the meeting was made before the answer was lost."""
        self._lose_next = applied

    def drop_next_answer(self) -> None:
        """The next ``schedule-simple`` books the meeting, then the connection drops
        before the answer is sent (the client sees a disconnect)."""
        self._drop_next = True

    def clear(self, endpoint: str | None = None) -> None:
        super().clear(endpoint)
        if endpoint is None:
            self._lose_next = None
            self._steal_next = False
            self._drop_next = False
            self._lost.set()
            self._lost = asyncio.Event()

    async def stop(self) -> None:
        self._lost.set()
        await super().stop()

    # -- helpers ---------------------------------------------------------------------------
    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        return self._error(401, "Unauthorized", "Missing or invalid API key")

    @staticmethod
    def _error(status: int, code: str, message: str, **arguments: str) -> web.Response:
        body = {"errorCode": code, "errorMessage": message, "arguments": arguments}
        return web.json_response(body, status=status)

    @staticmethod
    def _invalid(detail: str) -> web.Response:
        return web.Response(status=400, text=f"Invalid value for: body ({detail})")

    def active_starts(self) -> set[datetime]:
        return {m.start_time for m in self.meetings if m.status == "Active"}

    def slots_between(self, start: datetime, end: datetime) -> list[datetime]:
        """Free slot starts in ``[start, end)``, earliest first."""
        booked = self.active_starts()
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

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise _BadBody("body") from None
        if not isinstance(body, dict):
            raise _BadBody("body")
        return body

    # -- handlers --------------------------------------------------------------------------
    async def _init(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = await self._json(request)
            link = body.get("link")
            if not isinstance(link, dict) or len(link) != 1:
                raise _BadBody("link")
            if "id" in link and not _is_uuid(link["id"]):
                raise _BadBody("link.id")  # the vendor's schema: a scheduling link id is a UUID
            _text(body, "guestEmail", r"[^@\s]+@[^@\s]+")
            _zone(body)
            interval = body.get("interval")
            if not isinstance(interval, dict) or not isinstance(interval.get("duration"), str):
                raise _BadBody("interval")
            start = _aware(interval.get("startsAt"), "interval.startsAt")
            try:
                duration = parse_duration(interval["duration"])
            except ValueError:
                raise _BadBody("interval.duration") from None
            if not timedelta(0) < duration <= _MAX_WINDOW:
                raise _BadBody("interval.duration")
            outputs = body.get("outputs")
            if not isinstance(outputs, list) or "StartTimes" not in outputs:
                raise _BadBody("outputs")
        except _BadBody as exc:
            return self._invalid(str(exc))
        if link != {"slug": self.slug} and link != {"id": self.link_id}:
            return self._error(404, "SchedulingLinkNotFound", "Scheduling link not found")
        route_id, starts = self._open_route(start, duration)
        return web.json_response(
            {
                "routeId": route_id,
                "startTimes": [_iso(s) for s in starts],
                "formFields": self.form_fields,
                "failures": {},
            }
        )

    def _open_route(self, start: datetime, duration: timedelta) -> tuple[str, list[datetime]]:
        route_id = str(uuid.uuid4())
        starts = self.slots_between(start, start + duration)
        self.routes[route_id] = _Route(self.clock(), starts)
        return route_id, starts

    async def _concierge(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = await self._json(request)
            form, options = body.get("form"), body.get("options")
            if not isinstance(form, dict) or not isinstance(options, dict):
                raise _BadBody("form/options")
            unknown = sorted(k for k in form if k not in self.router_form)
            if unknown:
                raise _BadBody(f"form.{unknown[0]}")  # not a field of this router's form
            _text(form, "PersonEmail", r"[^@\s]+@[^@\s]+")
            _zone(options)
            interval = options.get("interval")
            if interval is not None:
                if not isinstance(interval, dict) or not isinstance(interval.get("duration"), str):
                    raise _BadBody("options.interval")
                start = _aware(interval.get("startsAt"), "options.interval.startsAt")
                try:
                    duration = parse_duration(interval["duration"])
                except ValueError:
                    raise _BadBody("options.interval.duration") from None
                if not timedelta(0) < duration <= _MAX_WINDOW:
                    raise _BadBody("options.interval.duration")
        except _BadBody as exc:
            return self._invalid(str(exc))
        if request.match_info["router"] != self.router:
            return self._error(404, "RouterNotFound", "Router not found")
        if interval is None:  # no time window: a link the guest can open
            return web.json_response({"bookingUrl": self.booking_url})
        route_id, starts = self._open_route(start, duration)
        times = [{"startTime": _iso(s), "attendees": [self._rep_for(s)]} for s in starts]
        return web.json_response({"routingId": route_id, "startTimes": times, "formFields": []})

    def _form_problem(self, form: Any) -> str | None:
        if not isinstance(form, dict) or not all(isinstance(v, str) for v in form.values()):
            return "formData"
        for field in self.form_fields:
            ref, req = field["reference"], field["requirement"]
            if req == "Required" and not form.get(ref):
                return f"formData.{ref}"
            if isinstance(req, dict) and form.get(ref) != req.get("value"):
                return f"formData.{ref}"
        return None

    async def _schedule(self, request: web.Request) -> web.StreamResponse:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = await self._json(request)
            start = _aware(body.get("startTime"), "startTime")
            email = _text(body, "guestEmail", r"[^@\s]+@[^@\s]+")
            _zone(body)
            concierge = "/concierge/" in request.path
            problem = None if concierge else self._form_problem(body.get("formData"))
            if problem:
                raise _BadBody(problem)
        except _BadBody as exc:
            return self._invalid(str(exc))
        route = self.routes.get(request.match_info["route_id"])
        if route is None:
            return self._error(404, "RouteNotFound", "Routing not found")
        lose, self._lose_next = self._lose_next, None
        if self._steal_next and start not in self.active_starts():
            self._steal_next = False
            self.take(start)
        if route.used or self.clock() - route.created > self.route_ttl:
            answer: dict[str, Any] = {"type": "Failure", "reason": "RouteExpired"}
        elif start not in route.start_times or start in self.active_starts():
            answer = {"type": "Failure", "reason": "SlotNoLongerAvailable"}
        elif lose is False:  # lost before it applied
            answer = {}
        else:
            meeting = SandboxMeeting(
                str(uuid.uuid4()), start, email, dict(body["formData"]), self._rep_for(start)
            )
            self.meetings.append(meeting)
            answer = {"type": "Success", "meetingId": meeting.meeting_id}
        route.used = True
        if self._drop_next and answer.get("type") == "Success":
            self._drop_next = False
            if request.transport is not None:
                request.transport.abort()  # booked; the answer never leaves
            raise asyncio.CancelledError
        if lose is not None:
            await self._lost.wait()  # the answer never comes
            return self._error(503, "Released", "released")
        return web.json_response(answer)

    async def _list(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = await self._json(request)
            start = _aware(body.get("start"), "start")
            end = _aware(body.get("end"), "end")
            if not timedelta(0) < end - start <= _MAX_WINDOW:
                raise _BadBody("end")
            email = body.get("guestEmail")
            if email is not None and not isinstance(email, str):
                raise _BadBody("guestEmail")
            statuses = body.get("status", ["Active", "Canceled", "NoShow", "Completed"])
            if not isinstance(statuses, list):
                raise _BadBody("status")
            page, size = body.get("page", 0), body.get("pageSize", 10)
            if not isinstance(page, int) or isinstance(page, bool) or page < 0:
                raise _BadBody("page")
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise _BadBody("pageSize")
        except _BadBody as exc:
            return self._invalid(str(exc))
        found = [
            m.to_json()
            for m in self.meetings
            if start <= m.start_time < end
            and m.status in statuses
            and (
                email is None
                or not self.guest_filter
                or m.guest_email.casefold() == email.casefold()
            )
        ]
        more = len(found) > (page + 1) * size
        return web.json_response(
            {
                "data": {"list": found[page * size : (page + 1) * size]},
                "hasMore": "Yes" if more else "No",
                "hasMoreItems": more,
            }
        )


def _is_uuid(value: object) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False
