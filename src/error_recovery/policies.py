"""Policies as plain functions: what counts against a breaker, what is worth a retry, how
long to back off, and which phrase category the caller hears for an exception."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from ..attempt import VendorContact
from ..errors import (
    CircuitOpenError,
    ConnectionFailed,
    NotFound,
    RateLimited,
    ServiceError,
    ServiceTimeout,
    ServiceUnavailable,
)

__all__ = [
    "backoff_delay",
    "counts_as_failure",
    "error_type_for",
    "is_client_side_refusal",
    "is_retryable",
    "probe_verdict",
]


def counts_as_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is evidence that the service is unhealthy (breaker default).

    Taxonomy errors decide for themselves (``NotFound`` and ``InvalidRequest`` do not
    count); cancellation and a refusal by another breaker never count; any other
    ``Exception`` (timeouts, connection errors, unexpected bugs) counts.
    """
    if isinstance(exc, asyncio.CancelledError | CircuitOpenError):
        return False
    if isinstance(exc, ServiceError):
        return exc.counts_for_breaker
    return isinstance(exc, Exception)


def is_client_side_refusal(exc: BaseException) -> bool:
    """Whether our own code refused the call before anything reached the vendor (issue
    #23): an open circuit, a spent quota or no free slot, input invalid before sending.
    Such an outcome says nothing about the vendor's health: a half-open probe ended by
    it is no verdict. A taxonomy error without an HTTP status that does not count for
    the breaker was raised on our side, except ``NotFound`` (an empty answer)."""
    if isinstance(exc, CircuitOpenError):
        return True
    if isinstance(exc, ServiceError) and not isinstance(exc, NotFound):
        return exc.status is None and not exc.counts_for_breaker
    return False


def is_retryable(exc: BaseException) -> bool:
    """Whether repeating the call may succeed (retry default).

    Taxonomy errors and livekit ``APIError`` carry a ``retryable`` flag; plain timeouts
    and connection errors are retryable; everything else (bugs, auth, bad input,
    cancellation, an open circuit) is not.
    """
    if isinstance(exc, asyncio.CancelledError | CircuitOpenError):
        return False
    flag = getattr(exc, "retryable", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(exc, TimeoutError | ConnectionError)


def backoff_delay(
    retry_index: int,
    base_delay: float,
    max_delay: float,
    *,
    jitter: bool = True,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``retry_index`` (0 for the first retry).

    ``min(max_delay, base_delay * 2**retry_index)``; with ``jitter`` a uniform draw from
    ``[0, that]`` ("full jitter"), which spreads retries of many agents apart.
    """
    cap = min(max_delay, base_delay * 2.0**retry_index)
    if not jitter:
        return cap
    draw: float = (rng or random).uniform(0.0, cap)
    return draw


def error_type_for(exc: BaseException) -> str:
    """The phrase category for an exception: the caller hears a sentence of this type."""
    if isinstance(exc, ServiceTimeout | TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionFailed | ConnectionError):
        return "connection_issue"
    if isinstance(exc, CircuitOpenError | ServiceUnavailable | RateLimited):
        return "service_unavailable"
    if isinstance(exc, NotFound):
        return "data_not_found"
    return "tool_failure"


def probe_verdict(
    exc: BaseException | None,
    heard: VendorContact | None,
    is_failure: Callable[[BaseException], bool] = counts_as_failure,
) -> bool | None:
    """A half-open probe's outcome (issue #23): ``True`` only on an answer from the
    vendor, ``False`` on a counted failure, ``None`` (no verdict) when nothing was heard
    from it: a cache hit, a refusal by our own code, a cancellation. ``exc`` is ``None``
    for a success; ``heard`` is what the call heard (:func:`~src.attempt.listening`)."""
    answered = heard is not None and heard.answered > 0
    if exc is None:
        served_here = heard is not None and heard.local > 0
        return None if served_here and not answered else True
    if not isinstance(exc, Exception):
        return None
    if is_failure(exc):
        return False
    if answered:
        return True
    return None if is_client_side_refusal(exc) else True
