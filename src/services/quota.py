"""Client-side vendor quotas and a short-lived cache of answers, behind small interfaces.

Amplitude documents **360 queries per hour** for the User Search and User Activity
endpoints and **5 concurrent requests across all Dashboard REST endpoints**, per project
(``reference/apis/vendor-facts.md``) -- for the whole fleet -- and one usage lookup costs
two queries. Every Amplitude request the client sends holds a slot of the one fleet-wide
cap (key ``amplitude:quota:inflight``). :class:`VendorLimiter` keeps us under such limits *before* a
request leaves: a lookup is charged its whole cost up front against a sliding one-hour
budget, and each request holds one of the concurrency slots while it is in flight. When
the budget is spent (or no slot frees up within ``slot_wait`` seconds) it raises
:class:`QuotaExhausted` and nothing is sent; the tool answers with its spoken fallback.
A store that fails is logged and the request goes ahead (fail open: the vendor's own
429 remains the backstop); a cache that fails is a miss.
A :class:`UsageCache` answers repeated lookups of the same person without a request.

Both sit on protocols so a fleet store can back them:

* :class:`QuotaStore`: ``charge`` (atomic "add ``cost`` if the window stays within
  ``limit``") and ``acquire``/``release`` (concurrency leases that expire after
  ``lease_s``, so a crashed worker cannot hold a slot forever);
* :class:`UsageCache`: ``get``/``put`` of JSON-able dicts with a time to live.

:class:`MemoryQuotaStore` and :class:`MemoryUsageCache` implement them in memory, for
the conversations that share one instance (tests, the drill harness).
:class:`src.store.FleetQuotaStore` and :class:`src.store.FleetUsageCache` implement them
on the resilience store (``RESILIENCE_STORE_URL``: SQLite for one host, Redis for
several), which is what the worker's entry point uses: the budget, the concurrency cap
and the cache then hold for the whole fleet.

Keys never hold an email: :func:`cache_key` hashes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

from ..attempt import served_locally
from ..errors import ServiceError
from ..redaction import get_logger

__all__ = [
    "MemoryQuotaStore",
    "MemoryUsageCache",
    "QuotaExhausted",
    "QuotaStore",
    "UsageCache",
    "VendorLimiter",
    "cache_key",
]

logger = get_logger("pandadoc.services.quota")

HOUR_S = 3600.0
_SLOT_POLL_S = 0.05


class QuotaExhausted(ServiceError):
    """Our own client-side limit refused the call; nothing was sent. Not retried (the
    budget will not come back within a tool's deadline) and no evidence against the
    vendor's health, so it does not count for the breaker."""

    retryable = False
    counts_for_breaker = False


class QuotaStore(Protocol):
    """Shared counters behind :class:`VendorLimiter` (one process, or the fleet)."""

    async def charge(self, key: str, cost: int, limit: int, window_s: float) -> bool:
        """Atomically add ``cost`` to ``key``'s sliding window of ``window_s`` seconds if
        the total stays within ``limit``; ``False`` (and nothing added) otherwise."""
        ...

    async def acquire(self, key: str, limit: int, lease_s: float) -> str | None:
        """A lease on one of ``limit`` slots of ``key`` (expires after ``lease_s``
        seconds), or ``None`` when all are taken."""
        ...

    async def release(self, key: str, lease: str) -> None:
        """Give a lease back (a no-op if it already expired)."""
        ...


class UsageCache(Protocol):
    """Short-lived answers by key (JSON-able dicts, so a shared store can hold them)."""

    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None: ...


def cache_key(service: str, email: str) -> str:
    """A store key for one person at one vendor: a hash, never the address itself."""
    digest = hashlib.sha256(email.strip().casefold().encode()).hexdigest()[:32]
    return f"{service}:usage:{digest}"


# -- in-process implementations ------------------------------------------------------------


class MemoryQuotaStore:
    """:class:`QuotaStore` in one process. ``clock``: monotonic seconds (injectable)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._charges: dict[str, deque[tuple[float, int]]] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._ids = itertools.count(1)

    def used(self, key: str, window_s: float = HOUR_S) -> int:
        """Units charged to ``key`` within the last ``window_s`` seconds."""
        return sum(cost for _, cost in self._window(key, window_s))

    def _window(self, key: str, window_s: float) -> deque[tuple[float, int]]:
        charges = self._charges.setdefault(key, deque())
        horizon = self._clock() - window_s
        while charges and charges[0][0] <= horizon:
            charges.popleft()
        return charges

    async def charge(self, key: str, cost: int, limit: int, window_s: float) -> bool:
        charges = self._window(key, window_s)
        if sum(c for _, c in charges) + cost > limit:
            return False
        charges.append((self._clock(), cost))
        return True

    async def acquire(self, key: str, limit: int, lease_s: float) -> str | None:
        now = self._clock()
        leases = self._leases.setdefault(key, {})
        for lease, expires in list(leases.items()):
            if expires <= now:
                del leases[lease]
        if len(leases) >= limit:
            return None
        lease = str(next(self._ids))
        leases[lease] = now + lease_s
        return lease

    async def release(self, key: str, lease: str) -> None:
        self._leases.get(key, {}).pop(lease, None)


class MemoryUsageCache:
    """:class:`UsageCache` in one process, at most ``max_entries`` (oldest dropped)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, *, max_entries: int = 10_000
    ) -> None:
        self._clock = clock
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    async def get(self, key: str) -> dict[str, Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        served_locally()  # issue #23: no word from the vendor (a probe is not answered)
        return dict(value)

    async def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + ttl_s, dict(value))
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


