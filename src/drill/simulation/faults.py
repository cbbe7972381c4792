"""Store faults at the edge: a proxy in front of a real store (a SQLite file or a real
``redis-server``) that every conversation's :class:`~src.store.StoreGuard` talks to.

* down: every operation fails as a lost connection does (``OSError``);
* slower than the guard: the next operation of a kind commits in the real store, then
  the guard's wait ends first (a ``TimeoutError``, which is what ``asyncio.timeout``
  raises in the guard when the store answers late);
* restarted empty: every key/row is deleted in the real store;
* a malformed record: a breaker record or an outbox payload that is not what our code
  wrote, put straight into the real store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from src.store import ResilienceStore

__all__ = ["FaultyStore", "StoreFaults", "corrupt", "wipe"]


@dataclass
class StoreFaults:
    """Faults shared by every process's proxy (one store for the fleet)."""

    down: bool = False
    slow: dict[str, int] = field(default_factory=dict)  # op name ("*": any) -> next n
    escaped: list[str] = field(default_factory=list)  # ops that hit a fault (for reports)

    def take_slow(self, op: str) -> bool:
        for key in (op, "*"):
            if self.slow.get(key, 0) > 0:
                self.slow[key] -= 1
                return True
        return False


class FaultyStore:
    """Forwards every store method to ``inner``, applying :class:`StoreFaults`."""

    def __init__(
        self,
        inner: ResilienceStore,
        faults: StoreFaults,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.inner = inner
        self.faults = faults
        self.clock = clock
        # breaker name -> when this process's last breaker operation on it returned: the
        # store has heard what the process had to tell it by then (the simulation's
        # oracle, issue #24)
        self.heard_at: dict[str, float] = {}

    @property
    def url_scheme(self) -> str:
        return self.inner.url_scheme

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name.startswith("_") or name == "aclose" or not callable(attr):
            return attr
        faults = self.faults

        async def call(*args: Any, **kwargs: Any) -> Any:
            if faults.down:
                faults.escaped.append(f"down:{name}")
                raise OSError(111, "Connection refused")
            result = await attr(*args, **kwargs)
            if faults.take_slow(name):
                faults.escaped.append(f"slow:{name}")
                raise TimeoutError  # committed, but the guard stopped waiting
            if self.clock is not None and name.startswith("breaker_") and args:
                self.heard_at[str(args[0])] = self.clock()
            return result

        return call


async def wipe(store: ResilienceStore) -> None:
    """The store restarted empty."""
    path = getattr(store, "path", None)
    if path is not None:
        _sqlite(path, lambda c: [c.execute(f"DELETE FROM {t}") for t in _tables(c)])
        return
    redis = getattr(store, "_redis", None)
    if redis is not None:
        await redis.flushdb()


async def corrupt(store: ResilienceStore, target: str, item_id: str) -> None:
    """Put a record our code did not write: ``breaker`` (a record without its fields,
    SQLite only) or ``outbox`` (a payload that is not a write)."""
    path = getattr(store, "path", None)
    if target == "breaker" and path is not None:
        _sqlite(
            path,
            lambda c: c.execute(
                "INSERT INTO breakers(name, record) VALUES('amplitude', '{\"state\": 1}') "
                "ON CONFLICT(name) DO UPDATE SET record=excluded.record"
            ),
        )
        return
    await store.outbox_put(item_id, '{"source": 7, "body": null}')


def _tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    return [r[0] for r in rows]


def _sqlite(path: Any, fn: Callable[[sqlite3.Connection], Any]) -> None:
    conn = sqlite3.connect(path, timeout=5, isolation_level=None)
    try:
        fn(conn)
    finally:
        conn.close()
