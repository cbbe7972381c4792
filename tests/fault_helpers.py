"""Helpers shared by the client fault-matrix tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from src.errors import ServiceUnavailable


async def flapping_outcomes(call: Callable[[], Awaitable[Any]], times: int = 4) -> list[str]:
    """Call ``times`` times; "ok" per success, "fail" per retryable ServiceUnavailable."""
    outcomes: list[str] = []
    for _ in range(times):
        try:
            await call()
            outcomes.append("ok")
        except ServiceUnavailable as exc:
            assert exc.retryable
            outcomes.append("fail")
    return outcomes