# -- the limiter -----------------------------------------------------------------------------


class VendorLimiter:
    """One vendor's client-side limits: an hourly budget and a concurrency cap.

    Args:
        service: the vendor (``"amplitude"``), also the store key prefix.
        store: where the counters live (:class:`QuotaStore`).
        hourly_budget: queries per sliding hour; ``0`` turns the budget off.
        max_concurrent: requests in flight at once; ``0`` turns the cap off.
        lease_s: how long a slot is held at most if its holder never releases it.
        slot_wait: seconds to wait for a free slot before giving up.
        sleep / clock: injectable, so tests never wait in real time.
    """

    def __init__(
        self,
        service: str,
        store: QuotaStore,
        *,
        hourly_budget: int,
        max_concurrent: int,
        lease_s: float = 30.0,
        slot_wait: float = 1.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if hourly_budget < 0 or max_concurrent < 0:
            raise ValueError("limits must be >= 0 (0: off)")
        self.service = service
        self.store = store
        self.hourly_budget = hourly_budget
        self.max_concurrent = max_concurrent
        self._lease_s = lease_s
        self._slot_wait = slot_wait
        self._sleep = sleep
        self._clock = clock

    async def charge(self, cost: int) -> None:
        """Spend ``cost`` queries of the hourly budget, or raise :class:`QuotaExhausted`."""
        if self.hourly_budget == 0:
            return
        key = f"{self.service}:quota:hour"
        try:
            allowed = await self.store.charge(key, cost, self.hourly_budget, HOUR_S)
        except Exception as exc:
            # Fail open: the vendor's own 429 stays the backstop when the store is down.
            logger.warning("%s: quota store unavailable (%s)", self.service, type(exc).__name__)
            return
        if not allowed:
            logger.warning(
                "%s: hourly query budget (%d) spent; answering without a request",
                self.service,
                self.hourly_budget,
                extra={"service": self.service},
            )
            raise QuotaExhausted(self.service, f"{self.service}: hourly query budget spent")

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one concurrency slot for the duration of a request."""
        if self.max_concurrent == 0:
            yield
            return
        key = f"{self.service}:quota:inflight"
        give_up_at = self._clock() + self._slot_wait
        while True:
            try:
                lease = await self.store.acquire(key, self.max_concurrent, self._lease_s)
            except Exception as exc:  # fail open, as for the budget
                logger.warning("%s: quota store unavailable (%s)", self.service, type(exc).__name__)
                lease = ""
                break
            if lease is not None:
                break
            if self._clock() >= give_up_at:
                logger.warning(
                    "%s: %d requests already in flight; answering without a request",
                    self.service,
                    self.max_concurrent,
                    extra={"service": self.service},
                )
                raise QuotaExhausted(self.service, f"{self.service}: no free request slot")
            await self._sleep(_SLOT_POLL_S)
        try:
            yield
        finally:
            if lease:  # "": the store failed, there is nothing to give back
                with contextlib.suppress(Exception):  # an unreleased lease expires anyway
                    await self.store.release(key, lease)
