"""The bulkhead (issue #15): a cap on how many calls to one vendor a worker process has
in flight at once. A caller over the cap waits up to ``max_wait`` seconds for a slot,
then gets :class:`BulkheadFull` (the caller hears the fallback): a struggling vendor is
not buried under a pile of requests, and no caller queues in silence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..errors import ServiceError

__all__ = ["Bulkhead", "BulkheadFull", "process_bulkhead", "reset_process_bulkheads"]


class BulkheadFull(ServiceError):
    """Every slot of the vendor's bulkhead stayed taken for ``max_wait`` seconds. Not a
    sign the vendor is down (it does not count for the breaker) and not retried."""

    retryable = False
    counts_for_breaker = False


class Bulkhead:
    """At most ``max_concurrent`` holders of :meth:`slot` at once; ``peak`` is the most
    there ever were (drill and tests read it)."""

    def __init__(self, name: str, max_concurrent: int = 10, max_wait: float = 0.5) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        if max_wait < 0:
            raise ValueError("max_wait must be >= 0 seconds")
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_wait = max_wait
        self._sem = asyncio.Semaphore(max_concurrent)
        self.in_flight = 0
        self.peak = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body; raises :class:`BulkheadFull` when none frees up
        within ``max_wait`` seconds."""
        if self._sem.locked() and self.max_wait == 0:
            raise BulkheadFull(self.name, f"{self.max_concurrent} calls in flight")
        try:
            async with asyncio.timeout(self.max_wait):
                await self._sem.acquire()
        except TimeoutError:
            raise BulkheadFull(self.name, f"{self.max_concurrent} calls in flight") from None
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            self._sem.release()


_PROCESS_BULKHEADS: dict[str, Bulkhead] = {}


def process_bulkhead(name: str, max_concurrent: int, max_wait: float) -> Bulkhead:
    """The bulkhead every conversation of this process shares for service ``name``."""
    bulkhead = _PROCESS_BULKHEADS.get(name)
    if bulkhead is None or (bulkhead.max_concurrent, bulkhead.max_wait) != (
        max_concurrent,
        max_wait,
    ):
        bulkhead = _PROCESS_BULKHEADS[name] = Bulkhead(name, max_concurrent, max_wait)
    return bulkhead


def reset_process_bulkheads() -> None:
    _PROCESS_BULKHEADS.clear()
