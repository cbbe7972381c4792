"""The spoken side for an agent: natural phrases per error type, a tool wrapper that keeps
session state intact when a tool fails, and the combined retry + breaker + fallback call."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from livekit.agents.llm import StopResponse, ToolError

from .. import metrics, report
from ..attempt import listening
from ..errors import CircuitOpenError, ServiceTimeout
from ..phrases import ERROR_RESPONSES
from ..redaction import get_logger
from ..registry.kinds import OperationKind, OutcomeUnknown, is_answer, retry_rule
from .breaker import CircuitBreaker, CircuitState, Clock
from .budget import RetryBudget
from .bulkhead import Bulkhead, BulkheadFull
from .changeset import ToolChanges, tracks
from .policies import error_type_for, is_retryable
from .retry import DEFAULT_VOICE_RETRY, Sleep, VoiceRetryPolicy, retry_with_exponential_backoff

__all__ = ["ErrorRecoveryMixin"]

logger = get_logger("pandadoc.error_recovery")

T = TypeVar("T")


def _snapshot(context: Any) -> tuple[bool, Any]:
    """(found, undo record) for the session userdata behind a RunContext-like object.

    Dicts and dataclasses (the real session state) get a :class:`ToolChanges` change set:
    no deep copy, and sibling tools may run meanwhile. Any other userdata falls back to a
    deep copy, restored as a whole."""
    try:
        data = context.userdata
    except (AttributeError, ValueError):  # no session userdata set
        return False, None
    if data is None:
        return False, None
    if tracks(data):
        return True, ToolChanges(data)
    try:
        return True, copy.deepcopy(data)
    except Exception as exc:
        logger.warning("could not snapshot session state: %s", type(exc).__name__)
        return False, None


def _restore(context: Any, snapshot: Any) -> None:
    """Undo a failed tool: roll back its change set (keeping the state's identity and
    what sibling tools saved), or put a deep copy back."""
    if isinstance(snapshot, ToolChanges):
        session = getattr(context, "session", None)
        if session is not None and getattr(session, "userdata", None) is not snapshot.data:
            session.userdata = snapshot.data  # the tool replaced the state object itself
        snapshot.rollback()
        return
    live = context.userdata
    if isinstance(live, dict) and isinstance(snapshot, dict):
        live.clear()
        live.update(snapshot)
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
    bulkheads: dict[str, Bulkhead] = {}  # noqa: RUF012 - read-only default: none
    retry_budgets: dict[str, RetryBudget] = {}  # noqa: RUF012 - read-only default: none
    error_rng: random.Random | None = None
    retry_policy: VoiceRetryPolicy = DEFAULT_VOICE_RETRY
    retry_sleep: Sleep = staticmethod(asyncio.sleep)
    retry_clock: Clock = staticmethod(time.monotonic)

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

        Opens a change set over the session userdata first (see
        :mod:`~src.error_recovery.changeset`); on any failure rolls back what this tool
        changed, logs a warning naming the tool and error class, and raises livekit's
        ``ToolError`` whose message is a natural phrase (from ``error_type`` when given,
        else derived from the exception by :func:`error_type_for`). A ``ToolError``
        raised by the tool itself is already caller-safe and is kept; ``StopResponse``
        and cancellation pass through after the rollback. Success returns the result and
        commits the change set.

        Wrapped tools run concurrently (LiveKit runs the tool calls of one model reply
        together): a failed tool's rollback never erases what a sibling tool saved.
        """
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
        if isinstance(snapshot, ToolChanges):
            snapshot.commit()
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
        kind: OperationKind | None = None,
    ) -> T | str:
        """Call a service through its breaker with voice-tuned retries.

        Returns ``func()``'s result, or ``fallback_response`` when the circuit is open or
        every attempt failed. Every failed *attempt* counts toward ``failure_threshold``
        (three timeouts in a row are three failures, whoever made them, so a dead service
        opens the circuit after ``failure_threshold`` requests, not that many retried
        calls); a retried call that then succeeds clears the count, so one transient
        failure never opens a circuit. Before each retry the breaker's shared view is
        refreshed: a circuit another conversation opened meanwhile ends the retries. A
        half-open probe is a call like any other: it keeps its retries (one caller's
        few requests, inside its turn), and its verdict is the call's, so a blip on the
        probe's first attempt neither re-opens the circuit nor costs the caller an
        answer a retry would have got (issue #24); everyone else is refused meanwhile.

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
            kind: the operation's kind (:mod:`src.registry.kinds`), which decides what
                may be sent again: its one retry rule. With a kind, the vendor's answers
                (``NotFound``, ``InvalidRequest``) are raised to the caller, and a write
                whose outcome is unknown ends in
                :class:`~src.registry.kinds.OutcomeUnknown` instead of the fallback.
                ``None`` (the spec's call): every retryable failure is retried.

        With ``self.bulkheads[service_name]`` (issue #15) the call first takes a slot of
        the vendor's bulkhead; when none frees up in time the caller gets the fallback
        without the vendor being called. With ``self.retry_budgets[service_name]`` a
        retry starts only while the vendor's retry budget allows it
        (:mod:`~.budget`).

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
        bulkhead = self.bulkheads.get(service_name)
        async with contextlib.AsyncExitStack() as stack:
            if bulkhead is not None:
                try:
                    await stack.enter_async_context(bulkhead.slot())
                except BulkheadFull:
                    report.fallback(self, service_name, "bulkhead_full")
                    logger.warning(
                        "Bulkhead for %s full (%d calls in flight); using the fallback",
                        service_name,
                        bulkhead.max_concurrent,
                        extra={"service": service_name},
                    )
                    return fallback_response
            return await self._breaker_call(
                breaker,
                service_name,
                func,
                fallback_response,
                max_retries,
                deadline=deadline,
                attempt_timeout=attempt_timeout,
                min_attempt=min_attempt,
                reraise=reraise,
                kind=kind,
            )
        raise AssertionError("unreachable")  # pragma: no cover - mypy: the stack may swallow

    async def _breaker_call(
        self,
        breaker: CircuitBreaker,
        service_name: str,
        func: Callable[[], Awaitable[T]],
        fallback_response: str,
        max_retries: int,
        *,
        deadline: float | None,
        attempt_timeout: float | None,
        min_attempt: float,
        reraise: tuple[type[BaseException], ...],
        kind: OperationKind | None = None,
    ) -> T | str:
        """The call inside its bulkhead slot: breaker, retries, fallback."""
        try:
            probe = await breaker.admit()
        except CircuitOpenError:
            # Counted, not logged per call: an outage would flood the log. The breaker
            # logs its state changes (the spec's lines).
            report.fallback(self, service_name, "circuit_open")
            logger.debug(
                "Circuit for %s is open; using the fallback",
                service_name,
                extra={"service": service_name},
            )
            return fallback_response
        policy = self.retry_policy
        rule = None if kind is None else retry_rule(kind)
        if rule is not None:
            max_retries = rule.retries(max_retries)
        counted: BaseException | None = None  # the last failure already told the breaker
        attempts = 0
        took: float | None = None  # seconds the last attempt took (the slow-call rule)
        clock = self.retry_clock
        budget = self.retry_budgets.get(service_name)
        retries = max_retries
        granted: bool | None = None  # the budget's answer for this call's next retry

        async def attempt() -> T:
            nonlocal counted, attempts, took, granted
            attempts += 1
            granted = None
            if attempts > 1:
                report.retry(self, service_name)
                # Before a retry, see what other conversations learned meanwhile.
                await breaker.refresh()
                if breaker.state is not CircuitState.CLOSED and not breaker.holds(probe):
                    raise CircuitOpenError(service_name, breaker.retry_in())
            if budget is not None:
                budget.started(retry=attempts > 1)
            started = clock()
            try:
                result = await func()
            except Exception as exc:
                took = clock() - started
                if isinstance(exc, ServiceTimeout):
                    report.timeout(self, service_name)
                if not probe:  # every failed attempt counts, whoever made it; the rate
                    # rules judge the call once it ends (issue #23: as the caller feels it)
                    counted = exc
                    await breaker.on_failure(exc, duration=took, judge=False)
                if budget is not None and is_retryable(exc):
                    granted = await budget.on_failure(retry_wanted=attempts <= retries)
                raise
            took = clock() - started
            if budget is not None:
                await budget.on_success(retry=attempts > 1)
            return result

        def _retryable(exc: BaseException) -> bool:
            # Stop retrying if other callers opened the circuit meanwhile (a probe goes
            # on while the probe is still its own).
            if not is_retryable(exc):
                return False
            if breaker.state is not CircuitState.CLOSED and not breaker.holds(probe):
                return False
            if rule is not None and not rule.may_resend(exc):
                logger.info(
                    "%s %s failed with %s: not sent again (%s)",
                    service_name,
                    rule.kind.value,
                    type(exc).__name__,
                    "a hang" if rule.kind is OperationKind.READ else "it may have applied",
                    extra={"service": service_name, "kind": rule.kind.value},
                )
                return False
            allowed = budget.may_retry() if granted is None and budget else granted
            if budget is not None and not allowed:
                budget.refuse()
                logger.info(
                    "Retry budget for %s spent; not retrying",
                    service_name,
                    extra={"service": service_name},
                )
                return False
            return True

        heard = listening()
        try:
            with heard as contact:
                result = await retry_with_exponential_backoff(
                    attempt,
                    max_retries=retries,
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
            if isinstance(exc, TimeoutError):  # the attempt's time ran out (asyncio.timeout)
                report.timeout(self, service_name)
            if probe:  # every probe ends, whatever ended it (issue #23)
                await breaker.on_failure(exc, probe=probe, duration=took, heard=contact)
            elif exc is counted:
                # the call, as felt. A call sent once by its own choice (no retries: the
                # outbox's send, whose retry is the next flush) says nothing about whether
                # retries would have absorbed the fault, so the rate rules leave it to the
                # consecutive rule, like any attempt (issue #24: writes failing on a
                # vendor that fails every other request opened the circuit by rate)
                if retries:
                    await breaker.on_call_failed(exc, duration=took)
            elif not isinstance(exc, CircuitOpenError):
                await breaker.on_failure(exc)  # e.g. the attempt's time ran out
            if isinstance(exc, reraise) or not isinstance(exc, Exception):
                raise
            if rule is not None and is_answer(exc):
                raise  # the vendor's answer: the tool body knows what to say
            if rule is not None and rule.unknown(exc):
                metrics.fallback_counter(service_name, "outcome_unknown").inc()
                logger.warning(
                    "%s %s outcome unknown after %s; not sent again",
                    service_name,
                    rule.kind.value,
                    type(exc).__name__,
                    extra={"service": service_name, "error_class": type(exc).__name__},
                )
                raise OutcomeUnknown(service_name, rule.kind) from exc
            reason = "circuit_open" if isinstance(exc, CircuitOpenError) else "failed"
            report.fallback(self, service_name, reason)
            logger.warning(
                "%s call failed with %s; using the fallback",
                service_name,
                type(exc).__name__,
                extra={"service": service_name, "error_class": type(exc).__name__},
            )
            return fallback_response
        await breaker.on_success(probe=probe, duration=took, heard=contact)
        return result
