"""Helpers shared by the client fault-matrix tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from src.errors import ConnectionFailed, ServiceUnavailable
from src.sandbox.base import SandboxServer


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


async def down_then_up(server: SandboxServer, call: Callable[[], Awaitable[Any]]) -> Any:
    """Succeed once (leaving a kept-alive connection in the pool), take the server down:
    the call fails with a retryable ConnectionFailed; bring it back: returns the answer."""
    await call()
    await server.go_down()
    with pytest.raises(ConnectionFailed) as info:
        await call()
    assert info.value.retryable
    await server.come_up()
    return await call()
