"""CRM writes that must be neither lost nor doubled.

Neither CRM offers an idempotency key, so a write is sent once and never blindly
retried. One that certainly did not apply (circuit open, refused connection, rate
limited, no time left to send it whole) waits in the :class:`Outbox` and is sent again
later; one whose outcome is unknown (a timeout or reset after the request left) is not
re-sent, and operators get an error line to check by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from src.errors import CircuitOpenError, InvalidRequest, NotFound
from src.redaction import get_logger
from src.services.http import write_outcome_is_ambiguous
from src.services.wiring import TrialistServices

__all__ = ["Outbox", "PendingWrite", "WriteOutcome"]

logger = get_logger("pandadoc.agent")

WriteOutcome = Literal["saved", "queued", "rejected", "unknown"]


@dataclass
class PendingWrite:
    """A CRM write that could not be sent (circuit open, rate limited, refused): kept
    outside the session state so a tool's rollback cannot drop it, and retried later."""

    source: str
    record_id: str
    subject: str
    body: str
    attempts: int = 0
    owner_id: str | None = None  # Salesforce: the record owner the Task is assigned to


class ProtectedCall(Protocol):
    """:meth:`ErrorRecoveryMixin.call_with_retry_and_circuit_breaker`'s shape."""

    def __call__(
        self,
        service_name: str,
        func: Callable[[], Awaitable[Any]],
        fallback_response: str,
        max_retries: int = 2,
        *,
        deadline: float | None = None,
        reraise: tuple[type[BaseException], ...] = (),
    ) -> Awaitable[Any]: ...


class Outbox:
    """Sends CRM writes through the breaker and keeps those that did not apply.

    Args:
        services: the vendor clients (Salesforce tasks, HubSpot notes).
        call: the breaker + retry call to send through (the agent's).
        clock: the retry clock that ``deadline_at`` values are read on.
        service_timeout: one attempt's timeout; a write is not started with less left.
    """

    def __init__(
        self,
        services: TrialistServices,
        call: ProtectedCall,
        *,
        clock: Callable[[], float],
        service_timeout: float,
    ) -> None:
        self.services = services
        self.pending: list[PendingWrite] = []
        self._call = call
        self._clock = clock
        self._service_timeout = service_timeout
        self._flush_lock = asyncio.Lock()
        self._background: set[asyncio.Task[int]] = set()

    async def send(self, write: PendingWrite, deadline_at: float | None = None) -> WriteOutcome:
        """Send one CRM write once, within ``deadline_at`` (retry clock) when given.

        Returns ``saved``; ``queued`` when it certainly did not apply and may be sent
        again later (not even sent when the budget left is shorter than one attempt);
        ``rejected`` when the CRM refused it for good; ``unknown`` when it may have
        applied (operators get an error log line to check by hand).
        """
        deadline = None
        if deadline_at is not None:
            deadline = deadline_at - self._clock()
            if deadline < self._service_timeout:
                return "queued"  # a write cut short would leave its outcome unknown
        write.attempts += 1

        async def send() -> str:
            if write.source == "salesforce" and self.services.salesforce is not None:
                return await self.services.salesforce.create_task(
                    write.record_id, write.subject, write.body, owner_id=write.owner_id
                )
            if write.source == "hubspot" and self.services.hubspot is not None:
                return await self.services.hubspot.create_note(
                    write.record_id, f"{write.subject}\n\n{write.body}"
                )
            raise CircuitOpenError(write.source)  # not configured: nothing was sent

        try:
            result = await self._call(
                write.source, send, "", max_retries=0, deadline=deadline, reraise=(Exception,)
            )
        except asyncio.CancelledError:
            logger.error("CRM write cancelled in flight; its outcome is unknown")
            raise
        except (InvalidRequest, NotFound) as exc:
            logger.error("CRM write rejected (%s); not saved", type(exc).__name__)
            return "rejected"
        except Exception as exc:
            if not write_outcome_is_ambiguous(exc):
                logger.warning("CRM write not applied (%s); queued", type(exc).__name__)
                return "queued"
            logger.error(
                "CRM write outcome unknown after %s; not re-sent to avoid a duplicate",
                type(exc).__name__,
                extra={"service": write.source},
            )
            return "unknown"
        if result == "":  # the circuit was open: nothing was sent
            return "queued"
        return "saved"

    async def flush(self) -> int:
        """Send queued CRM writes again; returns how many are still pending.

        Runs in the background after a CRM lookup succeeds, and at the end of the
        session. One flush at a time; each write leaves the queue before it is sent and
        comes back only if it certainly did not apply, so no write is sent twice or lost
        to a concurrent flush or a cancellation.
        """
        async with self._flush_lock:
            batch, self.pending = self.pending, []
            requeue: list[PendingWrite] = []
            try:
                while batch:
                    write = batch.pop(0)
                    outcome = await self.send(write)
                    if outcome == "queued":
                        requeue.append(write)
            finally:
                # Unsent ones (after a cancellation) and not-applied ones go back first.
                self.pending[:0] = requeue + batch
            if self.pending:
                logger.warning("%d CRM write(s) still pending", len(self.pending))
            return len(self.pending)

    def flush_soon(self) -> None:
        """Flush queued writes without making the caller wait for them."""
        if not self.pending:
            return
        task = asyncio.create_task(self.flush())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
