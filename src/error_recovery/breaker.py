"""The circuit breaker: CLOSED -> OPEN after ``failure_threshold`` consecutive counted
failures; OPEN fails fast with :class:`~src.errors.CircuitOpenError`; after
``recovery_timeout`` seconds exactly one caller goes through as the HALF_OPEN probe while
everyone else still fails fast; the probe's success closes the circuit, its failure
re-opens it with a fresh timeout.

Given a shared store (:mod:`src.store`, through a :class:`~src.store.StoreGuard`), the
breaker is one circuit for the whole fleet: every counted failure, in any conversation,
is written to the store; an open circuit is seen by every conversation within
``share_ttl`` seconds; after the recovery timeout exactly one probe goes out fleet-wide
(a lease that expires, so a probe whose process died does not block recovery). The
closed-circuit success path does not touch the store (the shared view is cached for
``share_ttl``). When the store fails, the breaker carries on with its local state.
Use the async :meth:`CircuitBreaker.admit` / :meth:`~CircuitBreaker.on_failure` /
:meth:`~CircuitBreaker.on_success` (or :meth:`~CircuitBreaker.call`) to share; the sync
``acquire``/``record_*`` only ever change local state.

With a :class:`~.window.RateRule` the circuit also opens on the failure rate or the
slow-call rate over a sliding window of recent calls (:mod:`.window`, per process); an
opening by that rule is written to the store like any other, so the fleet follows."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from enum import StrEnum
from typing import Any, TypeVar

from .. import metrics
from ..attempt import VendorContact, listening
from ..errors import CircuitOpenError
from ..redaction import get_logger
from ..store import BreakerView, StoreError, StoreGuard
from .policies import counts_as_failure, probe_verdict
from .window import RateRule, SlidingWindow

__all__ = ["CircuitBreaker", "CircuitState", "Clock", "TransitionListener"]

logger = get_logger("pandadoc.error_recovery")

T = TypeVar("T")
Clock = Callable[[], float]
TransitionListener = Callable[[str, "CircuitState", "CircuitState"], None]


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
        store: a :class:`~src.store.StoreGuard` to share the circuit fleet-wide (None:
            this breaker is local, as in the spec).
        share_ttl: seconds a shared view is trusted before the store is read again.
            Default 0.25.
        probe_lease: seconds the fleet's one half-open probe holds its lease. Default 10.
        rate_rule: failure-rate / slow-call-rate thresholds over a sliding window (None:
            only the consecutive rule, as in the spec).
        window: the sliding window to judge it on (default: a window of this breaker's
            own; :func:`~.window.process_window` shares one per service).

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
        store: StoreGuard | None = None,
        share_ttl: float = 0.25,
        probe_lease: float = 10.0,
        rate_rule: RateRule | None = None,
        window: SlidingWindow | None = None,
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
        self.store = store
        self.share_ttl = share_ttl
        self.probe_lease = probe_lease
        self._synced_at: float | None = None
        # A success the store did not hear (it was down or cooling down): the fleet's
        # count may still hold the failures this success ended (issue #24).
        self._success_unsent = False
        # Failures on their way to the store: a success of a concurrent call waits for
        # them, so the store sees the two in the order they happened (issue #24).
        self._failure_writes = 0
        self._writes_idle: asyncio.Event | None = None
        # When the latest attempt of the current failure streak started (this process's
        # own failures): an answer to an attempt sent after it, arriving once the
        # circuit opened, shows the vendor works (issue #24).
        self._streak_started: float | None = None
        self._shared_probe: dict[int, str] = {}  # local probe token -> fleet lease token
        self.rate_rule = rate_rule
        if window is None and rate_rule is not None:
            window = SlidingWindow(rate_rule)
        self._window = window

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
        probe = await self.admit()
        started = self._clock()
        with listening() as heard:
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                took = self._clock() - started
                await self.on_failure(exc, probe=probe, duration=took, heard=heard)
                raise
        await self.on_success(probe=probe, duration=self._clock() - started, heard=heard)
        return result

    # -- fleet-wide (async; local only when there is no store) --------------------------
    async def refresh(self, *, force: bool = False) -> None:
        """Adopt the fleet's view of this circuit when the cached one is older than
        ``share_ttl`` (or ``force``). A store failure keeps the local state."""
        guard = self.store
        if guard is None:
            return
        fresh = self._synced_at is not None and self._clock() - self._synced_at < self.share_ttl
        if fresh and not force:
            return
        self._synced_at = self._clock()
        try:
            view = await guard.run(
                lambda: guard.store.breaker_view(self.name, self.recovery_timeout), "read"
            )
            if self._success_unsent and view.state == "closed" and view.failures:
                await self._send_success(guard)
                view = replace(view, failures=0)
        except StoreError:
            return
        self._success_unsent = False  # the store is heard again: its view counts now
        self._adopt(view)

    async def _send_success(self, guard: StoreGuard) -> None:
        """Tell the store a success ended the failure streak (raises StoreError)."""
        await guard.run(lambda: guard.store.breaker_success(self.name), "success")
        self._success_unsent = False

    async def admit(self) -> int:
        """:meth:`acquire` for the fleet: refuses while the shared circuit is open, and
        past the recovery timeout lets exactly one caller fleet-wide be the probe."""
        guard = self.store
        if guard is None:
            return self.acquire()
        await self.refresh()
        if self._state is CircuitState.CLOSED:
            return 0
        if self._state is CircuitState.HALF_OPEN or self.retry_in() > 0:
            return self.acquire()  # raises CircuitOpenError
        try:
            token, view = await guard.run(
                lambda: guard.store.breaker_probe(
                    self.name, self.recovery_timeout, self.probe_lease
                ),
                "probe",
            )
        except StoreError:
            return self.acquire()  # the store is down: this process decides alone
        if not token:
            self._adopt(view)
            raise CircuitOpenError(self.name, view.retry_in)
        self._opened_at = self._clock() - self.recovery_timeout  # due, as the store said
        local = self.acquire()
        if local:
            self._shared_probe[local] = token
        return local

    async def on_failure(
        self,
        exc: BaseException,
        *,
        probe: int = 0,
        duration: float | None = None,
        judge: bool = True,
        heard: VendorContact | None = None,
    ) -> None:
        """:meth:`record_failure`, counted fleet-wide: this failure and those of every
        other conversation add up to the threshold. ``duration`` (seconds the attempt
        took) feeds the rate rule; ``judge=False`` (an attempt of a call that may still
        be retried, issue #23) counts for the consecutive rule only: the call is judged
        once it ends (:meth:`on_call_failed`, or :meth:`on_success`). ``heard``: what
        the probe heard from the vendor (:func:`~src.attempt.listening`)."""
        guard = self.store
        if probe:
            await self._finish(probe, self._verdict(exc, heard))
            return
        if self._state is not CircuitState.CLOSED or not self._is_failure(exc):
            if self._state is CircuitState.CLOSED and self._verdict(exc, heard):
                await self.on_success(duration=duration)  # an answer: the streak ends
            return
        by_rate = self._observe(failed=True, duration=duration) if judge else None
        started = self._clock() - (duration or 0.0)
        if self._streak_started is None or started > self._streak_started:
            self._streak_started = started
        if guard is None:
            self._count_failure(by_rate)
            return
        threshold = 1 if by_rate else self.failure_threshold  # the rate rule opens it now
        self._failure_writes += 1
        try:
            if self._success_unsent:  # the streak the store holds ended before this one
                await self._send_success(guard)
            opened, view = await guard.run(
                lambda: guard.store.breaker_failure(self.name, threshold, self.recovery_timeout),
                "failure",
            )
        except StoreError:
            self._count_failure(by_rate)
            return
        finally:
            self._failure_writes -= 1
            if not self._failure_writes and self._writes_idle is not None:
                self._writes_idle.set()
        self._synced_at = self._clock()
        if opened and self._state is CircuitState.CLOSED:
            self._failure_count = view.failures
            if by_rate:
                self._open_by_rate(by_rate)
            else:
                self._open(reason="threshold")
        else:
            self._adopt(view)

    async def on_call_failed(self, exc: BaseException, *, duration: float | None = None) -> None:
        """A call whose attempts were each counted with ``judge=False`` failed as the
        caller feels it (every retry failed too): judge it once by the rate rules."""
        if self._state is not CircuitState.CLOSED or not self._is_failure(exc):
            return
        by_rate = self._observe(failed=True, duration=duration)
        if not by_rate:
            return
        self._open_by_rate(by_rate)
        guard = self.store
        if guard is not None:  # tell the fleet (threshold 1 opens at once)
            with contextlib.suppress(StoreError):
                await guard.run(
                    lambda: guard.store.breaker_failure(self.name, 1, self.recovery_timeout),
                    "failure rate",
                )
            self._synced_at = self._clock()

    async def on_success(
        self,
        *,
        probe: int = 0,
        duration: float | None = None,
        heard: VendorContact | None = None,
    ) -> None:
        """:meth:`record_success`, shared: a probe's success closes the circuit for the
        fleet (only when the vendor itself answered); a success after counted failures
        clears the shared count; only a slow call that trips the slow-call rule writes a
        failure to the store (issue #23: a success never opens a circuit otherwise)."""
        guard = self.store
        if probe:
            await self._finish(probe, self._verdict(None, heard))
            return
        if self._failure_writes:
            # A concurrent call's failure is on its way to the store (each write bounded
            # by the guard's timeout): this success came after it and must land after
            # it, else the store keeps that failure as the start of a new streak.
            if self._writes_idle is None:
                self._writes_idle = asyncio.Event()
            self._writes_idle.clear()
            await self._writes_idle.wait()
        if self._late_answer(duration, heard):
            # An attempt sent after the last failure of the streak that opened the
            # circuit (by a call admitted while it was closed: while open only a probe
            # goes through) got the vendor's answer: the vendor works, and refusing
            # callers for the recovery timeout would turn its answers into fallbacks
            # (issue #24). Such a call ends within its tool deadline, so this is the
            # opening it saw. An answer to an attempt sent before those failures says
            # nothing about now and changes nothing.
            self._close()
            if guard is not None:
                with contextlib.suppress(StoreError):
                    await guard.run(
                        lambda: guard.store.breaker_late_success(self.name), "late success"
                    )
                self._synced_at = self._clock()
            return
        had_failures = self._failure_count > 0
        by_rate = self.record_success(duration=duration)
        if guard is None:
            return
        if by_rate:
            # the slow-call rule opened it: tell the fleet (threshold 1 opens at once)
            with contextlib.suppress(StoreError):
                await guard.run(
                    lambda: guard.store.breaker_failure(self.name, 1, self.recovery_timeout),
                    "slow calls",
                )
            return
        if (had_failures or self._success_unsent) and self._state is CircuitState.CLOSED:
            try:
                await self._send_success(guard)
            except StoreError:
                self._success_unsent = True  # told once the store is heard again

    def _late_answer(self, duration: float | None, heard: VendorContact | None) -> bool:
        """Whether a success while open answers an attempt sent after the last failure
        of this process's streak that opened the circuit."""
        if self._state is not CircuitState.OPEN or duration is None:
            return False
        if self._streak_started is None or self._verdict(None, heard) is not True:
            return False
        return self._clock() - duration > self._streak_started

    def _verdict(self, exc: BaseException | None, heard: VendorContact | None) -> bool | None:
        return probe_verdict(exc, heard, self._is_failure)

    async def _finish(self, probe: int, verdict: bool | None) -> None:
        """End a probe everywhere: locally, then its fleet lease."""
        token = self._shared_probe.pop(probe, None)
        self._end_probe_with(probe, verdict)
        guard = self.store
        if guard is not None and token:
            await self._probe_done(guard, token, verdict)

    async def _probe_done(self, guard: StoreGuard, token: str, ok: bool | None) -> None:
        with contextlib.suppress(StoreError):  # else the lease expires by itself
            await guard.run(
                lambda: guard.store.breaker_probe_done(self.name, token, ok), "probe result"
            )
        self._synced_at = self._clock()

    def _adopt(self, view: BreakerView) -> None:
        """Make the local state the fleet's (a probe of our own in flight decides alone)."""
        if self._probe_token:
            return
        if view.state == "closed":
            if self._state is not CircuitState.CLOSED:
                self._close()
            self._failure_count = view.failures
            return
        # open, or half-open with someone else's probe: refuse until it is due
        retry_in = view.retry_in if view.state == "open" else 0.0
        self._opened_at = self._clock() - max(0.0, self.recovery_timeout - retry_in)
        self._failure_count = view.failures
        if self._state is not CircuitState.OPEN:
            self._streak_started = None  # the fleet's failures: their times are not ours
            self._transition(CircuitState.OPEN)
            logger.info(
                "Circuit breaker: circuit opened by another conversation",
                extra={"breaker": self.name},
            )

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

    def holds(self, probe: int) -> bool:
        """Whether ``probe`` (a token from :meth:`admit`) is the half-open probe in
        flight: its call may retry while it is."""
        return bool(probe) and probe == self._probe_token and self._state is CircuitState.HALF_OPEN

    def _end_probe(self, probe: int) -> bool:
        """Free the probe slot; ``False`` for a stale token (the slot is not its own)."""
        if probe != self._probe_token:
            return False
        self._probe_token = 0
        return True

    def record_success(self, *, probe: int = 0, duration: float | None = None) -> str | None:
        """Record a successful call (or an answer that is not a health failure);
        ``duration`` lets the slow-call rule judge it. Returns why the slow-call rule
        opened the circuit, else ``None``."""
        if probe:
            self._end_probe_with(probe, True)
            return None
        if self._state is CircuitState.CLOSED:
            self._failure_count = 0
            self._streak_started = None
            by_rate = self._observe(failed=False, duration=duration)
            if by_rate:
                self._open_by_rate(by_rate)
                return by_rate
        return None

    def record_failure(
        self,
        exc: BaseException,
        *,
        probe: int = 0,
        duration: float | None = None,
        judge: bool = True,
    ) -> None:
        """Record a failed call. An answer the predicate does not count (e.g. not found)
        proves the service is up: it is a success, for a probe and for the streak of
        failures in a row (issue #24). A call ended without a word from the vendor (a
        refusal by our own code, a cancellation, another ``BaseException``) is neutral; as
        a probe it only frees the slot, due at once for the next caller's probe."""
        if probe:
            self._end_probe_with(probe, self._verdict(exc, None))
            return
        if self._state is not CircuitState.CLOSED or not self._is_failure(exc):
            if self._state is CircuitState.CLOSED and self._verdict(exc, None):
                self.record_success(duration=duration)  # an answer: the streak ends
            return
        self._count_failure(self._observe(failed=True, duration=duration) if judge else None)

    def _end_probe_with(self, probe: int, verdict: bool | None) -> None:
        if not self._end_probe(probe) or self._state is not CircuitState.HALF_OPEN:
            return
        if verdict is True:
            self._close()
        elif verdict is False:
            self._failure_count += 1
            self._open(reason="probe failed")
        else:  # no verdict: never half-open without a probe in flight
            self._opened_at = self._clock() - self.recovery_timeout
            self._transition(CircuitState.OPEN)

    def _count_failure(self, by_rate: str | None) -> None:
        self._failure_count += 1
        if self._failure_count >= self.failure_threshold:
            self._open(reason="threshold")
        elif by_rate:
            self._open_by_rate(by_rate)

    def _observe(self, *, failed: bool, duration: float | None) -> str | None:
        """Feed the rate rule's window; why it says to open, else ``None``."""
        if self._window is None:
            return None
        return self._window.record(self._clock(), failed=failed, duration=duration)

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

    def _open_by_rate(self, reason: str) -> None:
        window = self._window
        assert window is not None
        rate = window.failure_rate() if reason == "failure rate" else window.slow_rate()
        calls = len(window)
        self._opened_at = self._clock()
        self._transition(CircuitState.OPEN)
        logger.warning(
            "Circuit breaker: Opening circuit on %s %.0f%% over the last %d calls",
            reason,
            rate * 100,
            calls,
            extra={"breaker": self.name, "reason": reason},
        )

    def _close(self) -> None:
        self._failure_count = 0
        self._streak_started = None
        if self._window is not None:
            self._window.clear()
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
