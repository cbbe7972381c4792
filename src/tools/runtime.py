"""What every tool body runs on: the protected service call inside the tool's deadline
(its share of the turn, :mod:`src.tools.turn`), and the filler sentence. Whose data a tool
may read is decided in :mod:`.policy`.

:class:`ToolRuntime` is the base of :class:`~src.agent.PandaDocTrialistAgent`; the tool
modules take it as their first argument, so a tool body reads as plain steps.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from livekit.agents.llm import ToolError

from src import metrics, report
from src.error_recovery import CircuitState, ErrorRecoveryMixin
from src.latency import REQUEST_LIMIT, AdaptiveTimeout, adaptive_timeout
from src.outbox import Outbox
from src.phrases import FILLER, WRITE_NOT_CONFIRMED
from src.redaction import get_logger
from src.registry import (
    WRITE_WITHOUT_LOOKUP,
    OperationKind,
    OutcomeUnknown,
    declaration_of,
)
from src.services.wiring import TrialistServices
from src.settings import Settings
from src.tools.turn import CURRENT_DEADLINE, Turn, TurnBook
from src.tools.unknown import UnknownWrites, write_key

__all__ = ["MIN_ATTEMPT_S", "ToolRuntime", "zone"]

logger = get_logger("pandadoc.agent")

T = TypeVar("T")
MIN_ATTEMPT_S = 0.5  # no request starts with less time than this left in the tool budget
# Of FILLER_DELAY, the share a tool works before LiveKit's filler scheduler is started.
LAZY_FILLER_SHARE = 0.5


class ToolRuntime(ErrorRecoveryMixin):
    """Breakers, retries and deadlines for tool bodies. The subclass sets
    ``services``, ``settings``, ``outbox`` and ``now`` in its ``__init__``."""

    services: TrialistServices
    settings: Settings
    outbox: Outbox
    now: Callable[[], datetime]
    unknown_writes: UnknownWrites  # with the agent's store

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
            r = self.settings.resilience
            self._turn_book = TurnBook(
                lambda: self.retry_clock(),
                # A sibling tool's scheduler may fire with the filler's: only a later fire
                # (its interval and dwell on) says the progress sentence.
                progress_after=max(0.0, r.progress_delay - r.filler_delay) / 2,
            )
        return self._turn_book

    async def run_tool(
        self,
        context: Any,
        tool_name: str,
        body: Callable[[], Awaitable[str]],
        *,
        filler: str | None = None,
    ) -> str:
        """Every tool: error recovery (change set, natural phrase), a deadline inside the
        turn's budget, and the turn's one filler sentence (default: the tool's declared
        one) if the caller would otherwise wait in silence. A tool declared with a
        ``fallback`` whose vendors' circuits are all open answers it first."""
        declaration = declaration_of(tool_name)
        if filler is None:
            filler = declaration.filler if declaration is not None else FILLER
        if declaration is not None and declaration.fallback is not None:
            await self.refresh_open_circuits(declaration.vendors())
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

    async def refresh_open_circuits(self, names: Iterable[str] | None = None) -> None:
        """Each open circuit (of ``names``, default all) takes the fleet's view, cached
        for the breaker's ``share_ttl``: another process's answer may have closed it
        since (issue #24: a stale local "open" refused a lookup the vendor was
        answering, and told the model a capability was down). Closed ones are not read."""
        for name in self.circuit_breakers if names is None else names:
            breaker = self.circuit_breakers.get(name)
            if breaker is not None and breaker.state is not CircuitState.CLOSED:
                await breaker.refresh()

    def refused_by_open_circuits(self, tool_name: str) -> str | None:
        """The declared fallback sentence of ``tool_name`` when every configured vendor it
        uses is refused by an open circuit (not yet due for its probe), else ``None``.
        Asks the breakers only: nothing is called, copied or logged."""
        declaration = declaration_of(tool_name)
        if declaration is None or declaration.fallback is None:
            return None
        names, fallback = declaration.vendors(), declaration.fallback
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
        """Whether a vendor client's cache holds the verified caller's answer (a client
        with ``cached_usage``): then the tool body answers from it (no request) even
        while the vendor's circuit is open."""
        declaration = declaration_of(tool_name)
        identity = getattr(getattr(context, "userdata", None), "identity", None)
        if declaration is None or identity is None or not identity.verified:
            return False
        for name in declaration.vendors():
            cached = getattr(getattr(self.services, name, None), "cached_usage", None)
            if cached is not None and identity.email and await cached(identity.email) is not None:
                return True
        return False

    async def protected(
        self,
        service: str,
        func: Callable[[], Awaitable[T]],
        fallback: str,
        *,
        kind: OperationKind,
        deadline_at: float | None = None,
        once_for: tuple[str, str] | None = None,
    ) -> T:
        """A service call through breaker + its ``kind``'s retry rule inside the tool
        deadline (:mod:`src.registry.kinds`); a fallback becomes a ``ToolError`` carrying
        the spoken sentence. The vendor's answers (``NotFound``, ``InvalidRequest``) are
        raised to the tool body; a write with a lookup whose outcome is unknown raises
        :class:`~src.registry.OutcomeUnknown` (the body reconciles it).

        A write without a lookup names ``once_for=(operation, person)``: when its
        outcome is unknown it is remembered (the resilience store), never sent again
        for that person, and the caller hears :data:`~src.phrases.WRITE_NOT_CONFIRMED`
        now and on any later request."""
        if kind is WRITE_WITHOUT_LOOKUP:
            if once_for is None:
                raise ValueError("a write without a lookup needs once_for=(operation, person)")
            key = write_key(*once_for)
            if await self.unknown_writes.seen(key):
                logger.info("%s write not repeated: an earlier outcome is unknown", service)
                raise ToolError(WRITE_NOT_CONFIRMED)
            try:
                return await self._protected(service, func, fallback, kind, deadline_at)
            except OutcomeUnknown:
                await self.unknown_writes.remember(key)
                raise ToolError(WRITE_NOT_CONFIRMED) from None
            except asyncio.CancelledError:  # cut off in flight: it may have applied
                self.unknown_writes.remember_soon(key)
                raise
        return await self._protected(service, func, fallback, kind, deadline_at)

    async def _protected(
        self,
        service: str,
        func: Callable[[], Awaitable[T]],
        fallback: str,
        kind: OperationKind,
        deadline_at: float | None,
    ) -> T:
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
        # only if that timeout fits in what is left (what may be retried: the kind).
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
                kind=kind,
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
        spoken its filler, and then, still waiting about ``PROGRESS_DELAY`` seconds in,
        one progress sentence for the turn (:class:`~src.tools.turn.FillerSource`).

        LiveKit's scheduler (``RunContext.with_filler``: two tasks, session listeners, an
        idle wait) starts only once the work has taken half of ``FILLER_DELAY``
        (:data:`LAZY_FILLER_SHARE`), then dwells for the other half; work that ends
        sooner (a cached answer, a fast vendor, an open circuit) never pays for it. While
        the agent is speaking at that moment the full dwell applies, as LiveKit's own."""
        with_filler = getattr(context, "with_filler", None)
        if with_filler is None:
            yield
            return
        r = self.settings.resilience
        source: Any = sentence if turn is None else turn.claim_filler(sentence)
        options: dict[str, Any] = {}
        if turn is not None:
            # LiveKit's scheduler: a dwell of FILLER_DELAY idle seconds before each fire,
            # and ``interval`` seconds after one, so the second comes about PROGRESS_DELAY in.
            interval = max(0.0, r.progress_delay - 2 * r.filler_delay) if r.progress_delay else None
            options = {"interval": interval, "max_steps": 2 if interval is not None else None}
        head = r.filler_delay * LAZY_FILLER_SHARE
        scheduler = contextlib.AsyncExitStack()
        entering: asyncio.Future[Any] | None = None

        def start() -> None:
            nonlocal entering
            speaking = getattr(getattr(context, "session", None), "agent_state", None) == "speaking"
            delay = r.filler_delay if speaking else r.filler_delay - head
            entering = asyncio.ensure_future(
                scheduler.enter_async_context(with_filler(source, delay=delay, **options))
            )

        handle = asyncio.get_running_loop().call_later(head, start)
        try:
            yield
        finally:
            handle.cancel()
            if turn is not None:
                source.answered()
            if entering is not None and not entering.done():
                entering.cancel()  # started a moment ago but not yet run: it never will
            elif entering is not None:
                if not entering.cancelled() and entering.exception() is not None:
                    logger.warning("Filler scheduler could not start")
                await scheduler.aclose()


def zone(name: str) -> ZoneInfo:
    """The caller's time zone, UTC when the name is not a known IANA zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long
        return ZoneInfo("UTC")
