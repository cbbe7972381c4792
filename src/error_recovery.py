"""Error recovery for a voice agent: circuit breaker, retries with backoff, spoken fallbacks.

Three parts, each usable alone and testable without sleeping:

* :class:`CircuitBreaker` stops calling a service that keeps failing. CLOSED -> OPEN after
  ``failure_threshold`` consecutive counted failures; OPEN fails fast with
  :class:`~src.errors.CircuitOpenError`; after ``recovery_timeout`` seconds exactly one
  caller goes through as the HALF_OPEN probe while everyone else still fails fast; the
  probe's success closes the circuit, its failure re-opens it with a fresh timeout.
* :func:`retry_with_exponential_backoff` repeats retryable failures with capped
  exponential backoff (full jitter), honours ``Retry-After`` and an overall deadline.
* :class:`ErrorRecoveryMixin` gives an agent the spoken side: natural phrases per error
  type, a tool wrapper that snapshots and restores session state, and the combined
  retry + breaker + fallback call.

Policies are plain functions (:func:`counts_as_failure`, :func:`is_retryable`,
:func:`backoff_delay`, :func:`error_type_for`) so tests and callers can use them directly.
Clocks, sleeps and random sources are parameters.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

from livekit.agents.llm import StopResponse, ToolError

from . import metrics
from .errors import (
    CircuitOpenError,
    ConnectionFailed,
    NotFound,
    RateLimited,
    ServiceError,
    ServiceTimeout,
    ServiceUnavailable,
)
from .redaction import get_logger

__all__ = [
    "DEFAULT_VOICE_RETRY",
    "ERROR_RESPONSES",
    "CircuitBreaker",
    "CircuitState",
    "ErrorRecoveryMixin",
    "VoiceRetryPolicy",
    "backoff_delay",
    "counts_as_failure",
    "error_type_for",
    "is_retryable",
    "retry_with_exponential_backoff",
]

logger = get_logger("pandadoc.error_recovery")

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]
TransitionListener = Callable[[str, "CircuitState", "CircuitState"], None]


# --------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Circuit breaker
# --------------------------------------------------------------------------------------


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Async circuit breaker with a single half-open probe.

    Args:
        failure_threshold: consecutive counted failures that open the circuit. Default 3.
        recovery_timeout: seconds the circuit stays open before one probe may pass.
            Default 30.0.
        name: service name, attached to log records and passed to listeners.
        clock: monotonic seconds; inject a fake in tests. Default ``time.monotonic``.
        is_failure: predicate deciding which exceptions count. Default
            :func:`counts_as_failure`.
        listeners: callables ``(name, old_state, new_state)`` run on every transition.

    No lock is held across the awaited call: state changes happen between awaits, which
    asyncio makes atomic, so any number of concurrent tasks may share one breaker.
    """

    def __init__(
        self,
        failure_threshold: int = 3,
        recovery_timeout: float = 30.0,
        *,
        name: str = "",
        clock: Clock = time.monotonic,
        is_failure: Callable[[BaseException], bool] = counts_as_failure,
        listeners: Iterable[TransitionListener] = (),
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if recovery_timeout < 0:
            raise ValueError("recovery_timeout must be >= 0 seconds")
        self.failure_threshold = failure_threshold
        self.recovery_timeout = recovery_timeout
        self.name = name
        self._clock = clock
        self._is_failure = is_failure
        self._listeners: list[TransitionListener] = [metrics.record_transition, *listeners]
        self._state = CircuitState.CLOSED
        self._failure_count = 0
        self._opened_at: float | None = None
        self._probe_token = 0  # token of the probe in flight, 0 when none
        self._tokens_issued = 0

    # -- read-only view ----------------------------------------------------------------
    @property
    def state(self) -> CircuitState:
        """Current state. OPEN stays OPEN until a call arrives after the timeout."""
        return self._state

    @property
    def failure_count(self) -> int:
        """Consecutive counted failures since the last success or state change."""
        return self._failure_count

    @property
    def opened_at(self) -> float | None:
        """Clock reading when the circuit last opened, ``None`` while closed."""
        return self._opened_at

    def retry_in(self) -> float:
        """Seconds until an open circuit lets a probe through (0 when not open)."""
        if self._state is not CircuitState.OPEN or self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.recovery_timeout - self._clock())

    def add_listener(self, listener: TransitionListener) -> None:
        self._listeners.append(listener)

    # -- the protected call -----------------------------------------------------------
    async def call(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Await ``func(*args, **kwargs)`` under the breaker.

        Raises :class:`~src.errors.CircuitOpenError` without calling ``func`` while open
        (or while another caller's half-open probe is in flight); otherwise returns or
        raises whatever ``func`` does, after recording the outcome.
        """
        probe = self.acquire()
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            self.record_failure(exc, probe=probe)
            raise
        self.record_success(probe=probe)
        return result

    def acquire(self) -> int:
        """Ask permission for one call. Returns a probe token (a positive int, truthy)
        when this call is the half-open probe, else ``0``; raises
        :class:`CircuitOpenError` when the call must not go through.

        Every successful ``acquire`` must be followed by exactly one ``record_success``
        or ``record_failure`` passing the returned value as ``probe`` (``call`` does this
        for you). The token lets a probe that outlived a :meth:`reset` be ignored instead
        of deciding for the next probe.
        """
        if self._state is CircuitState.CLOSED:
            return 0
        if self._state is CircuitState.OPEN:
            if self.retry_in() > 0:
                raise CircuitOpenError(self.name, self.retry_in())
            self._transition(CircuitState.HALF_OPEN)
            logger.info(
                "Circuit breaker: Transitioning to half-open state",
                extra={"breaker": self.name},
            )
        if self._probe_token:
            raise CircuitOpenError(self.name, 0.0)
        self._tokens_issued += 1
        self._probe_token = self._tokens_issued
        return self._probe_token

    def _end_probe(self, probe: int) -> bool:
        """Free the probe slot; ``False`` for a stale token (the slot is not its own)."""
        if probe != self._probe_token:
            return False
        self._probe_token = 0
        return True

    def record_success(self, *, probe: int = 0) -> None:
        """Record a successful call (or an answer that is not a health failure)."""
        if probe:
            if self._end_probe(probe) and self._state is CircuitState.HALF_OPEN:
                self._close()
            return
        if self._state is CircuitState.CLOSED:
            self._failure_count = 0

    def record_failure(self, exc: BaseException, *, probe: int = 0) -> None:
        """Record a failed call; exceptions the predicate does not count are neutral,
        except that a probe which merely got an uncounted answer (e.g. not found) proves
        the service is up, and a probe ended by cancellation or another ``BaseException``
        only frees the slot for the next caller."""
        if probe:
            if not self._end_probe(probe) or self._state is not CircuitState.HALF_OPEN:
                return
            if self._is_failure(exc):
                self._failure_count += 1
                self._open(reason="probe failed")
            elif isinstance(exc, Exception):
                self._close()
            return
        if self._state is not CircuitState.CLOSED or not self._is_failure(exc):
            return
        self._failure_count += 1
        if self._failure_count >= self.failure_threshold:
            self._open(reason="threshold")

    def reset(self) -> None:
        """Force the circuit closed (operator action); counts and probe are cleared."""
        self._probe_token = 0
        if self._state is not CircuitState.CLOSED:
            self._close()
        self._failure_count = 0

    # -- internals ---------------------------------------------------------------------
    def _open(self, *, reason: str) -> None:
        count = self._failure_count
        self._opened_at = self._clock()
        self._transition(CircuitState.OPEN)
        logger.warning(
            "Circuit breaker: Opening circuit after %d failures",
            count,
            extra={"breaker": self.name, "reason": reason},
        )

    def _close(self) -> None:
        self._failure_count = 0
        self._opened_at = None
        self._transition(CircuitState.CLOSED)
        logger.info(
            "Circuit breaker: Service recovered, closing circuit",
            extra={"breaker": self.name},
        )

    def _transition(self, new: CircuitState) -> None:
        old, self._state = self._state, new
        if old is new:
            return
        for listener in list(self._listeners):
            try:
                listener(self.name, old, new)
            except Exception:
                # A broken metrics hook must never break the call it observes.
                logger.exception("circuit breaker listener failed", extra={"breaker": self.name})

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(name={self.name!r}, state={self._state.value}, "
            f"failures={self._failure_count}/{self.failure_threshold})"
        )


# --------------------------------------------------------------------------------------
# Retry
# --------------------------------------------------------------------------------------


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
            async with asyncio.timeout(limit):
                return await func()
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


# --------------------------------------------------------------------------------------
# Spoken side
# --------------------------------------------------------------------------------------

ERROR_RESPONSES: Mapping[str, tuple[str, ...]] = {
    "tool_failure": (
        "Let me try finding that information another way.",
        "Hmm, that didn't come through. Let me try another way.",
        "I couldn't pull that up just now. Let's try a different route.",
    ),
    "connection_issue": (
        "I'm experiencing a brief connection issue. Bear with me for just a second.",
        "I'm having a little trouble reaching that right now. One moment.",
        "My connection to that hiccuped for a second. Bear with me.",
    ),
    "timeout": (
        "That's taking longer than expected. Let me try a quicker approach.",
        "That's running a bit slow today. Let me try something faster.",
        "That's taking a while to come back. Let's not keep you waiting.",
    ),
    "service_unavailable": (
        "That service appears to be temporarily unavailable. Let's continue without it for now.",
        "I can't reach that right now, but we can keep going without it.",
        "That part isn't available at the moment. Let's carry on with everything else.",
    ),
    "data_not_found": (
        "I couldn't find that information. Can you clarify what you're looking for?",
        "I didn't find anything for that. Could you tell me a bit more?",
        "Nothing came up for that. Could you double-check the details for me?",
    ),
    "generic": (
        "I encountered an issue, but I'm still here to help. What else can I do for you?",
        "Something went sideways on my end, but I'm still here. What else can I help with?",
        "I hit a small snag, but we can keep going. What would you like to do next?",
    ),
}


def _snapshot(context: Any) -> tuple[bool, Any]:
    """(found, deep copy) of the session userdata behind a RunContext-like object."""
    try:
        data = context.userdata
    except (AttributeError, ValueError):  # no session userdata set
        return False, None
    if data is None:
        return False, None
    try:
        return True, copy.deepcopy(data)
    except Exception as exc:
        logger.warning("could not snapshot session state: %s", type(exc).__name__)
        return False, None


def _restore(context: Any, snapshot: Any) -> None:
    """Put ``snapshot`` back into the live userdata object, keeping its identity so code
    holding a reference (the agent, other tools) sees the restored state."""
    live = context.userdata
    if isinstance(live, dict) and isinstance(snapshot, dict):
        live.clear()
        live.update(snapshot)
        return
    if type(live) is type(snapshot) and dataclasses.is_dataclass(live):
        for f in dataclasses.fields(live):  # works with slots=True too
            setattr(live, f.name, getattr(snapshot, f.name))
        return
    if hasattr(live, "__dict__") and type(live) is type(snapshot):
        live.__dict__.clear()
        live.__dict__.update(snapshot.__dict__)
        return
    session = getattr(context, "session", None)
    if session is not None:
        session.userdata = snapshot


class ErrorRecoveryMixin:
    """Spoken error handling for a LiveKit ``Agent`` (use as ``class A(ErrorRecoveryMixin,
    Agent)``). The agent defines ``self.circuit_breakers: dict[str, CircuitBreaker]``.

    Attributes a subclass or instance may set:
        error_rng: random source for phrase variants (default: the ``random`` module).
        retry_policy: :class:`VoiceRetryPolicy` for
            :meth:`call_with_retry_and_circuit_breaker`.
        retry_sleep / retry_clock: injected into the retry helper (tests).
    """

    circuit_breakers: dict[str, CircuitBreaker]
    error_rng: random.Random | None = None
    retry_policy: VoiceRetryPolicy = DEFAULT_VOICE_RETRY
    retry_sleep: Sleep = staticmethod(asyncio.sleep)
    retry_clock: Clock = staticmethod(time.monotonic)
    _recovery_lock: asyncio.Lock | None = None

    def get_error_response(self, error_type: str) -> str:
        """A natural spoken sentence for ``error_type`` (one of :data:`ERROR_RESPONSES`);
        an unknown type gets a ``"generic"`` variant. Variants are picked at random."""
        variants = ERROR_RESPONSES.get(error_type, ERROR_RESPONSES["generic"])
        return (self.error_rng or random).choice(variants)

    async def handle_tool_with_error_recovery(
        self,
        context: Any,
        tool_name: str,
        tool_func: Callable[[], Awaitable[T]],
        error_type: str | None = None,
    ) -> T:
        """Run ``tool_func()`` so that a failure never breaks the conversation.

        Snapshots the session userdata (deep copy) first; on any failure restores it,
        logs a warning naming the tool and error class, and raises livekit's
        ``ToolError`` whose message is a natural phrase (from ``error_type`` when given,
        else derived from the exception by :func:`error_type_for`). A ``ToolError``
        raised by the tool itself is already caller-safe and is kept; ``StopResponse``
        and cancellation pass through after the restore. Success returns the result.

        Wrapped tools of one agent run one at a time: LiveKit runs the tool calls of one
        model reply concurrently, and a failed tool's rollback must never erase what a
        sibling tool saved meanwhile. (So a wrapped tool must not call another one.)
        """
        lock: asyncio.Lock | None = getattr(self, "_recovery_lock", None)
        if lock is None:
            lock = asyncio.Lock()
            self._recovery_lock = lock
        async with lock:
            return await self._run_recovering(context, tool_name, tool_func, error_type)

    async def _run_recovering(
        self,
        context: Any,
        tool_name: str,
        tool_func: Callable[[], Awaitable[T]],
        error_type: str | None,
    ) -> T:
        found, snapshot = _snapshot(context)
        started = time.perf_counter()
        try:
            result = await tool_func()
        except BaseException as exc:
            duration, _, fallbacks = metrics.tool_metrics(tool_name)
            duration.observe(time.perf_counter() - started)
            if isinstance(exc, Exception) and not isinstance(exc, StopResponse):
                fallbacks.inc()
            if found:
                try:
                    _restore(context, snapshot)
                except Exception as restore_exc:  # pragma: no cover - defensive
                    logger.error(
                        "could not restore session state after %s: %s",
                        tool_name,
                        type(restore_exc).__name__,
                    )
            if isinstance(exc, asyncio.CancelledError | StopResponse):
                raise
            if isinstance(exc, ToolError):
                logger.warning(
                    "Tool %s declined: %s",
                    tool_name,
                    type(exc).__name__,
                    extra={"tool": tool_name},
                )
                raise
            if not isinstance(exc, Exception):
                raise
            phrase_type = error_type or error_type_for(exc)
            logger.warning(
                "Tool %s failed with %s; state restored, caller hears a %s phrase",
                tool_name,
                type(exc).__name__,
                phrase_type,
                extra={"tool": tool_name, "error_class": type(exc).__name__},
            )
            raise ToolError(self.get_error_response(phrase_type)) from exc
        duration, successes, _ = metrics.tool_metrics(tool_name)
        duration.observe(time.perf_counter() - started)
        successes.inc()
        return result

    async def call_with_retry_and_circuit_breaker(
        self,
        service_name: str,
        func: Callable[[], Awaitable[T]],
        fallback_response: str,
        max_retries: int = 2,
        *,
        deadline: float | None = None,
        attempt_timeout: float | None = None,
        min_attempt: float = 0.0,
        reraise: tuple[type[BaseException], ...] = (),
    ) -> T | str:
        """Call a service through its breaker with voice-tuned retries.

        Returns ``func()``'s result, or ``fallback_response`` when the circuit is open or
        every attempt failed. One call is one outcome for the breaker, so
        ``failure_threshold`` counts failed *calls*, not attempts; a half-open probe is
        a single attempt (no retries pile onto a service that is just recovering).

        Args:
            service_name: key of ``self.circuit_breakers``.
            func: zero-argument callable returning a new awaitable per attempt.
            fallback_response: the spoken sentence to return instead of failing.
            max_retries: retries after the first attempt. Default 2.
            deadline: overall seconds for all attempts and waits. Default None.
            attempt_timeout: seconds per attempt. Default None.
            min_attempt: no retry starts with less than this left of ``deadline``.
            reraise: exception types to raise instead of falling back (e.g. ``NotFound``
                when "no record" needs its own answer).

        Raises:
            KeyError: ``service_name`` is not one of ``self.circuit_breakers`` (the
                message lists the known names).
        """
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")  # before the breaker sees a call
        breakers = getattr(self, "circuit_breakers", {})
        breaker = breakers.get(service_name)
        if breaker is None:
            known = ", ".join(sorted(breakers)) or "none"
            raise KeyError(f"unknown service {service_name!r}; known services: {known}")
        try:
            probe = breaker.acquire()
        except CircuitOpenError:
            metrics.fallback_counter(service_name, "circuit_open").inc()
            logger.info(
                "Circuit for %s is open; using the fallback",
                service_name,
                extra={"service": service_name},
            )
            return fallback_response
        policy = self.retry_policy

        def _retryable(exc: BaseException) -> bool:
            # Stop retrying if other callers opened the circuit meanwhile.
            return is_retryable(exc) and breaker.state is CircuitState.CLOSED

        try:
            result = await retry_with_exponential_backoff(
                func,
                max_retries=0 if probe else max_retries,
                base_delay=policy.base_delay,
                max_delay=policy.max_delay,
                jitter=policy.jitter,
                retryable=_retryable,
                deadline=deadline,
                attempt_timeout=attempt_timeout,
                min_attempt=min_attempt,
                sleep=self.retry_sleep,
                clock=self.retry_clock,
                rng=self.error_rng,
                name=service_name,
            )
        except BaseException as exc:
            breaker.record_failure(exc, probe=probe)
            if isinstance(exc, reraise) or not isinstance(exc, Exception):
                raise
            metrics.fallback_counter(service_name, "failed").inc()
            logger.warning(
                "%s call failed with %s; using the fallback",
                service_name,
                type(exc).__name__,
                extra={"service": service_name, "error_class": type(exc).__name__},
            )
            return fallback_response
        breaker.record_success(probe=probe)
        return result
