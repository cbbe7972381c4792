"""Retries with capped exponential backoff (full jitter), ``Retry-After`` and an overall
deadline, plus the voice-tuned default policy."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..attempt import ATTEMPT_TIMER
from ..errors import RateLimited
from ..redaction import get_logger
from .breaker import Clock
from .policies import backoff_delay, is_retryable

__all__ = ["DEFAULT_VOICE_RETRY", "Sleep", "VoiceRetryPolicy", "retry_with_exponential_backoff"]

logger = get_logger("pandadoc.error_recovery")

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[Any]]


async def retry_with_exponential_backoff(
    func: Callable[[], Awaitable[T]],
    max_retries: int = 3,
    base_delay: float = 1.0,
    max_delay: float = 10.0,
    jitter: bool = True,
    *,
    retryable: Callable[[BaseException], bool] = is_retryable,
    deadline: float | None = None,
    attempt_timeout: float | None = None,
    min_attempt: float = 0.0,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
    rng: random.Random | None = None,
    name: str = "",
) -> T:
    """Call ``func()`` up to ``1 + max_retries`` times, sleeping between attempts.

    Args:
        func: a zero-argument callable returning an awaitable (a new one per attempt).
        max_retries: retries after the first attempt. Default 3 (the voice agent uses 2).
        base_delay: seconds before the first retry. Default 1.0 (voice: 0.5).
        max_delay: cap on any one delay, seconds. Default 10.0 (voice: 3.0).
        jitter: draw each delay uniformly from ``[0, capped delay]``. Default True.
        retryable: which errors are retried (:func:`is_retryable`); others raise at once.
        deadline: overall budget in seconds from the call; no attempt starts after it,
            no sleep starts that would end past it, and each attempt is cut to what is
            left. The last error is raised. Default None (no budget).
        attempt_timeout: seconds for one attempt (``TimeoutError`` when exceeded).
        min_attempt: with a ``deadline``, no retry starts with less than this many
            seconds left (an attempt cut short is a wasted request). Default 0.0.
        sleep, clock, rng: injectable for tests.
        name: label for log records (service name).

    A :class:`~src.errors.RateLimited` error's ``retry_after`` is honoured (the delay is
    at least that long) when it is no larger than ``max_delay``; a longer requested wait
    is not retried, since the caller would sit in silence.
    """
    if max_retries < 0:
        raise ValueError("max_retries must be >= 0")
    if base_delay < 0 or max_delay < 0 or min_attempt < 0:
        raise ValueError("delays must be >= 0 seconds")
    start = clock()
    attempt = 0
    while True:
        limit = attempt_timeout
        if deadline is not None:
            remaining = deadline - (clock() - start)
            limit = remaining if limit is None else min(limit, remaining)
        try:
            if limit is None:
                return await func()
            async with asyncio.timeout(limit) as timer:
                # The HTTP layer borrows it (src.attempt).
                token = ATTEMPT_TIMER.set((timer, asyncio.current_task()))
                try:
                    return await func()
                finally:
                    ATTEMPT_TIMER.reset(token)
        except BaseException as exc:
            if attempt >= max_retries or not retryable(exc):
                raise
            delay = backoff_delay(attempt, base_delay, max_delay, jitter=jitter, rng=rng)
            if isinstance(exc, RateLimited) and exc.retry_after is not None:
                if exc.retry_after > max_delay:
                    raise
                delay = max(delay, exc.retry_after)
            if deadline is not None and (clock() - start) + delay + min_attempt >= deadline:
                raise
            attempt += 1
            logger.warning(
                "Retrying %s after %s (attempt %d of %d) in %.2fs",
                name or "call",
                type(exc).__name__,
                attempt + 1,
                max_retries + 1,
                delay,
                extra={"service": name, "attempt": attempt + 1, "delay_s": delay},
            )
            await sleep(delay)


@dataclasses.dataclass(frozen=True)
class VoiceRetryPolicy:
    """Retry settings tuned for a live conversation (spec: "Voice AI Optimization").

    Attributes:
        max_retries: retries after the first attempt. Default 2.
        base_delay: seconds before the first retry. Default 0.5.
        max_delay: cap on any one delay, seconds. Default 3.0.
        jitter: full jitter on. Default True.
    """

    max_retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 3.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if not 0 <= self.base_delay <= self.max_delay:
            raise ValueError("need 0 <= base_delay <= max_delay")


DEFAULT_VOICE_RETRY = VoiceRetryPolicy()
