"""``redis://host:port/db`` (``rediss://`` for TLS): the store for several workers or
LiveKit Cloud replicas, on redis-py's asyncio client. Every timestamp is the Redis
server's ``TIME``, so hosts whose clocks disagree still agree on when a circuit may be
probed. Breaker records change in WATCH/MULTI transactions; outbox claims and vendor
quota checks each run in one Lua script. Short socket timeouts: a slow or dead Redis is a
:class:`StoreError` in a fraction of a second, and the client reconnects by itself on the
next call."""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from .base import (
    Mutation,
    OutboxItem,
    R,
    Record,
    ResilienceStore,
    StoreError,
    new_record,
    parse_cached,
)

__all__ = ["RedisStore"]

SOCKET_TIMEOUT_S = 0.25
PREFIX = "pandadoc:resilience:"

_PUT = """
local t = redis.call('TIME')
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('ZADD', KEYS[2], tonumber(t[1]) + tonumber(t[2]) / 1e6, ARGV[1])
end
return 1
"""

_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if #out >= 4 * limit then break end
  local until_ = tonumber(redis.call('HGET', KEYS[3], id) or '0')
  if until_ <= now then
    redis.call('HSET', KEYS[3], id, tostring(now + lease))
    table.insert(out, id)
    table.insert(out, redis.call('HGET', KEYS[1], id))
    table.insert(out, redis.call('ZSCORE', KEYS[2], id))
    table.insert(out, tostring(now + lease))
  end
end
return out
"""

# Quotas: a sorted set per key. Charges are members "<token>:<cost>" scored by when they
# were made; leases are members "<token>" scored by when they expire. Server time only.
_CHARGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local cost, limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  used = used + (tonumber(string.match(member, ':(%d+)$')) or 0)
end
if used + cost > limit then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[4] .. ':' .. ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
return 1
"""

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < math.ceil(lease * 1000) then redis.call('PEXPIRE', KEYS[1], math.ceil(lease * 1000)) end
return 1
"""


def _num(value: Any) -> float:
    return float(value.decode() if isinstance(value, bytes) else value)


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore(ResilienceStore):
    url_scheme = "redis"

    def __init__(self, url: str, *, prefix: str = PREFIX) -> None:
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=10,
        )
        self._prefix = prefix
        self._items, self._order, self._claims = (
            f"{prefix}outbox:items",
            f"{prefix}outbox:order",
            f"{prefix}outbox:claims",
        )
        self._put = self._redis.register_script(_PUT)
        self._claim = self._redis.register_script(_CLAIM)
        self._charge = self._redis.register_script(_CHARGE)
        self._acquire = self._redis.register_script(_ACQUIRE)

    async def _guard(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisError, OSError, TimeoutError, ValueError) as exc:
            raise StoreError(f"redis: {type(exc).__name__}") from exc

    # -- breakers --------------------------------------------------------------------
    async def _mutate(self, name: str, fn: Mutation[R]) -> tuple[R, Record, float]:
        return await self._guard(self._mutate_tx(f"{self._prefix}breaker:{name}", fn))  # type: ignore[no-any-return]

    async def _mutate_tx(self, key: str, fn: Mutation[R]) -> tuple[R, Record, float]:
        async with self._redis.pipeline(transaction=True) as pipe:
            for _ in range(20):
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    sec, usec = await pipe.time()
                    now = sec + usec / 1e6
                    rec: Record = json.loads(raw) if raw else new_record()
                    result, changed = fn(rec, now)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if changed:
                        pipe.set(key, json.dumps(rec))
                    await pipe.execute()
                    return result, rec, now
                except WatchError:
                    continue
        raise StoreError("redis: too much contention on one breaker")

    async def _read(self, name: str) -> tuple[Record, float]:
        async def read() -> tuple[Record, float]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(f"{self._prefix}breaker:{name}")
                pipe.time()
                raw, (sec, usec) = await pipe.execute()
            return (json.loads(raw) if raw else new_record()), sec + usec / 1e6

        return await self._guard(read())  # type: ignore[no-any-return]

    # -- outbox ----------------------------------------------------------------------
    async def outbox_put(self, item_id: str, payload: str) -> None:
        await self._guard(self._put(keys=[self._items, self._order], args=[item_id, payload]))

    async def outbox_claim(self, limit: int, lease: float) -> list[OutboxItem]:
        flat = await self._guard(
            self._claim(keys=[self._items, self._order, self._claims], args=[limit, lease])
        )
        return [
            OutboxItem(_str(flat[i]), _str(flat[i + 1]), _num(flat[i + 2]), _num(flat[i + 3]))
            for i in range(0, len(flat), 4)
        ]

    async def outbox_done(self, item_id: str) -> None:
        async def done() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(self._items, item_id)
                pipe.zrem(self._order, item_id)
                pipe.hdel(self._claims, item_id)
                await pipe.execute()

        await self._guard(done())

    async def outbox_mark(self, item_id: str, payload: str) -> None:
        async def mark() -> None:
            # Only while the write is still there (a delivered one is not brought back).
            if await self._redis.hexists(self._items, item_id):
                await self._redis.hset(self._items, item_id, payload)

        await self._guard(mark())

    async def outbox_release(self, item_id: str, payload: str | None = None) -> None:
        async def release() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._claims, item_id, "0")
                if payload is not None:
                    pipe.hset(self._items, item_id, payload)
                await pipe.execute()

        await self._guard(release())

    async def outbox_list(self) -> list[OutboxItem]:
        async def listing() -> list[OutboxItem]:
            order: Any = await self._redis.zrange(self._order, 0, -1, withscores=True)
            items: list[OutboxItem] = []
            for raw_id, created in order:
                item_id = _str(raw_id)
                payload = await self._redis.hget(self._items, item_id)
                claimed = await self._redis.hget(self._claims, item_id)
                if payload is not None:
                    items.append(
                        OutboxItem(item_id, _str(payload), float(created), _num(claimed or 0))
                    )
            return items

        return await self._guard(listing())  # type: ignore[no-any-return]

    # -- vendor quotas and the usage cache: Lua on the server's clock; cache TTLs are
    # Redis expiries (also the server's clock) --------------------------------------
    async def quota_charge(self, key: str, cost: int, limit: int, window_s: float) -> bool:
        ok = await self._guard(
            self._charge(
                keys=[f"{self._prefix}quota:{key}"],
                args=[cost, limit, window_s, uuid.uuid4().hex],
            )
        )
        return bool(int(ok))

    async def quota_acquire(self, key: str, limit: int, lease_s: float) -> str | None:
        lease = uuid.uuid4().hex
        ok = await self._guard(
            self._acquire(keys=[f"{self._prefix}quota:{key}"], args=[limit, lease_s, lease])
        )
        return lease if int(ok) else None

    async def quota_release(self, key: str, lease: str) -> None:
        await self._guard(self._redis.zrem(f"{self._prefix}quota:{key}", lease))

    async def cache_get(self, key: str) -> dict[str, Any] | None:
        return parse_cached(await self._guard(self._redis.get(f"{self._prefix}cache:{key}")))

    async def cache_put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        ttl_ms = int(ttl_s * 1000)
        if ttl_ms <= 0:
            return
        await self._guard(
            self._redis.set(f"{self._prefix}cache:{key}", json.dumps(value), px=ttl_ms)
        )

    async def aclose(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()
