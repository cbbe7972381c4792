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
from typing import Any, TypeVar

from ..attempt import VendorContact, listening
from ..errors import CircuitOpenError
from ..redaction import get_logger
from ..store import BreakerView, StoreError, StoreGuard
from .circuit import CircuitState, Clock, LocalCircuit, TransitionListener
from .policies import counts_as_failure
from .window import RateRule, SlidingWindow

__all__ = ["CircuitBreaker", "CircuitState", "Clock", "TransitionListener"]

logger = get_logger("pandadoc.error_recovery")

T = TypeVar("T")


class CircuitBreaker(LocalCircuit):
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
        super().__init__(
            failure_threshold,
            recovery_timeout,
            name=name,
            clock=clock,
            is_failure=is_failure,
            listeners=listeners,
            rate_rule=rate_rule,
            window=window,
        )
        self.store = store
        self.share_ttl = share_ttl
        self.probe_lease = probe_lease
        self._synced_at: float | None = None
        # A success the store did not hear (it was down or cooling down): the fleet's
        # count may still hold the failures this success ended (issue #24).
        self._success_unsent = False
        # When the latest answered attempt was sent (this process's clock): a failed
        # attempt sent before it (a slow failure that ended after a quick answer) is not
        # "in a row"; while the store has not heard of it (``_answer_untold``), it is told
        # on the next contact, ends the fleet's streak of failures sent before it and
        # closes a circuit they opened (issue #24).
        self._answered_sent: float | None = None
        self._answer_untold = False
        # Failures on their way to the store: a success of a concurrent call waits for
        # them, so the store sees the two in the order they happened (issue #24).
        self._failure_writes = 0
        self._writes_idle: asyncio.Event | None = None
        self._shared_probe: dict[int, str] = {}  # local probe token -> fleet lease token
        self._background: set[asyncio.Task[None]] = set()

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
            view = await self._read(guard)
            if self._success_unsent and view.state == "closed" and view.failures:
                await self._send_success(guard)
                view = replace(view, failures=0)
            if view.state != "open" and not view.failures:
                self._answer_untold = False  # nothing it could change
            elif await self._tell_answer(guard):
                view = await self._read(guard)  # what is left of the streak
        except StoreError:
            return
        self._success_unsent = False  # the store is heard again: its view counts now
        self._adopt(view)

    async def _tell_answer(self, guard: StoreGuard) -> bool:
        """Tell the store of the latest answer this process got that it has not heard
        (raises StoreError; kept for the next contact). Failures of the fleet's streak
        sent before that answer's attempt were not in a row with those after it: the
        store keeps only the later ones, and closes a circuit they no longer hold open
        (the store down, or not yet read, when the answer came; issue #24). Whether
        there was one to tell."""
        answered = self._answered_sent
        if not self._answer_untold or answered is None:
            return False
        await self._send_success(guard, self._clock() - answered)
        if self._answered_sent == answered:  # (no later answer came meanwhile)
            self._answer_untold = False
        return True

    async def _read(self, guard: StoreGuard) -> BreakerView:
        return await guard.run(
            lambda: guard.store.breaker_view(self.name, self.recovery_timeout, self.streak_window),
            "read",
        )

    async def _send_success(self, guard: StoreGuard, sent_ago: float | None = None) -> bool:
        """Tell the store a success ended the failure streak (raises StoreError); with
        ``sent_ago``, the vendor's answer to an attempt sent that long ago, which closes
        a circuit the fleet opened on failures sent before it. Whether it did."""
        closed = await guard.run(
            lambda: guard.store.breaker_success(self.name, sent_ago), "success"
        )
        self._success_unsent = False
        return closed

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
            if self.state is CircuitState.CLOSED:
                # closed in the fleet since (a refresh the store did not answer kept
                # this process's stale "open"): the call goes ahead (issue #24)
                return 0
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
        self._streak_goes_on()
        sent_ago = duration or 0.0
        started = self._clock() - sent_ago
        if self._streak_started is None or started > self._streak_started:
            self._streak_started = started
        # sent before an answer that came already: judged in the order attempts were
        # sent, it is not in a row (the store, when heard, judges the fleet's the same way)
        before_answer = (
            by_rate is None
            and self.failure_threshold > 1
            and self._answered_sent is not None
            and started < self._answered_sent
        )
        if guard is None:
            if not before_answer:
                self._count_failure(by_rate)
            return
        threshold = 1 if by_rate else self.failure_threshold  # the rate rule opens it now
        self._failure_writes += 1
        try:
            await self._background_sent()
            if self._success_unsent:  # the streak the store holds ended before this one
                await self._send_success(guard)
            await self._tell_answer(guard)  # an answer sent before this failure's attempt
            opened, view = await guard.run(
                lambda: guard.store.breaker_failure(
                    self.name, threshold, self.recovery_timeout, self.streak_window, sent_ago
                ),
                "failure",
            )
        except StoreError:
            if not before_answer:
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
                    lambda: guard.store.breaker_failure(
                        self.name, 1, self.recovery_timeout, self.streak_window, duration or 0.0
                    ),
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
        if self._state is CircuitState.OPEN and await self._answered_late(duration, heard):
            return
        had_failures = self._failure_count > 0
        by_rate = self.record_success(duration=duration)
        answered = duration if self._verdict(None, heard) is True else None
        sent = None if answered is None else self._clock() - answered
        if sent is not None:
            if self._answered_sent is None or sent > self._answered_sent:
                self._answered_sent = sent
            # untold until the store hears of it (a success on a closed circuit is not
            # written; the store may be down, or hold a stale streak)
            self._answer_untold = guard is not None
        if guard is None:
            return
        if by_rate:
            # the slow-call rule opened it: tell the fleet (threshold 1 opens at once)
            with contextlib.suppress(StoreError):
                await guard.run(
                    lambda: guard.store.breaker_failure(
                        self.name, 1, self.recovery_timeout, self.streak_window, duration or 0.0
                    ),
                    "slow calls",
                )
            return
        if (had_failures or self._success_unsent) and self._state is CircuitState.CLOSED:
            cooling = guard.cooling_down
            try:
                closed = await self._send_success(guard, answered)
            except StoreError:
                self._success_unsent = True  # told once the store is heard again
                if cooling and not self._background:
                    self._send_success_soon(guard)
                return
            if sent is not None and sent == self._answered_sent:
                self._answer_untold = False  # heard: the latest answer, it says the most
            if closed:
                # the fleet opened it while this success was on its way, on failures
                # sent before this answer's attempt: the vendor works (issue #24)
                self._close_if_open()

    async def _answered_late(self, duration: float | None, heard: VendorContact | None) -> bool:
        """A call admitted while the circuit was closed (while open only a probe goes
        through) got the vendor's answer after it opened. Sent after the latest failed
        attempt of the streak that opened it, it shows the vendor works, and refusing
        callers for the recovery timeout would turn its answers into fallbacks (issue
        #24): the circuit closes. This process judges its own streak; the store judges
        the fleet's, whose failures were sent by other processes (their send times are
        kept in the store, on its clock). An answer to an attempt sent before those
        failures says nothing about now and changes nothing. Such a call ends within
        its tool deadline, so this is the opening it saw."""
        if duration is None or self._verdict(None, heard) is not True:
            return False
        own = self._late_answer(duration, heard)
        fleet = False
        guard = self.store
        if guard is not None:
            with contextlib.suppress(StoreError):
                fleet = await self._send_success(guard, duration)
            self._synced_at = self._clock()
        if not (own or fleet):
            return False
        self._close_if_open()  # (a probe of ours that began meanwhile decides)
        return True

    def _send_success_soon(self, guard: StoreGuard) -> None:
        """The guard's cool-down kept a streak's end from the store; other processes
        reading its count meanwhile would add their failures to a streak that ended
        (issue #24). Tell it now, cool-down aside, in a task no caller waits for (one
        operation, bounded by the guard's timeout; on failure it stays unsent)."""

        async def send() -> None:
            with contextlib.suppress(StoreError):
                await guard.run(
                    lambda: guard.store.breaker_success(self.name), "success", urgent=True
                )
                self._success_unsent = False

        task = asyncio.get_running_loop().create_task(send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _background_sent(self) -> None:
        """Wait for a success sent in the background (bounded by the guard's timeout):
        a failure that came after it must reach the store after it, else that success
        clears the failure and the new streak is counted one short (issue #24)."""
        if self._background:
            await asyncio.wait(set(self._background))

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
            if view.failures > self._failure_count:
                self._failed_at = self._clock()  # the fleet's streak is recent (unexpired)
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
