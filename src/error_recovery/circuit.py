"""The circuit's own state machine, in one process: CLOSED -> OPEN after
``failure_threshold`` consecutive counted failures (or the rate rule, :mod:`.window`);
OPEN fails fast; after ``recovery_timeout`` seconds one caller is the HALF_OPEN probe,
whose verdict closes or re-opens it. Synchronous: :class:`~.breaker.CircuitBreaker`
adds the fleet (a shared store) and the async call around it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from enum import StrEnum

from .. import metrics
from ..attempt import VendorContact
from ..errors import CircuitOpenError
from ..redaction import get_logger
from .policies import counts_as_failure, probe_verdict
from .window import RateRule, SlidingWindow

__all__ = ["CircuitState", "Clock", "LocalCircuit", "TransitionListener"]

logger = get_logger("pandadoc.error_recovery")

Clock = Callable[[], float]
TransitionListener = Callable[[str, "CircuitState", "CircuitState"], None]


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class LocalCircuit:
    """One process's circuit (see :class:`~.breaker.CircuitBreaker` for the arguments)."""

    def __init__(
        self,
        failure_threshold: int = 3,
        recovery_timeout: float = 30.0,
        *,
        name: str = "",
        clock: Clock = time.monotonic,
        is_failure: Callable[[BaseException], bool] = counts_as_failure,
        listeners: Iterable[TransitionListener] = (),
        rate_rule: RateRule | None = None,
        window: SlidingWindow | None = None,
        streak_window: float | None = None,
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
        # When the latest attempt of the current failure streak started (this process's
        # own failures): an answer to an attempt sent after it, arriving once the
        # circuit opened, shows the vendor works (issue #24).
        self._streak_started: float | None = None
        # A streak of failures ends when it pauses longer than this (seconds; 0: never,
        # as in the spec). Default: the rate rule's window, so both rules judge the same
        # recent past; an hour-old failure says nothing about now (issue #24).
        if streak_window is None:
            streak_window = rate_rule.window_seconds if rate_rule is not None else 0.0
        if streak_window < 0:
            raise ValueError("streak_window must be >= 0 seconds")
        self.streak_window = streak_window
        self._failed_at: float | None = None  # when the streak's latest failure was counted
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

    # -- the state machine -------------------------------------------------------------
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
        self._streak_goes_on()
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

    def _streak_goes_on(self) -> None:
        """A counted failure: it starts a new streak when the last one paused longer
        than ``streak_window``."""
        now = self._clock()
        if (
            self.streak_window
            and self._failed_at is not None
            and now - self._failed_at > self.streak_window
        ):
            self._failure_count = 0
        self._failed_at = now

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

    def _close_if_open(self) -> None:
        if self._state is CircuitState.OPEN:
            self._close()

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

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(name={self.name!r}, state={self._state.value}, "
            f"failures={self._failure_count}/{self.failure_threshold})"
        )
