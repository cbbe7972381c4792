"""``memory://``: one process's store, for unit tests (nothing is shared or durable)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any

from ..services.quota import MemoryQuotaStore, MemoryUsageCache
from .base import Mutation, OutboxItem, R, Record, ResilienceStore, StoreError, new_record

__all__ = ["MemoryStore"]


class MemoryStore(ResilienceStore):
    """Dicts guarded by the event loop (every operation runs between awaits).

    ``clock``: seconds, injectable for tests. ``fail``: set True to make every operation
    raise :class:`StoreError` (a store outage in tests)."""

    url_scheme = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._records: dict[str, Record] = {}
        self._outbox: dict[str, OutboxItem] = {}
        self._quota = MemoryQuotaStore(clock)
        self._cache = MemoryUsageCache(clock)
        self.fail = False

    def _check(self) -> None:
        if self.fail:
            raise StoreError("memory store set to fail")

    async def _mutate(self, name: str, fn: Mutation[R]) -> tuple[R, Record, float]:
        self._check()
        now = self._clock()
        rec = self._records.setdefault(name, new_record())
        result, _ = fn(rec, now)
        return result, copy.deepcopy(rec), now

    async def _read(self, name: str) -> tuple[Record, float]:
        self._check()
        return copy.deepcopy(self._records.get(name, new_record())), self._clock()

    async def outbox_put(self, item_id: str, payload: str) -> None:
        self._check()
        if item_id not in self._outbox:
            self._outbox[item_id] = OutboxItem(item_id, payload, self._clock(), 0.0)

    async def outbox_put_claimed(self, item_id: str, payload: str, lease: float) -> str | None:
        self._check()
        now = self._clock()
        item = self._outbox.get(item_id)
        if item is None:
            self._outbox[item_id] = OutboxItem(item_id, payload, now, now + lease)
            return payload
        if item.claimed_until > now or item.dead:
            return None
        self._outbox[item_id] = replace(item, claimed_until=now + lease)
        return item.payload

    async def outbox_claim(
        self, limit: int, lease: float, skip: Collection[str] = ()
    ) -> list[OutboxItem]:
        self._check()
        now = self._clock()
        claimed: list[OutboxItem] = []
        for item in sorted(self._outbox.values(), key=lambda i: i.created):
            if len(claimed) >= limit:
                break
            free = item.claimed_until <= now and item.next_at <= now and not item.dead
            if free and item.id not in skip:
                taken = replace(item, claimed_until=now + lease)
                self._outbox[item.id] = taken
                claimed.append(taken)
        return claimed

    async def outbox_done(self, item_id: str) -> None:
        self._check()
        self._outbox.pop(item_id, None)

    async def outbox_mark(self, item_id: str, payload: str) -> None:
        self._check()
        item = self._outbox.get(item_id)
        if item is not None:
            self._outbox[item_id] = replace(item, payload=payload)

    async def outbox_release(
        self, item_id: str, payload: str | None = None, delay: float = 0.0
    ) -> None:
        self._check()
        item = self._outbox.get(item_id)
        if item is not None:
            self._outbox[item_id] = replace(
                item,
                payload=payload if payload is not None else item.payload,
                claimed_until=0.0,
                next_at=self._clock() + delay if delay > 0 else 0.0,
            )

    async def outbox_bury(self, item_id: str, payload: str, reason: str) -> None:
        self._check()
        item = self._outbox.get(item_id)
        if item is not None:
            self._outbox[item_id] = replace(
                item, payload=payload, claimed_until=0.0, dead=reason or "dead"
            )

    async def outbox_revive(self, item_id: str, payload: str | None = None) -> bool:
        self._check()
        item = self._outbox.get(item_id)
        if item is None:
            return False
        self._outbox[item_id] = replace(
            item,
            payload=payload if payload is not None else item.payload,
            claimed_until=0.0,
            next_at=0.0,
            dead="",
        )
        return True

    async def outbox_list(self) -> list[OutboxItem]:
        self._check()
        return sorted(self._outbox.values(), key=lambda i: i.created)

    # -- vendor quotas and the usage cache: the in-process implementations ----------
    async def quota_charge(self, key: str, cost: int, limit: int, window_s: float) -> bool:
        self._check()
        return await self._quota.charge(key, cost, limit, window_s)

    async def quota_acquire(self, key: str, limit: int, lease_s: float) -> str | None:
        self._check()
        return await self._quota.acquire(key, limit, lease_s)

    async def quota_release(self, key: str, lease: str) -> None:
        self._check()
        await self._quota.release(key, lease)

    async def cache_get(self, key: str) -> dict[str, Any] | None:
        self._check()
        return await self._cache.get(key)

    async def cache_put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        self._check()
        await self._cache.put(key, value, ttl_s)
