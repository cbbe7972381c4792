"""CRM writes that must be neither lost nor doubled.

Neither CRM offers an idempotency key, so a write is sent once and never blindly
retried. One that certainly did not apply (circuit open, refused connection, rate
limited, no time left to send it whole) waits in the :class:`Outbox` and is sent again
later; one whose outcome is unknown (a timeout or reset after the request left) is not
re-sent blindly.

With a resilience store (:mod:`src.store`) the outbox is durable: a waiting write is
kept in the store under its unique ``write_id`` and survives the job process and a
worker restart; any later conversation (when the CRM answers again), every job's
shutdown and the operator command ``python -m src.outbox list|drain`` send it, each
claiming it with a lease first so two drains never send the same write at once.
Without a store, waiting writes live in :attr:`Outbox.pending` for this job only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from src import metrics
from src.errors import CircuitOpenError, InvalidRequest, NotFound
from src.redaction import get_logger
from src.services.http import write_outcome_is_ambiguous
from src.services.wiring import TrialistServices
from src.store import StoreError, StoreGuard

__all__ = ["Outbox", "PendingWrite", "WriteOutcome"]

logger = get_logger("pandadoc.agent")

WriteOutcome = Literal["saved", "queued", "rejected", "checking", "unknown"]
HUBSPOT_SEARCH_SETTLE_S = 30.0  # HubSpot search may not show a note younger than this
REF_MARK = "(ref {})"


def with_ref(write: PendingWrite) -> tuple[str, str]:
    """(subject, body) as sent: the subject ends with the write reference, so the CRM
    record can be found by it (Salesforce filters Task on Subject; HubSpot matches it as
    a word of the note body), cut so the reference always survives the 255-char limit."""
    mark = REF_MARK.format(write.write_id)
    return f"{write.subject[: 254 - len(mark)].rstrip()} {mark}", write.body


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
    write_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    verify: bool = False  # it may have applied: look for it in the CRM before resending
    sent_at: float = 0.0  # wall clock of the last attempt

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, payload: str) -> PendingWrite:
        """A stored write; ``ValueError`` when the payload is not one."""
        raw = json.loads(payload)
        if not isinstance(raw, dict):
            raise ValueError("not a write")
        names = {f.name for f in dataclasses.fields(cls)}
        write = cls(**{k: v for k, v in raw.items() if k in names})
        if not all(isinstance(v, str) for v in (write.source, write.record_id, write.body)):
            raise ValueError("not a write")
        return write


CLAIM_LEASE_S = 120.0  # a drain holds a claimed write this long (its process may die)
# One write per claim: a batch shares one lease, and a slow CRM could outlast it while the
# batch's last writes wait, letting another drain claim and send them too.
CLAIM_BATCH = 1


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
        store: keeps waiting writes durably and shares them with the fleet (None: this
            job's memory only).
    """

    def __init__(
        self,
        services: TrialistServices,
        call: ProtectedCall,
        *,
        clock: Callable[[], float],
        service_timeout: float,
        store: StoreGuard | None = None,
    ) -> None:
        self.services = services
        self.store = store
        self.hubspot_search_settle = HUBSPOT_SEARCH_SETTLE_S
        self._wall: Callable[[], float] = time.time
        self.pending: list[PendingWrite] = []  # this job's waiting writes (store: unsaved)
        self._call = call
        self._clock = clock
        self._service_timeout = service_timeout
        self._flush_lock = asyncio.Lock()
        self._background: set[asyncio.Task[int]] = set()

    async def send(self, write: PendingWrite, deadline_at: float | None = None) -> WriteOutcome:
        """Send one CRM write once, within ``deadline_at`` (retry clock) when given.

        Returns ``saved``; ``queued`` when it certainly did not apply and may be sent
        again later (not even sent when the budget left is shorter than one attempt);
        ``rejected`` when the CRM refused it for good; ``checking`` when it may have
        applied (a timeout or reset after sending): the write is then marked to be
        looked for in the CRM by its ``write_id`` before it is ever sent again.

        A write marked that way is first looked for: found, it is ``saved`` without
        sending; certainly absent, it is sent once; not checkable now, ``checking``.
        """
        deadline = None
        if deadline_at is not None:
            deadline = deadline_at - self._clock()
            if deadline < self._service_timeout:
                return "queued"  # a write cut short would leave its outcome unknown
        if write.verify:
            found = await self._look_for(write, deadline)
            if found is None:
                return "checking"
            if found:
                logger.info(
                    "CRM write %s found in the CRM after an unknown outcome; not re-sent",
                    write.write_id[:8],
                    extra={"service": write.source},
                )
                return "saved"
            write.verify = False  # certainly absent: send it, once
            if deadline_at is not None:
                deadline = deadline_at - self._clock()
                if deadline < self._service_timeout:
                    return "queued"
        write.attempts += 1
        write.sent_at = self._wall()

        async def send() -> str:
            subject, body = with_ref(write)
            if write.source == "salesforce" and self.services.salesforce is not None:
                return await self.services.salesforce.create_task(
                    write.record_id, subject, body, owner_id=write.owner_id
                )
            if write.source == "hubspot" and self.services.hubspot is not None:
                return await self.services.hubspot.create_note(
                    write.record_id, f"{subject}\n\n{body}"
                )
            raise CircuitOpenError(write.source)  # not configured: nothing was sent

        try:
            result = await self._call(
                write.source, send, "", max_retries=0, deadline=deadline, reraise=(Exception,)
            )
        except asyncio.CancelledError:
            write.verify = True  # it may have applied: look before sending again
            logger.error("CRM write cancelled in flight; it will be looked for before a resend")
            raise
        except (InvalidRequest, NotFound) as exc:
            logger.error("CRM write rejected (%s); not saved", type(exc).__name__)
            return "rejected"
        except Exception as exc:
            if not write_outcome_is_ambiguous(exc):
                logger.warning("CRM write not applied (%s); queued", type(exc).__name__)
                return "queued"
            write.verify = True
            logger.warning(
                "CRM write outcome unknown after %s; it will be looked for in the CRM by "
                "its write id before it is sent again",
                type(exc).__name__,
                extra={"service": write.source, "write_id": write.write_id[:8]},
            )
            return "checking"
        if result == "":  # the circuit was open: nothing was sent
            return "queued"
        return "saved"

    async def _look_for(self, write: PendingWrite, deadline: float | None) -> bool | None:
        """Whether the write is in the CRM: True/False, or None when that cannot be
        known now (CRM down, or HubSpot's search index may not show it yet)."""
        ref = write.write_id

        async def search() -> bool:
            if write.source == "salesforce" and self.services.salesforce is not None:
                return await self.services.salesforce.task_exists(write.record_id, ref)
            if write.source == "hubspot" and self.services.hubspot is not None:
                return await self.services.hubspot.note_exists(ref)
            raise CircuitOpenError(write.source)

        try:
            found = await self._call(
                write.source, search, "", max_retries=1, deadline=deadline, reraise=(Exception,)
            )
        except Exception as exc:
            logger.warning("Could not look for a CRM write yet (%s)", type(exc).__name__)
            return None
        if found == "":
            return None  # circuit open
        recent = self._wall() - write.sent_at < self.hubspot_search_settle
        if not found and write.source == "hubspot" and recent:
            return None  # too recent for HubSpot's search index to be trusted
        return bool(found)

    async def queue(self, write: PendingWrite) -> None:
        """Keep a write that certainly did not apply, durably when there is a store."""
        if self.store is not None:
            try:
                await self._put(write)
            except StoreError:
                logger.warning("Outbox store unavailable; the write waits in this job only")
            else:
                return
        self.pending.append(write)

    async def _put(self, write: PendingWrite) -> None:
        await self._store_op(lambda st: st.outbox_put(write.write_id, write.to_json()))

    async def flush(self) -> int:
        """Send queued CRM writes again; returns how many are still pending.

        Runs in the background after a CRM lookup succeeds, and at the end of the
        session. One flush at a time per job; each write leaves the queue (or is claimed
        in the store) before it is sent and comes back only if it certainly did not
        apply, so no write is sent twice or lost to a concurrent flush, another job's
        drain or a cancellation.
        """
        async with self._flush_lock:
            await self._flush_local()
            if self.store is None:
                return len(self.pending)
            await self._save_local()
            return len(self.pending) + await self._drain_store()

    async def _flush_local(self) -> None:
        batch, self.pending = self.pending, []
        requeue: list[PendingWrite] = []
        try:
            while batch:
                write = batch.pop(0)
                try:
                    outcome = await self.send(write)
                except BaseException:
                    if write.verify:  # cancelled in flight: keep it, to look for it later
                        requeue.append(write)
                    raise
                if outcome in ("queued", "checking"):
                    requeue.append(write)
        finally:
            # Unsent ones (after a cancellation) and not-applied ones go back first.
            self.pending[:0] = requeue + batch
        if self.pending:
            logger.warning("%d CRM write(s) still pending", len(self.pending))

    async def _save_local(self) -> None:
        """Writes kept in memory while the store was down go to the store now."""
        while self.pending:
            try:
                await self._put(self.pending[0])
            except StoreError:
                return
            self.pending.pop(0)

    async def _drain_store(self) -> int:
        """Claim waiting writes from the store and send them; how many still wait."""
        sent: set[str] = set()
        while True:
            try:
                items = await self._store_op(lambda st: st.outbox_claim(CLAIM_BATCH, CLAIM_LEASE_S))
            except StoreError:
                return await self.depth()
            again = [i for i in items if i.id in sent]  # not twice in one drain
            for item in again:
                await self._release(item.id)
            items = [i for i in items if i.id not in sent]
            if not items:
                return await self.depth()
            for item in items:
                sent.add(item.id)
                await self._deliver_claimed(item.id, item.payload)

    async def _deliver_claimed(self, item_id: str, payload: str) -> None:
        try:
            write = PendingWrite.from_json(payload)
        except (ValueError, TypeError):
            logger.error("Outbox item %s is not a write; removed", item_id[:8])
            await self._quiet(lambda st: st.outbox_done(item_id))
            return
        if not write.verify:
            # Written ahead: the stored copy says "it may have applied" before anything is
            # sent, so whoever claims it next (our done or release lost to a store blip,
            # this process killed mid-send) looks it up in the CRM, never sends it blind.
            ahead = dataclasses.replace(write, verify=True, sent_at=self._wall())
            try:
                await self._store_op(lambda st: st.outbox_mark(item_id, ahead.to_json()))
            except StoreError:
                logger.warning("Outbox store update failed; the write waits for the next drain")
                await self._release(item_id)
                return
        try:
            outcome = await self.send(write)
        except BaseException:
            await self._release(item_id, write.to_json())
            raise
        if outcome in ("queued", "checking"):
            await self._release(item_id, write.to_json())
        else:
            await self._quiet(lambda st: st.outbox_done(item_id))

    async def _release(self, item_id: str, payload: str | None = None) -> None:
        await self._quiet(lambda st: st.outbox_release(item_id, payload))

    async def depth(self) -> int:
        """Writes waiting (this job's unsaved ones plus the store's); also the gauge."""
        count = len(self.pending)
        created: list[float] = []
        if self.store is not None:
            with contextlib.suppress(StoreError):
                items = await self._store_op(lambda st: st.outbox_list())
                count += len(items)
                created = [item.created for item in items]
        metrics.outbox_seen(count, created, self._wall())
        return count

    async def _store_op(self, op: Callable[[Any], Awaitable[Any]]) -> Any:
        guard = self.store
        assert guard is not None
        return await guard.run(lambda: op(guard.store), "outbox")

    async def _quiet(self, op: Callable[[Any], Awaitable[Any]]) -> None:
        """A store update whose failure only delays things (a claim lease expires)."""
        try:
            await self._store_op(op)
        except StoreError:
            logger.warning("Outbox store update failed; the claim expires by itself")

    def flush_soon(self) -> None:
        """Flush queued writes without making the caller wait for them."""
        if not self.pending and self.store is None:
            return
        task = asyncio.create_task(self.flush())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


if __name__ == "__main__":  # python -m src.outbox list|drain
    from src.outbox_cli import main

    raise SystemExit(main())
