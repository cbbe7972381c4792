"""The store failing must not break a conversation: :class:`StoreGuard` bounds every store
operation in time, turns any failure (any ``Exception``) into :class:`StoreError` for the
caller to fall back on local state, warns at most once a minute, counts errors in a
metric, and after a failure leaves the store alone for a short cool-down before trying
again (which is also how it reconnects: the next operation after the cool-down opens a
new connection)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .. import metrics
from ..redaction import get_logger
from .base import ResilienceStore, StoreError

__all__ = ["StoreGuard"]

logger = get_logger("pandadoc.store")

T = TypeVar("T")
OP_TIMEOUT_S = 0.3  # one store operation; the caller is on a live call
COOL_DOWN_S = 2.0  # after a failure, local state only for this long
WARN_EVERY_S = 60.0


class StoreGuard:
    def __init__(
        self,
        store: ResilienceStore,
        *,
        timeout: float = OP_TIMEOUT_S,
        cool_down: float = COOL_DOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._timeout = timeout
        self._cool_down = cool_down
        self._clock = clock
        self._down_until = 0.0
        self._last_warning: float | None = None
        self.healthy = True

    @property
    def kind(self) -> str:
        return self.store.url_scheme or "store"

    @property
    def cooling_down(self) -> bool:
        """After a failure, the guard refuses operations at once for a short while."""
        return not self.healthy and self._clock() < self._down_until

    async def run(
        self, op: Callable[[], Awaitable[T]], what: str = "operation", *, urgent: bool = False
    ) -> T:
        """Run one store operation, or raise :class:`StoreError` (at once while cooling
        down, unless ``urgent``: an operation no caller waits for that the fleet needs
        now, still bounded by the timeout)."""
        if self.cooling_down and not urgent:
            raise StoreError("store cooling down after a failure")
        try:
            async with asyncio.timeout(self._timeout):
                result = await op()
        except Exception as exc:  # issue #23: whatever the store raised (a RuntimeError
            # after close, a KeyError/TypeError from a malformed record), fall back locally
            self._failed(what, exc)
            raise StoreError(type(exc).__name__) from exc
        if not self.healthy:
            self.healthy = True
            logger.info("Resilience store reachable again; sharing resumed")
        return result

    def _failed(self, what: str, exc: BaseException) -> None:
        now = self._clock()
        self.healthy = False
        self._down_until = now + self._cool_down
        metrics.store_error(self.kind)
        if self._last_warning is None or now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            logger.warning(
                "Resilience store unavailable during %s (%s); using local state",
                what,
                type(exc).__name__,
                extra={"store": self.kind},
            )
