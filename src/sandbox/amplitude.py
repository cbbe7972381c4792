"""Amplitude Dashboard REST stand-in: ``/api/2/usersearch`` and ``/api/2/useractivity``.

Speaks the shapes of ``reference/apis/amplitude-dashboard-rest.openapi.yml`` with HTTP
Basic auth (``api_key:secret_key`` from :data:`~src.sandbox.data.SANDBOX_CREDENTIALS`;
anything else -> 401). Users come from :data:`~src.sandbox.data.TRIAL_USERS`, keyed by
email as the Amplitude ``user_id``; their events are generated deterministically from the
seeded counts (same user, same clock -> same events):

* ``Document Created`` x ``documents_created``, ``Document Sent`` x ``documents_sent``,
  ``Document Completed`` x ``documents_completed``, ``Template Created`` x
  ``templates_created``, one ``Integration Connected`` per integration (event property
  ``integration``), plus a few ``Viewed Dashboard`` events a client must ignore;
* the newest event is ``last_active_days_ago`` days (and five minutes) before ``now``,
  older ones three hours apart;
* ``userData.properties.trial_end_date`` is ``trial_days_left`` days after today (UTC).

``useractivity`` takes only the Amplitude id (a number, as ``usersearch`` returns it),
as the live API does: a ``user_id`` such as an email there is a 400, as is an unknown
user. Other methods on either path are 405 and unknown paths 404, JSON bodies like the
rest. ``trial_end_values`` (email -> any JSON value, or :data:`OMIT`) replaces a user's
``trial_end_date`` property, for the free-form values real tracking code sends. A MALFORMED
fault answers 200 with valid JSON of the wrong shape, so clients exercise their schema
validation rather than only their JSON decoding.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from .base import SandboxServer, json_error
from .data import SANDBOX_CREDENTIALS, TRIAL_USERS, TrialUser

__all__ = ["OMIT", "AmplitudeServer", "generate_events"]

OMIT = object()  # a trial_end_values entry that leaves the property out

_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
_NOISE_EVENTS = 3
_STEP = timedelta(hours=3)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def generate_events(user: TrialUser, now: datetime) -> list[dict[str, Any]]:
    """The user's events, newest first, as ``useractivity`` returns them."""
    kinds: list[tuple[str, dict[str, Any]]] = []
    kinds += [("Viewed Dashboard", {})] * _NOISE_EVENTS
    kinds += [("Integration Connected", {"integration": name}) for name in user.integrations]
    kinds += [("Template Created", {})] * user.templates_created
    kinds += [("Document Created", {})] * user.documents_created
    kinds += [("Document Sent", {})] * user.documents_sent
    kinds += [("Document Completed", {})] * user.documents_completed
    newest = now - timedelta(days=user.last_active_days_ago, minutes=5)
    events = []
    for age, (event_type, props) in enumerate(reversed(kinds)):
        when = newest - age * _STEP
        events.append(
            {
                "event_id": len(kinds) - age,
                "event_type": event_type,
                "event_time": when.strftime(_TIME_FORMAT),
                "event_properties": dict(props),
                "user_id": user.email,
                "amplitude_id": user.amplitude_id,
                "session_id": int((when - timedelta(minutes=age % 7)).timestamp() * 1000),
                "platform": "Web",
            }
        )
    return events


class AmplitudeServer(SandboxServer):
    """Amplitude Dashboard REST sandbox.

    Args:
        now: current time (aware, UTC) used to date the generated events and trial ends.
        users: the seeded users, default :data:`TRIAL_USERS`.
    """

    name = "amplitude"

    def __init__(
        self,
        *,
        now: Callable[[], datetime] = _utc_now,
        users: tuple[TrialUser, ...] = TRIAL_USERS,
    ) -> None:
        self.now = now
        self.users = users
        self.api_key = SANDBOX_CREDENTIALS["AMPLITUDE_API_KEY"]
        self.secret_key = SANDBOX_CREDENTIALS["AMPLITUDE_SECRET_KEY"]
        self.trial_end_values: dict[str, Any] = {}
        super().__init__()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/2/usersearch", self._usersearch)
        app.router.add_get("/api/2/useractivity", self._useractivity)
        for path in ("/api/2/usersearch", "/api/2/useractivity"):
            app.router.add_route("*", path, self._method_not_allowed)
        app.router.add_route("*", "/api/{tail:.*}", self._not_found)

    @staticmethod
    async def _method_not_allowed(request: web.Request) -> web.Response:
        return json_error(405, f"Method {request.method} not allowed")

    @staticmethod
    async def _not_found(request: web.Request) -> web.Response:
        return json_error(404, "Not found")

    def malformed_body(self, request: web.Request) -> web.Response:
        if request.path.endswith("/usersearch"):
            broken: Any = {"matches": [{"user_id": 42, "amplitude_id": "not-a-number"}]}
        else:
            broken = {"userData": {}, "events": [{"event_type": None, "event_time": "soon"}]}
        return web.json_response(broken)

    # -- helpers --------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        return decoded == f"{self.api_key}:{self.secret_key}"

    def _find(self, key: str) -> TrialUser | None:
        wanted = key.strip().casefold()
        for user in self.users:
            if wanted in (user.email.casefold(), str(user.amplitude_id)):
                return user
        return None

    # -- handlers ------------------------------------------------------------------------------
    async def _usersearch(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return json_error(401, "Invalid API key or secret key")
        key = request.query.get("user", "")
        if not key.strip():
            return json_error(400, "Missing required parameter: user")
        user = self._find(key)
        if user is None:
            return web.json_response({"matches": [], "type": "nomatch"})
        last_seen = self.now() - timedelta(days=user.last_active_days_ago)
        return web.json_response(
            {
                "matches": [
                    {
                        "user_id": user.email,
                        "amplitude_id": user.amplitude_id,
                        "last_seen": last_seen.strftime("%Y-%m-%d"),
                        "platform": "Web",
                        "country": "United States",
                    }
                ],
                "type": "match_user_or_device_id",
            }
        )

    async def _useractivity(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return json_error(401, "Invalid API key or secret key")
        key = request.query.get("user", "")
        try:
            offset = int(request.query.get("offset", "0"))
            limit = int(request.query.get("limit", "1000"))
        except ValueError:
            return json_error(400, "offset and limit must be integers")
        if not key.strip() or offset < 0 or not 0 < limit <= 1000:
            return json_error(400, "Invalid user, offset or limit")
        if not key.strip().isdigit():
            # The live API wants the Amplitude ID here, not the user_id.
            return json_error(400, "Invalid user: expected an Amplitude ID")
        user = self._find(key)
        if user is None:
            return json_error(400, "User not found")
        now = self.now()
        events = generate_events(user, now)
        properties: dict[str, Any] = {
            "trial_end_date": (now + timedelta(days=user.trial_days_left)).date().isoformat(),
            "plan": user.plan,
            "company": user.company,
        }
        override = self.trial_end_values.get(user.email, properties["trial_end_date"])
        if override is OMIT:
            del properties["trial_end_date"]
        else:
            properties["trial_end_date"] = override
        return web.json_response(
            {
                "userData": {
                    "user_id": user.email,
                    "amplitude_id": user.amplitude_id,
                    "canonical_amplitude_id": user.amplitude_id,
                    "num_events": len(events),
                    "last_used": events[0]["event_time"][:10] if events else None,
                    "properties": properties,
                },
                "events": events[offset : offset + limit],
            }
        )
