"""The peer stacks: the same tool built from peer libraries instead of ours.

Each stack does the work our production tool path does for ``get_trial_usage``: LiveKit's
filler (``RunContext.with_filler``, same delay), a deep-copy snapshot of the session state
restored on failure, retries with jittered exponential backoff (tenacity: 3 attempts, 6 s
overall, retrying what the client marks retryable), a per-attempt timeout
(``asyncio.timeout`` of the service timeout), a circuit breaker around each attempt, the
tool body (email on file, save the usage, one spoken sentence) and, on a fallback, one
WARNING log line and a ``ToolError`` with the spoken sentence. It does not have our
per-agent tool lock, metrics, or the deadline-aware retry cut-off.

Breakers: aiobreaker (``call_async``), purgatory (factory decorator), circuitbreaker
(``@circuit`` on an async def) and pybreaker (``breaker.calling()`` around the await: its
``call_async`` needs tornado, but the context manager works on asyncio).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime as dt
import random
from collections.abc import Awaitable, Callable
from typing import Any

from livekit.agents import RunContext
from livekit.agents.llm import ToolError

from bench.workload import InstantAmplitude
from src.phrases import FILLER, USAGE_FALLBACK
from src.redaction import get_logger
from src.settings import ResilienceSettings
from src.state import TrialistData

Guard = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]
PeerTool = Callable[[RunContext[TrialistData]], Awaitable[str]]

BREAKERS = ("aiobreaker", "purgatory", "circuitbreaker", "pybreaker")
R = ResilienceSettings()
# A peer app logs its fallbacks like ours does; same handler, same redaction filter.
_log = get_logger("pandadoc.peer_stack")


def guard(library: str, recovery_timeout: float) -> tuple[Guard, type[BaseException]]:
    """An ``await guard(func)`` that runs ``func()`` through ``library``'s breaker
    (threshold ``R.failure_threshold``), and the exception it raises while open."""
    threshold = R.failure_threshold
    if library == "aiobreaker":
        import aiobreaker

        ab = aiobreaker.CircuitBreaker(
            fail_max=threshold, timeout_duration=dt.timedelta(seconds=recovery_timeout)
        )
        return (lambda func: ab.call_async(func)), aiobreaker.CircuitBreakerError
    if library == "purgatory":
        from purgatory import AsyncCircuitBreakerFactory
        from purgatory.domain.model import OpenedState

        factory = AsyncCircuitBreakerFactory(
            default_threshold=threshold, default_ttl=recovery_timeout
        )

        @factory("amplitude")
        async def purg(func: Callable[[], Awaitable[Any]]) -> Any:
            return await func()

        return purg, OpenedState
    if library == "circuitbreaker":
        from circuitbreaker import CircuitBreaker, CircuitBreakerError

        # A unique name: circuitbreaker keeps every breaker in a global monitor by name.
        @CircuitBreaker(
            failure_threshold=threshold,
            recovery_timeout=recovery_timeout,
            name=f"amplitude-{random.random()}",
        )
        async def cb(func: Callable[[], Awaitable[Any]]) -> Any:
            return await func()

        return cb, CircuitBreakerError
    if library == "pybreaker":
        import pybreaker

        pb = pybreaker.CircuitBreaker(fail_max=threshold, reset_timeout=recovery_timeout)

        async def py(func: Callable[[], Awaitable[Any]]) -> Any:
            with pb.calling():
                return await func()

        return py, pybreaker.CircuitBreakerError
    raise ValueError(f"unknown breaker library {library!r}")


def _retryable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retryable", False)) or isinstance(exc, TimeoutError | ConnectionError)


def _restore(live: TrialistData, snapshot: TrialistData) -> None:
    for f in dataclasses.fields(live):
        setattr(live, f.name, getattr(snapshot, f.name))


async def _no_sleep(_: float) -> None:
    return None


def peer_tool(
    library: str,
    client: InstantAmplitude,
    *,
    recovery_timeout: float = R.recovery_timeout,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> PeerTool:
    """``get_trial_usage`` built from tenacity + ``library``'s breaker (see module doc)."""
    from tenacity import (
        AsyncRetrying,
        retry_if_exception,
        stop_after_attempt,
        stop_after_delay,
        wait_random_exponential,
    )

    guarded, _ = guard(library, recovery_timeout)

    async def tool(context: RunContext[TrialistData]) -> str:
        async with context.with_filler(FILLER, delay=R.filler_delay):
            data = context.userdata
            snapshot = copy.deepcopy(data)
            try:
                address = data.email or ""
                result = None
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(R.max_retries + 1) | stop_after_delay(R.tool_deadline),
                    wait=wait_random_exponential(multiplier=R.base_delay, max=R.max_delay),
                    retry=retry_if_exception(_retryable),
                    reraise=True,
                    sleep=sleep,
                ):
                    with attempt:
                        async with asyncio.timeout(R.service_timeout):
                            result = await guarded(lambda: client.get_trial_usage(address))
                assert result is not None
                data.email = address
                data.usage = result
                return result.spoken_summary()
            except Exception as exc:
                _restore(data, snapshot)
                _log.warning("Tool get_trial_usage fell back after %s", type(exc).__name__)
                raise ToolError(USAGE_FALLBACK) from None

    return tool


def no_sleep() -> Callable[[float], Awaitable[Any]]:
    """Backoff that returns at once (open-circuit warm-up: no real waiting)."""
    return _no_sleep
