"""Failure-rate and slow-call rules for the circuit breaker (Resilience4j's model).

Besides the spec's consecutive-failure threshold, a circuit may open when, over a
sliding window of the last ``window_size`` calls (and, with ``window_seconds``, only the
calls of that many recent seconds), at least ``minimum_calls`` were made and

* the share of counted failures reaches ``failure_rate_threshold``, or
* the share of calls that took ``slow_call_duration`` seconds or longer reaches
  ``slow_call_rate_threshold`` (``slow_call_duration`` 0 turns the slow-call rule off).

A conversation makes too few calls to judge a rate, so the agent's breakers of one
service share one window per process (:func:`process_window`); an opening by the rate
rule is then written to the resilience store like any other, so the fleet follows.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["RateRule", "SlidingWindow", "process_window", "reset_process_windows"]


@dataclass(frozen=True)
class RateRule:
    """Thresholds of the rate rule (rates are fractions, 0 < rate <= 1).

    Attributes:
        failure_rate_threshold: share of failed calls that opens the circuit (0.5).
        slow_call_rate_threshold: share of slow calls that opens it (1.0).
        slow_call_duration: seconds from which a call is slow; 0 = rule off (0.0).
        minimum_calls: calls the window must hold before a rate is judged (10).
        window_size: calls the window holds, the oldest dropped first (20).
        window_seconds: drop calls older than this; 0 = count-based only (0.0).
    """

    failure_rate_threshold: float = 0.5
    slow_call_rate_threshold: float = 1.0
    slow_call_duration: float = 0.0
    minimum_calls: int = 10
    window_size: int = 20
    window_seconds: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.failure_rate_threshold <= 1:
            raise ValueError("failure_rate_threshold must be in (0, 1]")
        if not 0 < self.slow_call_rate_threshold <= 1:
            raise ValueError("slow_call_rate_threshold must be in (0, 1]")
        if self.slow_call_duration < 0 or self.window_seconds < 0:
            raise ValueError("durations must be >= 0 seconds")
        if not 1 <= self.minimum_calls <= self.window_size:
            raise ValueError("need 1 <= minimum_calls <= window_size")


class SlidingWindow:
    """The recent outcomes of one breaker: ``(clock reading, failed, slow)`` per call."""

    def __init__(self, rule: RateRule) -> None:
        self.rule = rule
        self._calls: deque[tuple[float, bool, bool]] = deque(maxlen=rule.window_size)

    def record(self, now: float, *, failed: bool, duration: float | None) -> str | None:
        """Add one call; returns why the circuit should open (``"failure rate"`` or
        ``"slow-call rate"``), else ``None``. Only a failed call trips the failure rate,
        only a slow one the slow-call rate: a quick answer never opens a circuit, even
        when it pushes an older success out of the window (issue #24)."""
        rule = self.rule
        slow = bool(rule.slow_call_duration and duration is not None)
        slow = slow and duration is not None and duration >= rule.slow_call_duration
        self._calls.append((now, failed, slow))
        if rule.window_seconds:
            while self._calls and now - self._calls[0][0] > rule.window_seconds:
                self._calls.popleft()
        total = len(self._calls)
        if total < rule.minimum_calls:
            return None
        if failed and self.failure_rate() >= rule.failure_rate_threshold:
            return "failure rate"
        if slow and self.slow_rate() >= rule.slow_call_rate_threshold:
            return "slow-call rate"
        return None

    def failure_rate(self) -> float:
        return sum(1 for _, f, _ in self._calls if f) / len(self._calls) if self._calls else 0.0

    def slow_rate(self) -> float:
        return sum(1 for _, _, s in self._calls if s) / len(self._calls) if self._calls else 0.0

    def __len__(self) -> int:
        return len(self._calls)

    def clear(self) -> None:
        self._calls.clear()


_PROCESS_WINDOWS: dict[tuple[str, RateRule], SlidingWindow] = {}


def process_window(name: str, rule: RateRule) -> SlidingWindow:
    """The window every breaker of service ``name`` in this process shares."""
    window = _PROCESS_WINDOWS.get((name, rule))
    if window is None:
        window = _PROCESS_WINDOWS[(name, rule)] = SlidingWindow(rule)
    return window


def reset_process_windows() -> None:
    """Forget every shared window (tests: each test is a fresh process)."""
    _PROCESS_WINDOWS.clear()
