"""``sqlite:///path``: the one-host default. Every job process of a worker opens the same
file (WAL mode, so readers never wait for the writer); each read-modify-write is one
``BEGIN IMMEDIATE`` transaction. All SQLite work runs on one worker thread per store, so
the event loop never waits on the disk or a lock; the busy timeout is short, and a store
that stays locked surfaces as :class:`StoreError` (the breakers then use local state)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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

__all__ = ["SqliteStore"]

T = TypeVar("T")
BUSY_TIMEOUT_S = 0.2

SCHEMA = """
CREATE TABLE IF NOT EXISTS breakers (name TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY, payload TEXT NOT NULL, created REAL NOT NULL,
    claimed_until REAL NOT NULL DEFAULT 0, next_at REAL NOT NULL DEFAULT 0,
    dead TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS quota_charges (
    key TEXT NOT NULL, at REAL NOT NULL, cost INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS quota_charges_by_key ON quota_charges(key, at);
CREATE TABLE IF NOT EXISTS quota_leases (
    key TEXT NOT NULL, lease TEXT NOT NULL, expires REAL NOT NULL, PRIMARY KEY (key, lease)
);
CREATE TABLE IF NOT EXISTS usage_cache (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL NOT NULL
);
"""


# issue #23: columns a file made by an older version lacks
OUTBOX_COLUMNS = {"next_at": "REAL NOT NULL DEFAULT 0", "dead": "TEXT NOT NULL DEFAULT ''"}
OUTBOX_FIELDS = "id, payload, created, claimed_until, next_at, dead"


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    have = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
    for name, kind in OUTBOX_COLUMNS.items():
        if name not in have:
            conn.execute(f"ALTER TABLE outbox ADD COLUMN {name} {kind}")


def _item(row: Any) -> OutboxItem:
    return OutboxItem(row[0], row[1], row[2], row[3], row[4], row[5])


class SqliteStore(ResilienceStore):
    url_scheme = "sqlite"

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resilience-store")

    # -- the worker thread -----------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(SCHEMA)
                _add_missing_columns(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def work() -> T:
            try:
                return fn(self._connect())
            except (sqlite3.Error, OSError, ValueError) as exc:
                if self._conn is not None:  # reconnect next time (file replaced, corrupt)
                    self._conn.close()
                    self._conn = None
                raise StoreError(f"sqlite: {type(exc).__name__}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    def _tx(self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    # -- breakers --------------------------------------------------------------------
    async def _mutate(self, name: str, fn: Mutation[R]) -> tuple[R, Record, float]:
        def body(conn: sqlite3.Connection) -> tuple[R, Record, float]:
            row = conn.execute("SELECT record FROM breakers WHERE name=?", (name,)).fetchone()
            rec = json.loads(row[0]) if row else new_record()
            now = self._clock()
            result, changed = fn(rec, now)
            if changed:
                conn.execute(
                    "INSERT INTO breakers(name, record) VALUES(?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET record=excluded.record",
                    (name, json.dumps(rec)),
                )
            return result, rec, now

        return await self._run(lambda conn: self._tx(conn, body))

    async def _read(self, name: str) -> tuple[Record, float]:
        def body(conn: sqlite3.Connection) -> tuple[Record, float]:
            row = conn.execute("SELECT record FROM breakers WHERE name=?", (name,)).fetchone()
            return (json.loads(row[0]) if row else new_record()), self._clock()

        return await self._run(body)

    # -- outbox ----------------------------------------------------------------------
    async def outbox_put(self, item_id: str, payload: str) -> None:
        await self._run(
            lambda conn: conn.execute(
                "INSERT OR IGNORE INTO outbox(id, payload, created) VALUES(?, ?, ?)",
                (item_id, payload, self._clock()),
            )
        )

    async def outbox_put_claimed(self, item_id: str, payload: str, lease: float) -> str | None:
        def body(conn: sqlite3.Connection) -> str | None:
            now = self._clock()
            row = conn.execute(
                "SELECT payload, claimed_until, dead FROM outbox WHERE id=?", (item_id,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO outbox(id, payload, created, claimed_until) VALUES(?, ?, ?, ?)",
                    (item_id, payload, now, now + lease),
                )
                return payload
            if row[1] > now or row[2]:
                return None
            conn.execute("UPDATE outbox SET claimed_until=? WHERE id=?", (now + lease, item_id))
            return str(row[0])

        return await self._run(lambda conn: self._tx(conn, body))

    async def outbox_claim(
        self, limit: int, lease: float, skip: Collection[str] = ()
    ) -> list[OutboxItem]:
        skipped = set(skip)

        def body(conn: sqlite3.Connection) -> list[OutboxItem]:
            now = self._clock()
            rows = conn.execute(
                f"SELECT {OUTBOX_FIELDS} FROM outbox WHERE claimed_until <= ? AND next_at <= ?"
                " AND dead = '' ORDER BY created LIMIT ?",
                (now, now, limit + len(skipped)),
            ).fetchall()
            rows = [r for r in rows if r[0] not in skipped][:limit]
            conn.executemany(
                "UPDATE outbox SET claimed_until=? WHERE id=?", [(now + lease, r[0]) for r in rows]
            )
            return [OutboxItem(r[0], r[1], r[2], now + lease, r[4], r[5]) for r in rows]

        return await self._run(lambda conn: self._tx(conn, body))

    async def outbox_done(self, item_id: str) -> None:
        await self._run(lambda conn: conn.execute("DELETE FROM outbox WHERE id=?", (item_id,)))

    async def outbox_mark(self, item_id: str, payload: str) -> None:
        await self._run(
            lambda conn: conn.execute("UPDATE outbox SET payload=? WHERE id=?", (payload, item_id))
        )

    async def outbox_release(
        self, item_id: str, payload: str | None = None, delay: float = 0.0
    ) -> None:
        next_at = self._clock() + delay if delay > 0 else 0.0
        await self._run(
            lambda conn: conn.execute(
                "UPDATE outbox SET claimed_until=0, next_at=?, payload=COALESCE(?, payload)"
                " WHERE id=?",
                (next_at, payload, item_id),
            )
        )

    async def outbox_bury(self, item_id: str, payload: str, reason: str) -> None:
        await self._run(
            lambda conn: conn.execute(
                "UPDATE outbox SET claimed_until=0, payload=?, dead=? WHERE id=?",
                (payload, reason or "dead", item_id),
            )
        )

    async def outbox_revive(self, item_id: str, payload: str | None = None) -> bool:
        changed = await self._run(
            lambda conn: conn.execute(
                "UPDATE outbox SET claimed_until=0, next_at=0, dead='',"
                " payload=COALESCE(?, payload) WHERE id=?",
                (payload, item_id),
            ).rowcount
        )
        return bool(changed)

    async def outbox_list(self) -> list[OutboxItem]:
        rows = await self._run(
            lambda conn: conn.execute(
                f"SELECT {OUTBOX_FIELDS} FROM outbox ORDER BY created"
            ).fetchall()
        )
        return [_item(r) for r in rows]

    # -- vendor quotas and the usage cache: each check-and-write is one transaction ----
    async def quota_charge(self, key: str, cost: int, limit: int, window_s: float) -> bool:
        def body(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            conn.execute("DELETE FROM quota_charges WHERE key=? AND at<=?", (key, now - window_s))
            (used,) = conn.execute(
                "SELECT COALESCE(SUM(cost), 0) FROM quota_charges WHERE key=?", (key,)
            ).fetchone()
            if int(used) + cost > limit:
                return False
            conn.execute(
                "INSERT INTO quota_charges(key, at, cost) VALUES(?, ?, ?)", (key, now, cost)
            )
            return True

        return await self._run(lambda conn: self._tx(conn, body))

    async def quota_acquire(self, key: str, limit: int, lease_s: float) -> str | None:
        def body(conn: sqlite3.Connection) -> str | None:
            now = self._clock()
            conn.execute("DELETE FROM quota_leases WHERE key=? AND expires<=?", (key, now))
            (held,) = conn.execute(
                "SELECT COUNT(*) FROM quota_leases WHERE key=?", (key,)
            ).fetchone()
            if int(held) >= limit:
                return None
            lease = uuid.uuid4().hex
            conn.execute(
                "INSERT INTO quota_leases(key, lease, expires) VALUES(?, ?, ?)",
                (key, lease, now + lease_s),
            )
            return lease

        return await self._run(lambda conn: self._tx(conn, body))

    async def quota_release(self, key: str, lease: str) -> None:
        await self._run(
            lambda conn: conn.execute(
                "DELETE FROM quota_leases WHERE key=? AND lease=?", (key, lease)
            )
        )

    async def cache_get(self, key: str) -> dict[str, Any] | None:
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT value FROM usage_cache WHERE key=? AND expires>?", (key, self._clock())
            ).fetchone()
        )
        return parse_cached(row[0]) if row else None

    async def cache_put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        raw = json.dumps(value)

        def body(conn: sqlite3.Connection) -> None:
            now = self._clock()
            conn.execute("DELETE FROM usage_cache WHERE expires<=?", (now,))  # stays small
            conn.execute(
                "INSERT INTO usage_cache(key, value, expires) VALUES(?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value, expires=excluded.expires",
                (key, raw, now + ttl_s),
            )

        await self._run(lambda conn: self._tx(conn, body))

    async def aclose(self) -> None:
        def close(_: sqlite3.Connection | None = None) -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._thread, close)
        self._thread.shutdown(wait=False)
