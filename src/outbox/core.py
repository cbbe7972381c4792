"""The outbox's core: CRM writes that must be neither lost nor doubled.

Neither CRM offers an idempotency key, so a write is sent once and never blindly
retried. One that certainly did not apply (circuit open, refused connection, rate
limited, no time left to send it whole) waits in the :class:`Outbox` and is sent again
later; one whose outcome is unknown (a timeout or reset after the request left, a
cancellation mid-send) is looked up in the CRM by its write id before it is ever sent
again.

Every write is kept before it is sent, and is only ever sent through a claim (issue
#23): with a resilience store (:mod:`src.store`) the write is stored already claimed and
marked "may have applied" before the request leaves, so whoever finds it next (this job
killed mid-send, a removal lost to a store blip) looks it up instead of sending it blind;
without a store, or with the store down, the job's memory (:attr:`Outbox.pending`) plays
the same part. A write that did not go is released with a backoff (its next attempt
time), is not claimed again in the same drain, and after
:attr:`~src.outbox.OutboxPolicy.max_attempts` attempts or ``max_age_s`` of waiting is
dead-lettered: kept and listed by ``python -m src.outbox list``, never sent again until
an operator's ``retry`` (or given up by ``drop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from src import metrics
from src.errors import CircuitOpenError, InvalidRequest, NotFound
from src.redaction import get_logger
from src.registry.kinds import READ, WRITE_WITH_LOOKUP, OperationKind, OutcomeUnknown
from src.services.wiring import TrialistServices
from src.store import StoreError, StoreGuard

from .write import OutboxPolicy, PendingWrite, WriteOutcome, with_ref

__all__ = ["CLAIM_BATCH", "CLAIM_LEASE_S", "Outbox", "ProtectedCall"]

logger = get_logger("pandadoc.agent")

HUBSPOT_SEARCH_SETTLE_S = 30.0  # HubSpot search may not show a note younger than this
CLAIM_LEASE_S = 120.0  # a drain holds a claimed write this long (its process may die)
# One write per claim: a batch shares one lease, and a slow CRM could outlast it while the
# batch's last writes wait, letting another drain claim and send them too.
CLAIM_BATCH = 1
UNSENT = ("queued", "checking")


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
        kind: OperationKind | None = None,
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
        policy: backoff and dead-letter limits (:class:`OutboxPolicy`).
    """

    def __init__(
        self,
        services: TrialistServices,
        call: ProtectedCall,
        *,
        clock: Callable[[], float],
        service_timeout: float,
        store: StoreGuard | None = None,
        policy: OutboxPolicy | None = None,
    ) -> None:
        self.services = services
        self.store = store
        self.policy = policy or OutboxPolicy()
        self.hubspot_search_settle = HUBSPOT_SEARCH_SETTLE_S
        self._wall: Callable[[], float] = time.time
        self.pending: list[PendingWrite] = []  # this job's waiting writes (store: unsaved)
        self.dead: list[PendingWrite] = []  # dead letters kept in this job's memory only
        self._kept: set[str] = set()  # write ids already kept in the store by this outbox
        self._call = call
        self._clock = clock
        self._service_timeout = service_timeout
        self._flush_lock = asyncio.Lock()
        # writes whose store put failed (it may have committed all the same)
        self._maybe_stored: set[str] = set()
        self._background: set[asyncio.Task[int]] = set()

    # -- the conversation's write ---------------------------------------------------------
    async def send(self, write: PendingWrite, deadline_at: float | None = None) -> WriteOutcome:
        """Keep one CRM write, then send it once through a claim, within ``deadline_at``
        (retry clock) when given.

        Returns ``saved``; ``queued`` when it certainly did not apply and waits to be sent
        again later (not even sent when the budget left is shorter than one attempt);
        ``rejected`` when the CRM refused it for good; ``checking`` when it may have
        applied (a timeout or reset after sending): it is then looked for in the CRM by
        its ``write_id`` before it is ever sent again. A ``queued`` or ``checking`` write
        is already kept (:meth:`queue` is then a no-op).

        A write marked that way is first looked for: found, it is ``saved`` without
        sending; certainly absent, it is sent once; not checkable now, ``checking``.
        """
        if not write.created_at:
            write.created_at = self._wall()
        if deadline_at is not None and deadline_at - self._clock() < self._service_timeout:
            await self.queue(write)  # a write cut short would leave its outcome unknown
            return "queued"
        if self.store is not None:
            ahead = write if write.verify else write.replace(verify=True, sent_at=self._wall())
            payload = ahead.to_json()
            try:
                held = await self._store_op(
                    lambda st: st.outbox_put_claimed(write.write_id, payload, CLAIM_LEASE_S)
                )
            except StoreError:
                logger.warning("Outbox store unavailable; the write is kept in this job only")
                self._maybe_stored.add(write.write_id)
            else:
                self._kept.add(write.write_id)
                if held is None:
                    return "queued"  # another drain holds it, or an operator dead-lettered it
                if held != payload:  # stored before (a put that timed out, yet committed)
                    return await self._deliver_claimed(
                        write.write_id, held, write.created_at, deadline_at, into=write
                    )
                return await self._deliver(write.write_id, write, write.created_at, deadline_at)
        self.pending.append(write)  # kept in this job before it is sent
        return await self._take_and_send(write, deadline_at)

    async def _attempt(self, write: PendingWrite, deadline_at: float | None) -> WriteOutcome:
        """Send a claimed write once (looked up first when it may have applied)."""
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

        tried = False  # whether the call got past the breaker to the send itself

        async def send() -> str:
            nonlocal tried
            tried = True
            subject, body = with_ref(write)
            if write.source == "salesforce" and self.services.salesforce is not None:
                return await self.services.salesforce.create_task(
                    write.record_id or None, subject, body, owner_id=write.owner_id
                )
            if write.source == "hubspot" and self.services.hubspot is not None:
                return await self.services.hubspot.create_note(
                    write.record_id or None, f"{subject}\n\n{body}"
                )
            raise CircuitOpenError(write.source)  # not configured: nothing was sent

        try:
            # Sent once per flush (the outbox is its retry); its kind ends an unknown
            # outcome in OutcomeUnknown, and a certain failure in the fallback "".
            result = await self._call(
                write.source, send, "", max_retries=0, deadline=deadline, kind=WRITE_WITH_LOOKUP
            )
        except asyncio.CancelledError:
            write.verify = True  # it may have applied: look before sending again
            logger.error("CRM write cancelled in flight; it will be looked for before a resend")
            raise
        except (InvalidRequest, NotFound) as exc:
            logger.error("CRM write rejected (%s); not saved", type(exc).__name__)
            return "rejected"
        except OutcomeUnknown as exc:
            write.verify = True
            logger.warning(
                "CRM write outcome unknown after %s; it will be looked for in the CRM by "
                "its write id before it is sent again",
                type(exc.__cause__ or exc).__name__,
                extra={"service": write.source, "write_id": write.write_id[:8]},
            )
            return "checking"
        if result == "":
            if not tried:  # the circuit was open: nothing was sent, not an attempt
                write.attempts -= 1
            else:  # certainly not applied (or its CRM not configured here)
                logger.warning("CRM write not applied; queued")
            return "queued"
        return "saved"

    async def _look_for(self, write: PendingWrite, deadline: float | None) -> bool | None:
        """Whether the write is in the CRM: True/False, or None when that cannot be
        known now (CRM down, or HubSpot's search index may not show it yet)."""
        ref = write.write_id

        async def search() -> bool:
            if write.source == "salesforce" and self.services.salesforce is not None:
                return await self.services.salesforce.task_exists(write.record_id or None, ref)
            if write.source == "hubspot" and self.services.hubspot is not None:
                return await self.services.hubspot.note_exists(ref)
            raise CircuitOpenError(write.source)

        try:
            found = await self._call(
                write.source, search, "", max_retries=1, deadline=deadline, kind=READ
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
        """Keep a write that certainly did not apply, durably when there is a store (a
        no-op for a write :meth:`send` already kept)."""
        if write.write_id in self._kept or any(w is write for w in self.pending):
            return
        if not write.created_at:
            write.created_at = self._wall()
        if self.store is not None:
            # Stored marked "look it up first": a put that commits while the guard gives
            # up leaves this job a copy it may send too, so the stored one never goes
            # blind (issue #24)
            stored = write if write.verify else write.replace(verify=True, sent_at=self._wall())
            try:
                await self._store_op(lambda st: st.outbox_put(write.write_id, stored.to_json()))
            except StoreError:
                logger.warning("Outbox store unavailable; the write waits in this job only")
                self._maybe_stored.add(write.write_id)
            else:
                self._kept.add(write.write_id)
                return
        self.pending.append(write)

    # -- the job's memory (no store, or the store down) -----------------------------------
    async def _take_and_send(
        self, write: PendingWrite, deadline_at: float | None = None
    ) -> WriteOutcome:
        """Send a write kept in :attr:`pending`: taking it out is its claim."""
        at = next(i for i, w in enumerate(self.pending) if w is write)
        del self.pending[at]
        if write.write_id in self._maybe_stored:
            # its put may have committed while the guard gave up: a drain may have sent
            # that copy, so this one is looked for in the CRM first, every time (issue #24)
            write.verify = True
        try:
            outcome = await self._attempt(write, deadline_at)
        except BaseException:
            self.pending.insert(at, write)  # cancelled mid-send: marked to be looked up
            raise
        if outcome in UNSENT:
            reason = self.policy.dead_reason(write.attempts, self._wall() - write.created_at)
            if reason:
                self.dead.append(write)
                self._dead_lettered(write, reason, where="this job's memory")
            else:
                write.next_at = self._wall() + self.policy.backoff(write.attempts)
                self.pending.insert(at, write)
        elif self.store is not None:
            # A store that timed out may still have kept a copy: it is no longer needed
            # (and, marked as "may have applied", it would only be looked up).
            with contextlib.suppress(StoreError):
                await self._store_op(lambda st: st.outbox_done(write.write_id))
        return outcome

    async def flush(self, *, due_only: bool = False) -> int:
        """Send waiting CRM writes again; returns how many still wait (dead letters not
        counted).

        Runs in the background after a CRM lookup succeeds (``due_only``: writes whose
        backoff is over), and at the end of the session (every write in this job's memory:
        its last chance). One flush at a time per job. With a store, writes kept in memory
        go to the store first, and every write is sent through a store claim (written
        ahead as "may have applied"); only with the store down are writes sent from
        memory, each taken out of :attr:`pending` as its claim.
        """
        async with self._flush_lock:
            if self.store is not None and await self._save_local():
                return await self._drain_store()
            await self._flush_local(due_only=due_only)
            if self.store is None:
                return len(self.pending)
            return await self._drain_store()

    async def _flush_local(self, *, due_only: bool) -> None:
        now = self._wall()
        for write in [w for w in self.pending if not due_only or w.next_at <= now]:
            if any(w is write for w in self.pending):
                await self._take_and_send(write)
        if self.pending:
            logger.warning("%d CRM write(s) still pending", len(self.pending))

    async def _save_local(self) -> bool:
        """Writes kept in memory while the store was down go to the store now (a copy
        the store already has wins: it may say "look it up first"). ``True`` when none
        is left in memory. Each is marked "may have applied" first, here and in the
        store (issue #24): a put that committed while the guard gave up leaves two
        copies, one a drain may send, the other this job's, so either is looked up in
        the CRM before it is sent."""
        while self.pending:
            write = self.pending[0]
            if not write.verify:
                write = self.pending[0] = write.replace(verify=True, sent_at=self._wall())
            item_id, payload = write.write_id, write.to_json()
            try:
                await self._store_op(
                    lambda st, i=item_id, p=payload: st.outbox_put(i, p)  # type: ignore[misc]
                )
            except StoreError:
                return False
            self._kept.add(write.write_id)
            self.pending.pop(0)
        return True

    # -- the store ------------------------------------------------------------------------
    async def _drain_store(self) -> int:
        """Claim due writes from the store and send them, each at most once per drain (a
        released write is skipped, so one that cannot go never blocks those behind it);
        how many still wait."""
        tried: set[str] = set()
        while True:
            try:
                items = await self._store_op(
                    lambda st: st.outbox_claim(CLAIM_BATCH, CLAIM_LEASE_S, tuple(tried))
                )
            except StoreError:
                return await self.depth()
            if not items:
                return await self.depth()
            for item in items:
                tried.add(item.id)
                await self._deliver_claimed(item.id, item.payload, item.created)

    async def _deliver_claimed(
        self,
        item_id: str,
        payload: str,
        created: float,
        deadline_at: float | None = None,
        *,
        into: PendingWrite | None = None,
    ) -> WriteOutcome:
        try:
            write = PendingWrite.from_json(payload)
        except (ValueError, TypeError):
            logger.error("Outbox item %s is not a write; removed", item_id[:8])
            await self._quiet(lambda st: st.outbox_done(item_id))
            return "rejected"
        if not write.verify:
            # Written ahead: the stored copy says "it may have applied" before anything is
            # sent, so whoever claims it next (our done or release lost to a store blip,
            # this process killed mid-send) looks it up in the CRM, never sends it blind.
            ahead = write.replace(verify=True, sent_at=self._wall())
            try:
                await self._store_op(lambda st: st.outbox_mark(item_id, ahead.to_json()))
            except StoreError:
                logger.warning("Outbox store update failed; the write waits for the next drain")
                await self._release(item_id)
                return "queued"
        outcome = await self._deliver(item_id, write, write.created_at or created, deadline_at)
        if into is not None:
            into.verify, into.attempts, into.sent_at = write.verify, write.attempts, write.sent_at
        return outcome

    async def _deliver(
        self, item_id: str, write: PendingWrite, created: float, deadline_at: float | None
    ) -> WriteOutcome:
        """Send a write this outbox holds the store's claim on (its copy marked ahead),
        then settle it: removed, released with a backoff, or dead-lettered."""
        try:
            outcome = await self._attempt(write, deadline_at)
        except BaseException:
            await self._release(item_id, write.to_json())  # cancelled: to be looked up
            raise
        if outcome not in UNSENT:
            await self._quiet(lambda st: st.outbox_done(item_id))
            return outcome
        reason = self.policy.dead_reason(write.attempts, self._wall() - created)
        if reason:
            try:
                await self._store_op(lambda st: st.outbox_bury(item_id, write.to_json(), reason))
            except StoreError:
                await self._release(item_id, write.to_json())
            else:
                self._dead_lettered(write, reason, where="the store")
            return outcome
        delay = self.policy.backoff(write.attempts)
        await self._release(item_id, write.to_json(), delay)
        return outcome

    def _dead_lettered(self, write: PendingWrite, reason: str, *, where: str) -> None:
        metrics.OUTBOX_DEAD_LETTERS.labels(crm=write.source).inc()
        logger.error(
            "CRM write %s to %s dead-lettered after %s (kept in %s); "
            "`python -m src.outbox retry %s` sends it again, `drop` gives it up",
            write.write_id[:12],
            write.source,
            reason,
            where,
            write.write_id[:12],
            extra={"service": write.source, "write_id": write.write_id[:12]},
        )

    async def _release(self, item_id: str, payload: str | None = None, delay: float = 0.0) -> None:
        await self._quiet(lambda st: st.outbox_release(item_id, payload, delay))

    async def depth(self) -> int:
        """Writes waiting (this job's unsaved ones plus the store's live ones); also the
        gauges (dead letters apart)."""
        count = len(self.pending)
        created: list[float] = []
        if self.store is not None:
            with contextlib.suppress(StoreError):
                items = await self._store_op(lambda st: st.outbox_list())
                live = [i for i in items if not i.dead]
                count += len(live)
                created = [i.created for i in live]
                metrics.OUTBOX_DEAD.set(len(items) - len(live))
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
        """Flush due writes without making the caller wait for them."""
        if not self.pending and self.store is None:
            return
        task = asyncio.create_task(self.flush(due_only=True))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
