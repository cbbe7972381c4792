"""What every tool body runs on: the protected service call inside the tool's deadline
(its share of the turn, :mod:`src.tools.turn`), and the filler sentence. Whose data a tool
may read is decided in :mod:`.policy`.

:class:`ToolRuntime` is the base of :class:`~src.agent.PandaDocTrialistAgent`; the tool
modules take it as their first argument, so a tool body reads as plain steps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from livekit.agents.llm import ToolError

from src import metrics, report
from src.error_recovery import CircuitState, ErrorRecoveryMixin
from src.latency import REQUEST_LIMIT, AdaptiveTimeout, adaptive_timeout
from src.outbox import Outbox
from src.phrases import ACCOUNT_FALLBACK, FILLER, SLOTS_FALLBACK, USAGE_FALLBACK
from src.redaction import get_logger
from src.services.wiring import TrialistServices
from src.settings import Settings
from src.tools.turn import CURRENT_DEADLINE, Turn, TurnBook

__all__ = ["MIN_ATTEMPT_S", "ToolRuntime", "zone"]

logger = get_logger("pandadoc.agent")

T = TypeVar("T")
MIN_ATTEMPT_S = 0.5  # no request starts with less time than this left in the tool budget

# Read-only tools whose every source is one of these services, and the sentence they
# answer with when all of those services' circuits are open. While a service is down such
# a tool answers at once: no state snapshot, no filler, no log line per call (the
# breaker logs its state changes; the refusals are counted in metrics).
FAIL_FAST: dict[str, tuple[tuple[str, ...], str]] = {
    "get_trial_usage": (("amplitude",), USAGE_FALLBACK),
    "lookup_account": (("salesforce", "hubspot"), ACCOUNT_FALLBACK),
    "check_demo_availability": (("chilipiper",), SLOTS_FALLBACK),
}


class ToolRuntime(ErrorRecoveryMixin):
    """Breakers, retries and deadlines for tool bodies. The subclass sets
    ``services``, ``settings``, ``outbox`` and ``now`` in its ``__init__``."""

    services: TrialistServices
    settings: Settings
    outbox: Outbox
    now: Callable[[], datetime]

    _turn_book: TurnBook | None = None

    @property
    def adaptive_rule(self) -> AdaptiveTimeout:
        """How vendors' request timeouts follow their latency (settings, issue #15)."""
        r = self.settings.resilience
        return AdaptiveTimeout(
            percentile=r.adaptive_timeout_percentile,
            factor=r.adaptive_timeout_factor,
            floor=r.adaptive_timeout_floor,
            min_samples=r.adaptive_timeout_min_samples,
        )

    @property
    def turns(self) -> TurnBook:
        """The open turns of this agent (one per model reply that called tools)."""
        if self._turn_book is None:
            self._turn_book = TurnBook(lambda: self.retry_clock())
        return self._turn_book

    async def run_tool(
        self,
        context: Any,
        tool_name: str,
        body: Callable[[], Awaitable[str]],
        *,
        filler: str = FILLER,
    ) -> str:
        """Every tool: error recovery (change set, natural phrase), a deadline inside the
        turn's budget, and the turn's one filler sentence if the caller would otherwise
        wait in silence. A read-only tool whose services' circuits are all open answers
        its fallback first (:data:`FAIL_FAST`)."""
        fallback = self.refused_by_open_circuits(tool_name)
        if fallback is not None and not await self._cache_may_answer(tool_name, context):
            _, _, fallbacks = metrics.tool_metrics(tool_name)
            fallbacks.inc()
            raise ToolError(fallback)
        r = self.settings.resilience
        turn = self.turns.turn_for(context, r.turn_deadline)
        deadline_at = min(turn.deadline_at, self.retry_clock() + r.tool_deadline)
        token = CURRENT_DEADLINE.set(deadline_at)
        try:
            async with self.filler(context, filler, turn=turn):
                return await self.handle_tool_with_error_recovery(context, tool_name, body)
        finally:
            CURRENT_DEADLINE.reset(token)

    def refused_by_open_circuits(self, tool_name: str) -> str | None:
        """The fallback sentence when every configured service of a :data:`FAIL_FAST`
        tool is refused by an open circuit (not yet due for its probe), else ``None``.
        Asks the breakers only: nothing is called, copied or logged."""
        entry = FAIL_FAST.get(tool_name)
        if entry is None:
            return None
        names, fallback = entry
        refused = 0
        for name in names:
            if getattr(self.services, name, None) is None:
                continue  # not configured: the tool body says so itself
            breaker = self.circuit_breakers.get(name)
            if breaker is None or breaker.state is not CircuitState.OPEN or not breaker.retry_in():
                return None
            refused += 1
        if not refused:
            return None
        for name in names:
            if getattr(self.services, name, None) is not None:
                report.fallback(self, name, "circuit_open")
        return fallback

    async def _cache_may_answer(self, tool_name: str, context: Any) -> bool:
        """Whether the usage cache holds the verified caller's usage: then the tool body
        answers from it (no request) even while Amplitude's circuit is open."""
        client = self.services.amplitude
        if tool_name != "get_trial_usage" or client is None:
            return False
        identity = getattr(getattr(context, "userdata", None), "identity", None)
        if identity is None or not identity.verified or not identity.email:
            return False
        return await client.cached_usage(identity.email) is not None

    async def protected(
        self,
        service: str,
        func: Callable[[], Awaitable[T]],
        fallback: str,
        *,
        reraise: tuple[type[BaseException], ...] = (),
        deadline_at: float | None = None,
    ) -> T:
        """A service call through breaker + retries inside the tool deadline; a fallback
        becomes a ``ToolError`` carrying the spoken sentence."""
        if deadline_at is None:
            deadline_at = self.deadline()
        r = self.settings.resilience
        remaining = deadline_at - self.retry_clock()
        min_attempt = min(MIN_ATTEMPT_S, r.service_timeout)
        if remaining < min_attempt:
            # Too late for a useful attempt: answer now, and don't blame the service.
            logger.info("No time left in the tool budget for %s", service)
            raise ToolError(fallback)
        # Issue #15: each request is cut to the vendor's adaptive timeout; a retry starts
        # only if that timeout fits in what is left; a timed-out attempt (a hang) is not
        # retried inside the turn.
        adapted = adaptive_timeout(service, self.adaptive_rule, r.service_timeout)
        token = REQUEST_LIMIT.set(adapted)
        try:
            result = await self.call_with_retry_and_circuit_breaker(
                service,
                func,
                fallback,
                max_retries=self.retry_policy.max_retries,
                deadline=remaining,
                min_attempt=max(min_attempt, adapted),
                reraise=reraise,
                retry_timeouts=False,
            )
        finally:
            REQUEST_LIMIT.reset(token)
        if isinstance(result, str) and result == fallback:
            raise ToolError(fallback)
        return result  # type: ignore[return-value]

    def reserve(self, deadline_at: float | None = None) -> float:
        """Seconds of a tool's budget kept back for a fallback step: one attempt's worth,
        at most a third of what is left until ``deadline_at`` (default: the tool's)."""
        r = self.settings.resilience
        left = (self.deadline() if deadline_at is None else deadline_at) - self.retry_clock()
        return max(0.0, min(r.service_timeout, left / 3))

    def deadline(self) -> float:
        """When the running tool must have answered, on the retry clock: its share of
        the turn inside :meth:`run_tool`, else a fresh tool deadline from now."""
        current = CURRENT_DEADLINE.get()
        if current is not None:
            return current
        return self.retry_clock() + self.settings.resilience.tool_deadline

    @asynccontextmanager
    async def filler(
        self, context: Any, sentence: str = FILLER, *, turn: Turn | None = None
    ) -> AsyncIterator[None]:
        """Speak ``sentence`` once if the work inside leaves the caller waiting for
        ``FILLER_DELAY`` seconds; with ``turn``, only if no other tool of the turn has
        spoken its filler."""
        with_filler = getattr(context, "with_filler", None)
        if with_filler is None:
            yield
            return
        source: Any = sentence if turn is None else turn.claim_filler(sentence)
        async with with_filler(source, delay=self.settings.resilience.filler_delay):
            yield


def zone(name: str) -> ZoneInfo:
    """The caller's time zone, UTC when the name is not a known IANA zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")
