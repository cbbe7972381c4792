"""Amplitude client: what a trial user has done in PandaDoc so far.

Endpoint choice
---------------
Amplitude offers two ways to read one user (see ``reference/apis/amplitude-*.yml``):

* **Dashboard REST** (``https://amplitude.com/api/2/...``, HTTP Basic ``api_key:secret_key``):
  ``GET /api/2/usersearch?user=<email>`` resolves the user id to an Amplitude id, then
  ``GET /api/2/useractivity?user=<amplitude id>`` returns the user's most recent events
  (up to 1000) and ``userData`` (the user properties).
* **User Profile** (``https://profile-api.amplitude.com/v1/userprofile``,
  ``Authorization: Api-Key <secret>``): one call, but it only returns user properties and
  *computed* properties, which would have to be configured in Amplitude first.

We use **Dashboard REST**: the counts we need (documents created/sent/completed,
templates, integrations, last activity) are plain events that it returns without any
Amplitude-side setup; ``usersearch`` gives a clean "no such user" answer (an empty
``matches`` list -> :class:`~src.errors.NotFound`); it is the host and credential pair the
rest of our configuration already uses (``AMPLITUDE_API_KEY``/``AMPLITUDE_SECRET_KEY``,
``AMPLITUDE_BASE_URL`` defaulting to ``https://amplitude.com``; the EU residency host is
``https://analytics.eu.amplitude.com``). The cost is two sequential round trips, each
bounded by ``options.timeout``: one :meth:`AmplitudeClient.get_trial_usage` call takes at
most twice that, and the agent's per-tool deadline bounds the whole call anyway. (A shared
budget measured here would also charge the requests for one-off work such as the HTTP
session's first creation.)

Assumptions about PandaDoc's tracking plan (module constants below): the Amplitude
``user_id`` is the user's email address; the event types are ``Document Created``,
``Document Sent``, ``Document Completed``, ``Template Created`` and ``Integration
Connected`` (with an ``integration`` event property naming the integration); the user
property ``trial_end_date`` holds the end of the trial; it is free-form, so it is read
leniently (:func:`~src.services.amplitude_dates.parse_trial_end`: ISO dates and
date-times, US forms, epoch milliseconds) and, when unreadable, only that fact is
dropped. Counts cover the most recent 1000 events (one page), far more than a trial
produces.

Note: the reference describes ``useractivity``'s ``user`` parameter as the user id; the
live API takes the Amplitude id returned by ``usersearch``, which is what we send (the
sandbox, like the live API, refuses a user id there).

Idempotency: both calls are reads with no side effects, so :meth:`get_trial_usage` is
idempotent and safe to retry whenever the raised error says ``retryable``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import pydantic

from ..errors import BadResponse, InvalidRequest, NotFound
from ..phrases import usage_sentence
from ..redaction import get_logger, register_secret
from .amplitude_dates import parse_trial_end
from .http import DEFAULT_HTTP_OPTIONS, HttpOptions, ServiceClient, ServiceHttp, parse_model
from .quota import UsageCache, VendorLimiter, cache_key

__all__ = [
    "EVENT_DOCUMENT_COMPLETED",
    "EVENT_DOCUMENT_CREATED",
    "EVENT_DOCUMENT_SENT",
    "EVENT_INTEGRATION_CONNECTED",
    "EVENT_TEMPLATE_CREATED",
    "HOURLY_QUERY_LIMIT",
    "MAX_CONCURRENT_REQUESTS",
    "QUERIES_PER_LOOKUP",
    "TRIAL_END_PROPERTY",
    "AmplitudeClient",
    "TrialUsage",
]

SERVICE = "amplitude"

EVENT_DOCUMENT_CREATED = "Document Created"
EVENT_DOCUMENT_SENT = "Document Sent"
EVENT_DOCUMENT_COMPLETED = "Document Completed"
EVENT_TEMPLATE_CREATED = "Template Created"
EVENT_INTEGRATION_CONNECTED = "Integration Connected"
INTEGRATION_PROPERTY = "integration"
TRIAL_END_PROPERTY = "trial_end_date"

# == Amplitude facts this client relies on =====================================================
# Sources: reference/apis/vendor-facts.md ("Amplitude Dashboard REST") and
# amplitude-dashboard-rest.openapi.yml. The settings' defaults are these limits
# (AMPLITUDE_HOURLY_QUERY_BUDGET, AMPLITUDE_MAX_CONCURRENT); a lookup holds one slot of the
# fleet-wide concurrency cap for its two requests (usersearch, then useractivity), which it
# sends one after the other: never more requests in flight than slots held.
HOURLY_QUERY_LIMIT = 360  # usersearch + useractivity queries per hour, per project
MAX_CONCURRENT_REQUESTS = 5  # in flight across all Dashboard REST endpoints, per project
# usersearch?user= may match an id prefix: the returned user_id is checked exactly; no
# match is HTTP 200 with ``matches: []``.
_EVENT_PAGE = 1000  # the API's maximum page size
# == end of Amplitude facts ====================================================================
# Events validated between two yields to the event loop: about a millisecond of work, so a
# page at the size cap never holds the loop (and every conversation's audio) for long.
_VALIDATE_BATCH = 250
QUERIES_PER_LOOKUP = 2  # usersearch + useractivity, against the hourly budget

logger = get_logger("pandadoc.services.amplitude")


# -- the result ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialUsage:
    """One trial user's product usage, as counted from their Amplitude events.

    Attributes:
        documents_created: documents created during the trial so far.
        documents_sent: documents sent for signature.
        documents_completed: documents completed (every recipient signed).
        templates_created: templates created.
        integrations: names of connected integrations, oldest connection first, no repeats.
        last_active_at: time of the most recent event (UTC), ``None`` if there are none.
        last_active_days_ago: whole days (24 h) between ``last_active_at`` and the lookup;
            ``None`` when ``last_active_at`` is.
        trial_days_left: calendar days until the trial ends (0: ends today, negative: has
            ended), ``None`` when unknown.
    """

    documents_created: int = 0
    documents_sent: int = 0
    documents_completed: int = 0
    templates_created: int = 0
    integrations: tuple[str, ...] = ()
    last_active_at: datetime | None = None
    last_active_days_ago: int | None = None
    trial_days_left: int | None = None

    def __post_init__(self) -> None:
        counts = (
            self.documents_created,
            self.documents_sent,
            self.documents_completed,
            self.templates_created,
        )
        if any(c < 0 for c in counts):
            raise ValueError("usage counts must be >= 0")
        if self.last_active_days_ago is not None and self.last_active_days_ago < 0:
            raise ValueError("last_active_days_ago must be >= 0")

    def spoken_summary(self) -> str:
        """One short sentence for the caller (:func:`src.phrases.usage_sentence`)."""
        return usage_sentence(
            self.documents_created,
            self.documents_sent,
            self.documents_completed,
            days_left=self.trial_days_left,
            last_active_days_ago=self.last_active_days_ago,
        )


# -- wire models: only the fields we use, validated -------------------------------------


class _Match(pydantic.BaseModel):
    user_id: str | None = None
    amplitude_id: int


class _UserSearch(pydantic.BaseModel):
    matches: list[_Match]


class _Event(pydantic.BaseModel):
    event_type: str
    event_time: datetime
    event_properties: dict[str, Any] = pydantic.Field(default_factory=dict)


class _UserProperties(pydantic.BaseModel):
    # TRIAL_END_PROPERTY: free-form, read leniently by parse_trial_end (any JSON value).
    trial_end_date: Any = None


class _UserData(pydantic.BaseModel):
    properties: _UserProperties = pydantic.Field(default_factory=_UserProperties)


class _UserActivity(pydantic.BaseModel):
    user_data: _UserData = pydantic.Field(default_factory=_UserData, alias="userData")
    events: list[_Event]


class _Events(pydantic.RootModel[list[_Event]]):
    pass


async def parse_activity(data: Any) -> _UserActivity:
    """Validate a user-activity page in batches of events, yielding to the event loop
    between batches; a mismatch is :class:`BadResponse`, as with :func:`parse_model`."""
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(events, list):
        return parse_model(SERVICE, _UserActivity, data)  # the precise BadResponse
    page = parse_model(SERVICE, _UserActivity, {**data, "events": []})
    for start in range(0, len(events), _VALIDATE_BATCH):
        await asyncio.sleep(0)
        page.events.extend(
            parse_model(SERVICE, _Events, events[start : start + _VALIDATE_BATCH]).root
        )
    return page


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _as_utc(when: datetime) -> datetime:
    # The API sends naive "YYYY-MM-DD HH:MM:SS[.ffffff]" times in UTC.
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _facts(events: list[_Event], trial_end: date | None) -> dict[str, Any]:
    """The counts, integrations, last activity and trial end of ``events`` (JSON-able)."""
    counts = {
        EVENT_DOCUMENT_CREATED: 0,
        EVENT_DOCUMENT_SENT: 0,
        EVENT_DOCUMENT_COMPLETED: 0,
        EVENT_TEMPLATE_CREATED: 0,
    }
    connected: list[tuple[datetime, str]] = []
    last: datetime | None = None
    for event in events:
        when = _as_utc(event.event_time)
        last = when if last is None or when > last else last
        if event.event_type in counts:
            counts[event.event_type] += 1
        elif event.event_type == EVENT_INTEGRATION_CONNECTED:
            name = event.event_properties.get(INTEGRATION_PROPERTY)
            if isinstance(name, str) and name.strip():
                connected.append((when, name.strip()))
    integrations = tuple(dict.fromkeys(name for _, name in sorted(connected)))
    return {
        "documents_created": counts[EVENT_DOCUMENT_CREATED],
        "documents_sent": counts[EVENT_DOCUMENT_SENT],
        "documents_completed": counts[EVENT_DOCUMENT_COMPLETED],
        "templates_created": counts[EVENT_TEMPLATE_CREATED],
        "integrations": list(integrations),
        "last_active_at": None if last is None else last.isoformat(),
        "trial_end": None if trial_end is None else trial_end.isoformat(),
    }


class _Facts(pydantic.BaseModel):
    """What a lookup found, independent of when it is spoken: the form kept in the
    usage cache (JSON-able, so a fleet store can hold it)."""

    documents_created: int = pydantic.Field(ge=0)
    documents_sent: int = pydantic.Field(ge=0)
    documents_completed: int = pydantic.Field(ge=0)
    templates_created: int = pydantic.Field(ge=0)
    integrations: list[str]
    last_active_at: datetime | None
    trial_end: date | None


# A trial end further out than this is a placeholder ("no end", a converted account), not a
# trial: saying "over twenty-six thousand days left" would be absurd, so that fact is left out.
MAX_TRIAL_DAYS_LEFT = 90


def _plausible_days_left(trial_end: date | None, now: datetime) -> int | None:
    if trial_end is None:
        return None
    days = (trial_end - now.date()).days
    if days > MAX_TRIAL_DAYS_LEFT:
        logger.info("amplitude: trial end %d days away is not a trial end; left out", days)
        return None
    return days


def _as_of(facts: dict[str, Any], now: datetime) -> TrialUsage:
    """The :class:`TrialUsage` of ``facts`` as of ``now``, the relative days included."""
    f = _Facts.model_validate(facts)
    last = None if f.last_active_at is None else _as_utc(f.last_active_at)
    return TrialUsage(
        documents_created=f.documents_created,
        documents_sent=f.documents_sent,
        documents_completed=f.documents_completed,
        templates_created=f.templates_created,
        integrations=tuple(f.integrations),
        last_active_at=last,
        last_active_days_ago=None if last is None else max(0, (now - last) // timedelta(days=1)),
        trial_days_left=_plausible_days_left(f.trial_end, now),
    )


# -- the client ---------------------------------------------------------------------------


class AmplitudeClient(ServiceClient):
    """Reads trial usage from Amplitude's Dashboard REST API.

    Args:
        api_key: project API key (``AMPLITUDE_API_KEY``), the Basic-auth user name.
        secret_key: project secret key (``AMPLITUDE_SECRET_KEY``), the Basic-auth password.
        base_url: API host (``AMPLITUDE_BASE_URL``), default ``https://amplitude.com``.
        options: per-request timeouts (default 4.0 s total, 1.5 s connect); a
            :meth:`get_trial_usage` call makes two requests in sequence.
        session: an ``aiohttp.ClientSession`` to reuse (not closed by :meth:`aclose`).
        clock: returns the current time (aware, UTC), for "days ago" and "days left".
        limiter: client-side quota (hourly budget + concurrency, :class:`VendorLimiter`);
            a lookup is charged :data:`QUERIES_PER_LOOKUP` up front. ``None``: no limit.
        cache: keeps each person's usage for ``cache_ttl`` seconds (:class:`UsageCache`)
            so repeated lookups send nothing. ``None`` or ``cache_ttl <= 0``: no cache.
    """

    service = SERVICE

    def __init__(
        self,
        api_key: str,
        secret_key: str,
        base_url: str = "https://amplitude.com",
        *,
        options: HttpOptions = DEFAULT_HTTP_OPTIONS,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], datetime] = _utc_now,
        limiter: VendorLimiter | None = None,
        cache: UsageCache | None = None,
        cache_ttl: float = 0.0,
    ) -> None:
        if not api_key or not secret_key:
            raise ValueError("amplitude: api_key and secret_key are required")
        register_secret(api_key)
        register_secret(secret_key)
        token = base64.b64encode(f"{api_key}:{secret_key}".encode()).decode("ascii")
        register_secret(token)
        self._headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}
        self._http = ServiceHttp(SERVICE, base_url, options=options, session=session)
        self._clock = clock
        self._limiter = limiter
        self._cache = cache if cache_ttl > 0 else None
        self._cache_ttl = cache_ttl

    async def cached_usage(self, email: str) -> TrialUsage | None:
        """The usage of ``email`` from the cache, as of now; ``None`` when not cached
        (or the cache is off, or its entry is unreadable). Sends nothing."""
        if self._cache is None or not email.strip():
            return None
        try:
            facts = await self._cache.get(cache_key(SERVICE, email))
        except Exception as exc:  # a shared store that is down is only a cache miss
            logger.warning("amplitude: usage cache unavailable (%s)", type(exc).__name__)
            return None
        if facts is None:
            return None
        try:
            return _as_of(facts, self._clock())
        except (pydantic.ValidationError, ValueError):
            logger.warning("amplitude: unreadable usage cache entry ignored")
            return None

    async def _get(self, path: str, params: dict[str, Any]) -> Any:
        return await self._http.request(
            "GET", path, params=params, headers=self._headers, on_404=BadResponse
        )

    def _slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        """One slot of the fleet-wide concurrency cap, for one lookup's requests (sent one
        after the other, so never more than one of them in flight)."""
        return self._limiter.slot() if self._limiter is not None else contextlib.nullcontext()

    async def get_trial_usage(self, email: str, *, cached: bool = True) -> TrialUsage:
        """The trial usage of the user whose Amplitude user id is ``email``; with
        ``cached`` (default) a cached answer is given first (a caller that has just
        looked, :meth:`cached_usage`, passes ``False``).

        Idempotent (two reads): safe to retry when the error is ``retryable``.

        Raises:
            NotFound: Amplitude has no user with that id (does not count for the breaker).
            InvalidRequest: ``email`` is blank (nothing is sent).
            ServiceError: any other failure, translated by :class:`ServiceHttp`.
        """
        user_id = email.strip()
        if not user_id:
            raise InvalidRequest(SERVICE, "amplitude: empty user id")
        if cached:
            known = await self.cached_usage(user_id)
            if known is not None:
                logger.debug("amplitude usage served from the cache")
                return known
        if self._limiter is not None:
            await self._limiter.charge(QUERIES_PER_LOOKUP)  # QuotaExhausted: nothing sent
        async with self._slot():
            # A 404 is never "no user": a search answers "nobody" with an empty list.
            found = parse_model(
                SERVICE, _UserSearch, await self._get("/api/2/usersearch", {"user": user_id})
            )
            wanted = user_id.casefold()
            # Only an exact user-id match: reading someone else's usage aloud would leak.
            match = next(
                (m for m in found.matches if (m.user_id or "").casefold() == wanted),
                None,
            )
            if match is None:
                raise NotFound(SERVICE, "amplitude: no user with that id")
            params = {"user": match.amplitude_id, "offset": 0, "limit": _EVENT_PAGE}
            page = await self._get("/api/2/useractivity", params)
        activity = await parse_activity(page)  # validated after the slot is given back
        trial_end = parse_trial_end(activity.user_data.properties.trial_end_date)
        facts = _facts(activity.events, trial_end)
        usage = _as_of(facts, self._clock())
        if self._cache is not None:
            try:
                await self._cache.put(cache_key(SERVICE, user_id), facts, self._cache_ttl)
            except Exception as exc:
                logger.warning("amplitude: usage not cached (%s)", type(exc).__name__)
        logger.debug(
            "amplitude usage for amplitude_id=%s: %d events",
            match.amplitude_id,
            len(activity.events),
        )
        return usage
