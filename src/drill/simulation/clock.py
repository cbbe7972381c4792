"""Virtual time for the simulation: one clock for the whole fleet (the breakers' and
retries' monotonic clock, the store's wall clock, the vendors' "now"), and a sleep that
moves it instead of waiting, so thousands of steps run in seconds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

__all__ = ["VirtualClock"]

WALL_START = 1_800_000_000.0  # a fixed wall-clock origin: runs replay identically


class VirtualClock:
    """``now`` (monotonic seconds), ``wall`` (epoch seconds), ``utc_now`` (aware
    datetime) all advance together, only when something sleeps, waits out a timeout or
    a rule jumps the clock."""

    def __init__(self, start: float = 1000.0, wall: float = WALL_START) -> None:
        self.t = start
        self._wall0 = wall - start

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return self._wall0 + self.t

    def utc_now(self) -> datetime:
        return datetime.fromtimestamp(self.wall(), UTC)

    def advance(self, seconds: float) -> None:
        self.t += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)
