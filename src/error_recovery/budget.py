"""The retry budget (issue #15): a token bucket per vendor in the spirit of gRPC's retry
throttling (A6) and the AWS SDKs' standard mode, so that a fleet facing an outage does not
multiply its load by retrying.

The bucket holds up to ``max_tokens`` (full at start). Every failed attempt takes one
token; every successful one puts ``token_ratio`` back. A retry may start only while the
bucket holds more than half of ``max_tokens``: a vendor failing more than about
``token_ratio`` of its requests quickly stops being retried (each caller hears the
fallback after one attempt), while a healthy vendor's occasional failure is retried.

Per worker process by default (:func:`process_budget`); with the shared resilience store
the bucket is one for the whole fleet (:class:`FleetRetryBudget`), each failure and each
success while the bucket is not full written to the store; a store failure falls back to
the local bucket.
"""

from __future__ import annotations

from ..store import StoreError, StoreGuard

__all__ = [
    "FleetRetryBudget",
    "RetryBudget",
    "process_budget",
    "reset_process_budgets",
]


class RetryBudget:
    """Local token bucket. ``firsts`` / ``retries`` count first attempts and retries
    (drill and tests read them); ``refused`` counts retries the budget stopped."""

    def __init__(self, name: str, max_tokens: float = 10.0, token_ratio: float = 0.2) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if not 0 < token_ratio <= 1:
            raise ValueError("token_ratio must be in (0, 1]")
        self.name = name
        self.max_tokens = max_tokens
        self.token_ratio = token_ratio
        self.tokens = max_tokens
        self.firsts = 0
        self.retries = 0
        self.refused = 0

    def may_retry(self) -> bool:
        """Whether a retry may start now (does not take anything)."""
        return self.tokens > self.max_tokens / 2

    def started(self, *, retry: bool) -> None:
        """An attempt is about to go out."""
        if retry:
            self.retries += 1
        else:
            self.firsts += 1

    def refuse(self) -> None:
        self.refused += 1

    async def on_failure(self) -> None:
        self.tokens = max(0.0, self.tokens - 1)

    async def on_success(self) -> None:
        self.tokens = min(self.max_tokens, self.tokens + self.token_ratio)


class FleetRetryBudget(RetryBudget):
    """The same bucket kept in the resilience store, one per vendor for the fleet. The
    decision to retry reads the last value the store gave (no store round trip on the
    retry path); a store failure keeps the local bucket going."""

    def __init__(
        self, name: str, guard: StoreGuard, max_tokens: float = 10.0, token_ratio: float = 0.2
    ) -> None:
        super().__init__(name, max_tokens, token_ratio)
        self.guard = guard

    async def _add(self, delta: float) -> None:
        guard = self.guard
        try:
            self.tokens = await guard.run(
                lambda: guard.store.budget_add(self.name, delta, self.max_tokens), "retry budget"
            )
        except StoreError:
            await (super().on_failure() if delta < 0 else super().on_success())

    async def on_failure(self) -> None:
        await self._add(-1.0)

    async def on_success(self) -> None:
        if self.tokens < self.max_tokens:  # a full bucket stays full: no write
            await self._add(self.token_ratio)


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
