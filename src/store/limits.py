"""Vendor quotas and the usage cache, fleet-wide: :class:`FleetQuotaStore` and
:class:`FleetUsageCache` implement :mod:`src.services.quota`'s ``QuotaStore`` and
``UsageCache`` protocols on the resilience store, through its :class:`StoreGuard` (each
call cut at 0.3 s; one warning a minute and a metric when the store fails; a cool-down,
then a reconnect).

When the store cannot answer, nothing breaks and nothing is spoken:

* the quota falls back to this conversation's own in-memory counters, so the request
  goes ahead (the vendor's 429 stays the backstop) and a runaway loop is still bounded;
  a lease taken locally is given back locally;
* the cache is a miss, and a usage that could not be kept is simply not cached.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..attempt import served_locally
from ..services.quota import MemoryQuotaStore
from .base import StoreError
from .guard import StoreGuard

__all__ = ["FleetQuotaStore", "FleetUsageCache"]

LOCAL = "local:"  # prefix of a lease taken from the local fallback


class FleetQuotaStore:
    """``QuotaStore`` shared by every conversation that uses the same store."""

    def __init__(self, guard: StoreGuard, local: MemoryQuotaStore | None = None) -> None:
        self._guard = guard
        self.local = local or MemoryQuotaStore()

    async def charge(self, key: str, cost: int, limit: int, window_s: float) -> bool:
        store = self._guard.store
        try:
            return await self._guard.run(
                lambda: store.quota_charge(key, cost, limit, window_s), "quota charge"
            )
        except StoreError:
            return await self.local.charge(key, cost, limit, window_s)

    async def acquire(self, key: str, limit: int, lease_s: float) -> str | None:
        store = self._guard.store
        try:
            return await self._guard.run(
                lambda: store.quota_acquire(key, limit, lease_s), "quota slot"
            )
        except StoreError:
            lease = await self.local.acquire(key, limit, lease_s)
            return None if lease is None else LOCAL + lease

    async def release(self, key: str, lease: str) -> None:
        if lease.startswith(LOCAL):
            await self.local.release(key, lease.removeprefix(LOCAL))
            return
        store = self._guard.store
        with contextlib.suppress(StoreError):  # unreleased, the lease expires by itself
            await self._guard.run(lambda: store.quota_release(key, lease), "quota release")


class FleetUsageCache:
    """``UsageCache`` shared by every conversation that uses the same store."""

    def __init__(self, guard: StoreGuard) -> None:
        self._guard = guard

    async def get(self, key: str) -> dict[str, Any] | None:
        store = self._guard.store
        try:
            found = await self._guard.run(lambda: store.cache_get(key), "usage cache read")
        except StoreError:
            return None
        if found is not None:
            served_locally()  # issue #23: no word from the vendor (a probe is not answered)
        return found

    async def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        store = self._guard.store
        with contextlib.suppress(StoreError):
            await self._guard.run(lambda: store.cache_put(key, value, ttl_s), "usage cache write")
