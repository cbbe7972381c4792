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
from collections.abc import Collection
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

# Outbox keys: 1 items (id -> payload), 2 order (zset by created), 3 claims (id -> until),
# 4 next (id -> next attempt, issue #23), 5 dead (id -> why it was dead-lettered).
_PUT_CLAIMED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local lease = tonumber(ARGV[3])
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if not stored then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], tostring(now + lease))
  return ARGV[2]
end
local until_ = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if until_ > now or redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 then return false end
redis.call('HSET', KEYS[3], ARGV[1], tostring(now + lease))
return stored
"""

_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
local skip = {}
for i = 3, #ARGV do skip[ARGV[i]] = true end
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if #out >= 4 * limit then break end
  if not skip[id] and redis.call('HEXISTS', KEYS[5], id) == 0 then
    local until_ = tonumber(redis.call('HGET', KEYS[3], id) or '0')
    local next_ = tonumber(redis.call('HGET', KEYS[4], id) or '0')
    if until_ <= now and next_ <= now then
      redis.call('HSET', KEYS[3], id, tostring(now + lease))
      table.insert(out, id)
      table.insert(out, redis.call('HGET', KEYS[1], id))
      table.insert(out, redis.call('ZSCORE', KEYS[2], id))
      table.insert(out, tostring(now + lease))
    end
  end
end
return out
"""

_RELEASE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('HSET', KEYS[3], ARGV[1], '0')
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], ARGV[1], ARGV[4]) end
local delay = tonumber(ARGV[2])
if delay > 0 then
  redis.call('HSET', KEYS[4], ARGV[1], tostring(now + delay))
else
  redis.call('HDEL', KEYS[4], ARGV[1])
end
return 1
"""

_BURY = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], '0')
redis.call('HSET', KEYS[5], ARGV[1], ARGV[3])
return 1
"""

_REVIVE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
redis.call('HSET', KEYS[3], ARGV[1], '0')
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
return 1
"""

# The operator's listing in one round trip (issue #23), whatever the backlog.
_LIST = """
local out = {}
local order = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #order, 2 do
  local id = order[i]
  local payload = redis.call('HGET', KEYS[1], id)
  if payload then
    table.insert(out, id)
    table.insert(out, payload)
    table.insert(out, order[i + 1])
    table.insert(out, redis.call('HGET', KEYS[3], id) or '0')
    table.insert(out, redis.call('HGET', KEYS[4], id) or '0')
    table.insert(out, redis.call('HGET', KEYS[5], id) or '')
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
        self._items, self._order, self._claims, self._next, self._dead = (
            f"{prefix}outbox:items",
            f"{prefix}outbox:order",
            f"{prefix}outbox:claims",
            f"{prefix}outbox:next",
            f"{prefix}outbox:dead",
        )
        self._outbox_keys = [self._items, self._order, self._claims, self._next, self._dead]
        self._put = self._redis.register_script(_PUT)
        self._put_claimed = self._redis.register_script(_PUT_CLAIMED)
        self._claim = self._redis.register_script(_CLAIM)
        self._release = self._redis.register_script(_RELEASE)
        self._bury = self._redis.register_script(_BURY)
        self._revive = self._redis.register_script(_REVIVE)
        self._list = self._redis.register_script(_LIST)
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

    async def outbox_put_claimed(self, item_id: str, payload: str, lease: float) -> str | None:
        held = await self._guard(
            self._put_claimed(keys=self._outbox_keys, args=[item_id, payload, lease])
        )
        return None if held is None else _str(held)

    async def outbox_claim(
        self, limit: int, lease: float, skip: Collection[str] = ()
    ) -> list[OutboxItem]:
        flat = await self._guard(self._claim(keys=self._outbox_keys, args=[limit, lease, *skip]))
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
                pipe.hdel(self._next, item_id)
                pipe.hdel(self._dead, item_id)
                await pipe.execute()

        await self._guard(done())

    async def outbox_mark(self, item_id: str, payload: str) -> None:
        async def mark() -> None:
            # Only while the write is still there (a delivered one is not brought back).
            if await self._redis.hexists(self._items, item_id):
                await self._redis.hset(self._items, item_id, payload)

        await self._guard(mark())

    async def outbox_release(
        self, item_id: str, payload: str | None = None, delay: float = 0.0
    ) -> None:
        has = "1" if payload is not None else "0"
        await self._guard(
            self._release(keys=self._outbox_keys, args=[item_id, delay, has, payload or ""])
        )

    async def outbox_bury(self, item_id: str, payload: str, reason: str) -> None:
        await self._guard(
            self._bury(keys=self._outbox_keys, args=[item_id, payload, reason or "dead"])
        )

    async def outbox_revive(self, item_id: str, payload: str | None = None) -> bool:
        has = "1" if payload is not None else "0"
        done = await self._guard(
            self._revive(keys=self._outbox_keys, args=[item_id, has, payload or ""])
        )
        return bool(int(done))

    async def outbox_list(self) -> list[OutboxItem]:
        flat = await self._guard(self._list(keys=self._outbox_keys))
        return [
            OutboxItem(
                _str(flat[i]),
                _str(flat[i + 1]),
                _num(flat[i + 2]),
                _num(flat[i + 3]),
                _num(flat[i + 4]),
                _str(flat[i + 5]),
            )
            for i in range(0, len(flat), 6)
        ]

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
