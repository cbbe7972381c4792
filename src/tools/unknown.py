"""Writes without a lookup whose outcome is unknown (:data:`src.registry.WRITE_WITHOUT_LOOKUP`):
remembered, so the same person's next request, in this conversation or a later one, is
not sent again. In the resilience store when there is one (shared by the fleet), else in
this process; a store failure falls back to this process's memory."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable

from src.redaction import get_logger
from src.store import StoreError, StoreGuard

__all__ = ["UNKNOWN_WRITE_TTL_S", "UnknownWrites", "write_key"]

logger = get_logger("pandadoc.agent")

UNKNOWN_WRITE_TTL_S = 7 * 24 * 3600.0
"""Seconds an unknown outcome is remembered (a week: longer than a trial's follow-up)."""


def write_key(operation: str, person: str) -> str:
    """A store key for ``operation`` by ``person``: a hash, never the address itself."""
    raw = f"{operation}\0{person.strip().casefold()}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


class UnknownWrites:
    """Which writes of unknown outcome are remembered (``store``: the fleet's)."""

    def __init__(
        self,
        store: StoreGuard | None = None,
        *,
        ttl_s: float = UNKNOWN_WRITE_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._clock = clock
        self._local: dict[str, float] = {}  # key -> expiry (wall clock)
        self._background: set[asyncio.Task[None]] = set()

    async def seen(self, key: str) -> bool:
        expiry = self._local.get(key)
        if expiry is not None and expiry > self._clock():
            return True
        guard = self.store
        if guard is None:
            return False
        try:
            return await guard.run(lambda: guard.store.unknown_write_seen(key), "unknown write")
        except StoreError:
            return False

    async def remember(self, key: str) -> None:
        self._local[key] = self._clock() + self.ttl_s
        guard = self.store
        if guard is None:
            return
        try:
            await guard.run(lambda: guard.store.unknown_write_put(key, self.ttl_s), "unknown write")
        except StoreError:
            logger.warning("An unknown write outcome is remembered in this process only")

    def remember_soon(self, key: str) -> None:
        """:meth:`remember` from a task being cancelled (the write was in flight): at once
        in this process, in the store in the background."""
        self._local[key] = self._clock() + self.ttl_s
        if self.store is None:
            return
        task = asyncio.get_running_loop().create_task(self.remember(key))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
