"""The retry budget (issues #15, #23): Finagle's ``RetryBudget`` per vendor, so that a
fleet facing an outage does not multiply its load by retrying, while a quiet client's
occasional blip is always retried.

Over a sliding time window of ``window_s`` seconds (10), a retry may start while

    retries in the window (this one included) <= floor + percent x first attempts

``floor`` (``RETRY_BUDGET_MAX_TOKENS``, 10) is a reserve of retries per window that
refills with time whatever the request rate (Finagle's ``minRetriesPerSec x ttl``): a
voice conversation makes a handful of calls, far too few for a ratio alone to allow a
retry, so the floor is what lets a healthy vendor's single blip be retried.
``percent`` (``RETRY_BUDGET_TOKEN_RATIO``, 0.2) lets busy fleets retry a share of their
requests on top. A retry that answers is given back (issue #23: a budget must not refuse
the retries that serve callers), so a vendor failing every other request is always
retried, while a dead vendor's retries all fail and count: it can cost at most ``floor``
extra requests per window plus ``percent`` of its traffic (and the breaker stops it after
three attempts).

Per worker process by default (:func:`process_budget`); with the shared resilience store
the window is one for the whole fleet (:class:`FleetRetryBudget`), kept under the store's
clock. Store writes stay off the success path: first attempts are counted locally and
written with the next failure (or every :data:`SYNC_EVERY` requests); a retry is
reserved atomically in the same write. A store failure falls back to the local window.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..store import StoreError, StoreGuard
from ..store.base import budget_totals, rule_retry_budget

__all__ = [
    "DEFAULT_WINDOW_S",
    "FleetRetryBudget",
    "RetryBudget",
    "process_budget",
    "reset_process_budgets",
]

DEFAULT_WINDOW_S = 10.0  # Finagle's default ttl
SYNC_EVERY = 10  # first attempts counted locally before a write on the success path


class RetryBudget:
    """The budget of one vendor in this process.

    Args:
        name: vendor name.
        max_tokens: the floor: retries allowed per window whatever the traffic (>= 1).
        token_ratio: the share of first attempts that may be retried on top (0, 1].
        window_s: seconds of the sliding window. Default 10.
        clock: seconds; injectable for tests.

    ``firsts`` / ``retries`` count first attempts and retries (drill and tests read
    them); ``refused`` counts retries the budget stopped.
    """

    def __init__(
        self,
        name: str,
        max_tokens: float = 10.0,
        token_ratio: float = 0.2,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens (the floor of retries per window) must be >= 1")
        if not 0 < token_ratio <= 1:
            raise ValueError("token_ratio must be in (0, 1]")
        if window_s <= 0:
            raise ValueError("window_s must be > 0 seconds")
        self.name = name
        self.max_tokens = max_tokens
        self.token_ratio = token_ratio
        self.window_s = window_s
        self._clock = clock
        self._record: dict[str, object] = {}  # the local window (same rule as the store's)
        self._reserved = 0  # retries granted and not started yet
        self._denied = False  # the last reservation asked for was refused
        self._pending_requests = 0  # first attempts not yet written
        self.firsts = 0
        self.retries = 0
        self.refused = 0

    @property
    def floor(self) -> float:
        return self.max_tokens

    @property
    def percent(self) -> float:
        return self.token_ratio

    def may_retry(self) -> bool:
        """Whether a retry may start now: one was reserved after the failure, or (no
        failure reported) the window has room."""
        if self._reserved:
            return True
        if self._denied:
            return False
        requests, retries = budget_totals(self._record, self._clock(), self.window_s)
        return retries + 1 <= self.floor + self.percent * (requests + self._pending_requests)

    def started(self, *, retry: bool) -> None:
        """An attempt is about to go out."""
        if retry:
            self.retries += 1
            if self._reserved:
                self._reserved -= 1
            else:  # granted by may_retry's estimate: count it now
                self._apply(0, 1, reserve=False)
        else:
            self.firsts += 1
            self._pending_requests += 1

    def refuse(self) -> None:
        self.refused += 1

    async def on_failure(self, *, retry_wanted: bool = True) -> bool:
        """A failed attempt: write the first attempts counted so far and, when another
        attempt may follow, reserve a retry if the window allows one (atomically, so
        concurrent callers never overshoot the budget). Returns whether this caller got
        a retry; it starts it with ``started(retry=True)``."""
        return await self._sync(reserve=retry_wanted)

    async def on_success(self, *, retry: bool = False) -> None:
        """A successful attempt. A retry that succeeded is given back to the window
        (issue #23: a budget must not refuse the retries that answer callers, so a
        flapping vendor is always retried; a dead vendor's retries all fail and count)."""
        if retry:
            await self._refund()
        elif self._pending_requests >= SYNC_EVERY:
            await self._sync(reserve=False)

    async def _sync(self, *, reserve: bool) -> bool:
        requests, self._pending_requests = self._pending_requests, 0
        granted = self._write(requests, reserve)
        self._granted(reserve, granted)
        return granted

    async def _refund(self) -> None:
        self._apply(0, -1, reserve=False)

    def _granted(self, asked: bool, granted: bool) -> None:
        if granted:
            self._reserved += 1
        if asked:
            self._denied = not granted

    def _write(self, requests: int, reserve: bool) -> bool:
        return self._apply(requests, 0, reserve=reserve)

    def _apply(self, requests: int, retries: int, *, reserve: bool) -> bool:
        rule = rule_retry_budget(
            requests, retries, reserve, self.window_s, self.floor, self.percent
        )
        granted, _ = rule(self._record, self._clock())
        return granted


class FleetRetryBudget(RetryBudget):
    """The same window kept in the resilience store, one per vendor for the fleet (on
    the store's clock). A store failure keeps the local window going."""

    def __init__(
        self,
        name: str,
        guard: StoreGuard,
        max_tokens: float = 10.0,
        token_ratio: float = 0.2,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name, max_tokens, token_ratio, window_s=window_s, clock=clock)
        self.guard = guard

    async def _sync(self, *, reserve: bool) -> bool:
        requests, self._pending_requests = self._pending_requests, 0
        guard = self.guard
        try:
            granted = await guard.run(
                lambda: guard.store.budget_update(
                    self.name, requests, 0, reserve, self.window_s, self.floor, self.percent
                ),
                "retry budget",
            )
        except StoreError:
            granted = self._write(requests, reserve)
        self._granted(reserve, granted)
        return granted

    async def _refund(self) -> None:
        guard = self.guard
        try:
            await guard.run(
                lambda: guard.store.budget_update(
                    self.name, 0, -1, False, self.window_s, self.floor, self.percent
                ),
                "retry budget",
            )
        except StoreError:
            await super()._refund()


_PROCESS_BUDGETS: dict[tuple[str, int], RetryBudget] = {}


def process_budget(
    name: str,
    max_tokens: float,
    token_ratio: float,
    guard: StoreGuard | None = None,
) -> RetryBudget:
    """The budget every conversation of this process shares for ``name`` (fleet-wide
    through ``guard`` when given)."""
    key = (name, id(guard))  # a store of its own (tests: one per test) has its own
    budget = _PROCESS_BUDGETS.get(key)
    if budget is None or (budget.max_tokens, budget.token_ratio) != (max_tokens, token_ratio):
        budget = (
            FleetRetryBudget(name, guard, max_tokens, token_ratio)
            if guard is not None
            else RetryBudget(name, max_tokens, token_ratio)
        )
        _PROCESS_BUDGETS[key] = budget
    return budget


def reset_process_budgets() -> None:
    _PROCESS_BUDGETS.clear()
