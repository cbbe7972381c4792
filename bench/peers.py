"""Adapters for the peer libraries at layer level (breaker and retry alone, no tool):
aiobreaker, purgatory, circuitbreaker, tenacity, pybreaker. The full peer tool stacks are
in :mod:`bench.peer_stacks`.

Each adapter returns a factory (a zero-argument coroutine function), the same shape as our
own cases, so the layer measurements time every library through one loop. Peers are
imported inside the adapters because they live in the optional ``bench`` dependency group.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from bench.common import Factory, work


def peer_versions() -> dict[str, str]:
    """Installed version of each peer, or ``"not installed"``, for the results file."""
    from importlib import metadata

    out: dict[str, str] = {}
    for name in ("aiobreaker", "purgatory", "circuitbreaker", "tenacity", "pybreaker"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def aiobreaker_call(fail_max: int = 3, func: Factory = work) -> tuple[Factory, Any]:
    import aiobreaker

    breaker = aiobreaker.CircuitBreaker(fail_max=fail_max, timeout_duration=dt.timedelta(hours=1))

    async def call() -> Any:
        return await breaker.call_async(func)

    return call, breaker


def purgatory_call(threshold: int = 3, func: Factory = work) -> Factory:
    from purgatory import AsyncCircuitBreakerFactory

    factory = AsyncCircuitBreakerFactory(default_threshold=threshold, default_ttl=3600)

    @factory("svc")
    async def call() -> Any:
        return await func()

    return call  # type: ignore[no-any-return]


def circuitbreaker_call(threshold: int = 3, func: Factory = work) -> Factory:
    from circuitbreaker import CircuitBreaker as CB

    # A unique name per instance: circuitbreaker registers every breaker in a global
    # monitor keyed by name, where equal names would replace one another.
    @CB(failure_threshold=threshold, recovery_timeout=3600, name=f"svc-{random.random()}")
    async def call() -> Any:
        return await func()

    return call  # type: ignore[no-any-return]


def tenacity_call(func: Factory = work) -> Factory:
    from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
    from tenacity import wait_random_exponential as wre

    async def call() -> Any:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(3),
            wait=wre(multiplier=0.5, max=3.0),
            retry=retry_if_exception_type((TimeoutError, ConnectionError)),
            reraise=True,
        ):
            with attempt:
                return await func()
        return None  # pragma: no cover - AsyncRetrying either returns or raises

    return call


def tenacity_aiobreaker_call() -> Factory:
    """Retry + breaker from peers: the nearest equivalent of our combined call."""
    inner, _ = aiobreaker_call()
    return tenacity_call(inner)


def pybreaker_call(fail_max: int = 3, func: Factory = work) -> Factory:
    """pybreaker's ``calling()`` context manager around the await: its ``call_async``
    needs tornado, but the context manager records the awaited outcome on asyncio."""
    import pybreaker

    breaker = pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=3600)

    async def call() -> Any:
        with breaker.calling():
            return await func()

    return call
