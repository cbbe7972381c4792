"""What every resilience store keeps, and the rules it keeps it by.

A store holds two things shared by every conversation (job process) of a fleet:

* one record per circuit breaker: ``state`` (closed/open/half_open), consecutive
  ``failures``, when the latest was counted (``failed_at``: a streak that paused longer
  than its window starts again) and when the latest failed attempt was sent
  (``failed_sent``: a later attempt's answer closes an open circuit), when the streak's
  failed attempts were sent (``streak_sent``) and the threshold that opened the circuit
  on them (``streak_opened``: an answer sent inside the streak, told late, breaks it),
  when the latest answered attempt it heard of was sent (``answered_sent``: a failure
  sent before it is not "in a row"),
  ``opened_at`` and the half-open probe's lease (``probe`` token and ``probe_until``),
  all times on the store's own clock;
* the durable outbox: CRM writes (an id and a JSON payload) with a claim lease, so two
  drains never send the same write at once;
* vendor quotas and the usage cache (issue #18): a sliding-window budget per key, leases
  on concurrency slots that expire by themselves, and JSON answers with a time to live,
  so an hourly vendor budget and a cached usage hold for the whole fleet.

The breaker rules are written once here as plain functions over a record dict; each
backend only has to run them atomically (a lock, a SQLite transaction, a Redis WATCH
transaction) with its own clock.
"""

from __future__ import annotations

import abc
import json
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "BreakerView",
    "OutboxItem",
    "ResilienceStore",
    "StoreError",
]

R = TypeVar("R")
Record = dict[str, Any]
Mutation = Callable[[Record, float], tuple[R, bool]]  # (result, changed)


UNKNOWN_WRITE_PREFIX = "unknown-write:"


class StoreError(Exception):
    """The store could not answer (down, slow, locked, refusing, corrupt)."""


@dataclass(frozen=True)
class BreakerView:
    """A breaker's shared state as one conversation sees it.

    ``retry_in``: seconds until an open circuit lets a probe through (0 when not open);
    ``probing``: a live probe lease is held somewhere in the fleet."""

    state: str
    failures: int
    retry_in: float
    probing: bool = False


@dataclass(frozen=True)
class OutboxItem:
    """One durable write: its id, JSON payload, when it was queued, until when it is
    claimed (0 when free), when it may next be tried (its backoff, issue #23), all on the
    store's clock, and why it was dead-lettered (``""`` while it is still live)."""

    id: str
    payload: str
    created: float
    claimed_until: float
    next_at: float = 0.0
    dead: str = ""


def parse_cached(raw: str | bytes | None) -> dict[str, Any] | None:
    """A stored cache value back as a dict; ``None`` when absent or not a JSON object."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def new_record() -> Record:
    return {"state": "closed", "failures": 0, "opened_at": 0.0, "probe": "", "probe_until": 0.0}


def view_of(
    rec: Record, now: float, recovery_timeout: float, streak_window: float = 0.0
) -> BreakerView:
    retry_in = 0.0
    if rec["state"] == "open":
        retry_in = max(0.0, float(rec["opened_at"]) + recovery_timeout - now)
    probing = rec["state"] == "half_open" and float(rec["probe_until"]) > now
    failures = 0 if _streak_over(rec, now, streak_window) else int(rec["failures"])
    return BreakerView(str(rec["state"]), failures, retry_in, probing)


def _streak_over(rec: Record, now: float, streak_window: float) -> bool:
    """A closed circuit's streak of failures paused longer than ``streak_window`` (0:
    never): the next failure starts a new one (issue #24). Records written before
    failures had a time count as fresh."""
    if not streak_window or rec["state"] != "closed":
        return False
    return now - float(rec.get("failed_at", now)) > streak_window


def _open(rec: Record, now: float, *, streak: int = 0) -> None:
    """Open; ``streak``: the threshold of the consecutive rule's count that opened it (a
    late answer sent inside the streak can still break it, :func:`rule_success`); 0
    when opened otherwise (the rate rule, a failed probe)."""
    rec.update(state="open", opened_at=now, probe="", probe_until=0.0, streak_opened=streak)


STREAK_KEPT = 16  # send times kept of a streak's latest failures


def _streak_sent(rec: Record, failures: int) -> list[float] | None:
    """When the streak's ``failures`` failed attempts were sent (store clock, oldest
    first); ``None`` when the record does not know (written before it kept them)."""
    kept = rec.get("streak_sent")
    if not isinstance(kept, list) or len(kept) < failures or not failures:
        return None
    return [float(t) for t in kept[len(kept) - failures :]]


def rule_failure(
    threshold: int, streak_window: float = 0.0, sent_ago: float = 0.0
) -> Mutation[bool]:
    """A counted failed attempt while closed, sent ``sent_ago`` seconds before now;
    result: this failure opened the circuit. It starts a new streak when the last one
    paused longer than ``streak_window``; one sent before an answered attempt the store
    heard of is not in a row (threshold 1, the rate rule's "open now", aside). The store
    keeps when the latest failed attempt was sent (``failed_sent``), on its own clock,
    for :func:`rule_success`."""

    def apply(rec: Record, now: float) -> tuple[bool, bool]:
        if rec["state"] != "closed":
            return False, False
        if threshold > 1 and now - sent_ago < float(rec.get("answered_sent", float("-inf"))):
            return False, False  # sent before an answer that came already: not in a row
        failures = 0 if _streak_over(rec, now, streak_window) else int(rec["failures"])
        kept = _streak_sent(rec, failures) or []
        rec["failures"] = failures + 1
        rec["failed_at"] = now
        rec["failed_sent"] = max(float(rec.get("failed_sent", 0.0)), now - sent_ago)
        rec["streak_sent"] = [*kept, now - sent_ago][-STREAK_KEPT:]
        if rec["failures"] >= threshold:
            _open(rec, now, streak=threshold if threshold > 1 else 0)
            return True, True
        return False, True

    return apply


def rule_success(sent_ago: float | None = None) -> Mutation[bool]:
    """A success. While closed it ends the consecutive streak: with ``sent_ago`` (when
    its attempt was sent), the failures sent after that attempt are the streak now;
    without, none are. While open, the vendor's
    answer to an attempt sent ``sent_ago`` seconds before now (a call admitted while
    the circuit was closed), after the latest failed attempt anyone in the fleet sent,
    shows the vendor works now: the circuit closes (issue #24). An answer sent between
    the failures of the streak that opened it (told late: its process could not reach
    the store) shows they were not in a row: the circuit closes when fewer than the
    threshold were sent after it, and those are the streak now. An answer sent before
    the streak says nothing about now; a half-open circuit is its probe's to decide.
    Result: whether it closed an open circuit."""

    def apply(rec: Record, now: float) -> tuple[bool, bool]:
        answered = False
        if sent_ago is not None and now - sent_ago > float(rec.get("answered_sent", 0.0)):
            rec["answered_sent"] = now - sent_ago
            answered = True
        if rec["state"] == "closed":
            failures = int(rec["failures"])
            if failures == 0:
                return False, answered
            streak = _streak_sent(rec, failures) if sent_ago is not None else None
            sent = now - (sent_ago or 0.0)
            after = [] if streak is None else [t for t in streak if t > sent]
            if len(after) == failures:  # every failure was sent after this answer's attempt
                return False, answered
            rec.update(failures=len(after), streak_sent=after)
            return False, True
        if rec["state"] != "open" or sent_ago is None or "failed_sent" not in rec:
            return False, answered
        sent = now - sent_ago
        if sent > float(rec["failed_sent"]):
            rec.update(state="closed", failures=0, opened_at=0.0, probe="", probe_until=0.0)
            return True, True
        # told late (its process could not reach the store): an answer sent inside the
        # streak that opened the circuit shows those failures were not in a row; the
        # failures sent after it are the streak now
        threshold = int(rec.get("streak_opened") or 0)
        streak = _streak_sent(rec, int(rec["failures"])) if threshold else None
        if streak is None:
            return False, answered
        after = [t for t in streak if t > sent]
        if len(after) >= threshold:  # still that many in a row after the answer
            return False, answered
        rec.update(state="closed", opened_at=0.0, probe="", probe_until=0.0)
        rec.update(failures=len(after), streak_sent=after, streak_opened=0)
        return True, True

    return apply


def rule_probe(recovery_timeout: float, lease: float) -> Mutation[str]:
    """Take the fleet's one probe lease when the recovery timeout is over (or the last
    probe's lease expired: its process died); result: the token, ``""`` when refused."""

    def apply(rec: Record, now: float) -> tuple[str, bool]:
        due = rec["state"] == "open" and now >= float(rec["opened_at"]) + recovery_timeout
        stale = rec["state"] == "half_open" and now >= float(rec["probe_until"])
        if not (due or stale):
            return "", False
        token = uuid.uuid4().hex
        rec.update(state="half_open", probe=token, probe_until=now + lease)
        return token, True

    return apply


def rule_probe_done(token: str, ok: bool | None) -> Mutation[str]:
    """The probe's outcome: success closes, failure re-opens with a fresh timeout,
    ``None`` (cancelled, no verdict) frees the lease for the next caller at once. A token
    that no longer holds the lease changes nothing. Result: the new state."""

    def apply(rec: Record, now: float) -> tuple[str, bool]:
        if rec["state"] != "half_open" or rec["probe"] != token:
            return str(rec["state"]), False
        if ok is None:
            rec.update(state="open", probe="", probe_until=0.0)  # opened_at kept: due now
        elif ok:
            rec.update(state="closed", failures=0, opened_at=0.0, probe="", probe_until=0.0)
        else:
            rec["failures"] = int(rec["failures"]) + 1
            rec["failed_sent"] = now  # the probe's attempt: only later ones say more
            _open(rec, now)
        return str(rec["state"]), True

    return apply


def rule_reset(rec: Record, now: float) -> tuple[None, bool]:
    rec.clear()
    rec.update(new_record())
    return None, True


class ResilienceStore(abc.ABC):
    """A backend: atomic read-modify-write of breaker records, and the outbox."""

    url_scheme = ""

    # -- what a backend implements --------------------------------------------------
    @abc.abstractmethod
    async def _mutate(self, name: str, fn: Mutation[R]) -> tuple[R, Record, float]:
        """Run ``fn(record, now)`` atomically; returns (result, record after, now)."""

    @abc.abstractmethod
    async def _read(self, name: str) -> tuple[Record, float]:
        """(record, store clock now); a fresh record when none is stored."""

    @abc.abstractmethod
    async def outbox_put(self, item_id: str, payload: str) -> None:
        """Add a write (idempotent on ``item_id``)."""

    @abc.abstractmethod
    async def outbox_put_claimed(self, item_id: str, payload: str, lease: float) -> str | None:
        """Add a write already claimed for ``lease`` seconds (issue #23: every write is
        stored before it is sent). When ``item_id`` is already there and free (not
        claimed, not dead), claim it instead. Returns the payload the claim holds (ours,
        or the stored one), ``None`` when someone else holds it or it is dead."""

    @abc.abstractmethod
    async def outbox_claim(
        self, limit: int, lease: float, skip: Collection[str] = ()
    ) -> list[OutboxItem]:
        """Claim up to ``limit`` writes that are free (unclaimed or lease-expired), due
        (their backoff over), live (not dead) and not in ``skip``, oldest first."""

    @abc.abstractmethod
    async def outbox_done(self, item_id: str) -> None:
        """Remove a delivered (or given up) write."""

    @abc.abstractmethod
    async def outbox_mark(self, item_id: str, payload: str) -> None:
        """Replace a claimed write's payload and keep the claim (written ahead of a send,
        so a later claimer knows the write may have applied)."""

    @abc.abstractmethod
    async def outbox_release(
        self, item_id: str, payload: str | None = None, delay: float = 0.0
    ) -> None:
        """Give a claimed write back (optionally with an updated payload), not to be
        claimed again for ``delay`` seconds (its backoff)."""

    @abc.abstractmethod
    async def outbox_bury(self, item_id: str, payload: str, reason: str) -> None:
        """Dead-letter a write: kept, listed, never claimed until revived."""

    @abc.abstractmethod
    async def outbox_revive(self, item_id: str, payload: str | None = None) -> bool:
        """Make a write live and due now (the operator's ``retry``); ``False`` when there
        is no such write."""

    @abc.abstractmethod
    async def outbox_list(self) -> list[OutboxItem]:
        """Every write, oldest first (operator view)."""

    # -- vendor quotas and the usage cache (backing src.services.quota's protocols) ----
    @abc.abstractmethod
    async def quota_charge(self, key: str, cost: int, limit: int, window_s: float) -> bool:
        """Atomically add ``cost`` to ``key``'s sliding window of ``window_s`` seconds if
        the total stays within ``limit``; ``False`` (and nothing added) otherwise."""

    @abc.abstractmethod
    async def quota_acquire(self, key: str, limit: int, lease_s: float) -> str | None:
        """A lease on one of ``limit`` slots of ``key`` (expires after ``lease_s``), or
        ``None`` when all are taken; expired leases are dropped first."""

    @abc.abstractmethod
    async def quota_release(self, key: str, lease: str) -> None:
        """Give a lease back (a no-op when it already expired)."""

    @abc.abstractmethod
    async def cache_get(self, key: str) -> dict[str, Any] | None:
        """The live entry of ``key``, or ``None`` (absent, expired or unreadable)."""

    @abc.abstractmethod
    async def cache_put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        """Keep ``value`` (JSON-able) for ``ttl_s`` seconds; ``ttl_s <= 0`` keeps nothing."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    async def ping(self) -> None:
        """Raise :class:`StoreError` when the store does not answer."""
        await self._read("__ping__")

    # -- breaker operations (shared by every backend) -------------------------------
    async def breaker_view(
        self, name: str, recovery_timeout: float, streak_window: float = 0.0
    ) -> BreakerView:
        rec, now = await self._read(name)
        return view_of(rec, now, recovery_timeout, streak_window)

    async def breaker_failure(
        self,
        name: str,
        threshold: int,
        recovery_timeout: float,
        streak_window: float = 0.0,
        sent_ago: float = 0.0,
    ) -> tuple[bool, BreakerView]:
        """A counted failure; ``streak_window``: seconds a streak may pause (0: never);
        ``sent_ago``: seconds since the failed attempt was sent."""
        rule = rule_failure(threshold, streak_window, sent_ago)
        opened, rec, now = await self._mutate(name, rule)
        return opened, view_of(rec, now, recovery_timeout, streak_window)

    async def breaker_success(self, name: str, sent_ago: float | None = None) -> bool:
        """A success; with ``sent_ago`` (the vendor answered an attempt sent that many
        seconds ago) it may close an open circuit. Whether it did (:func:`rule_success`)."""
        closed, _, _ = await self._mutate(name, rule_success(sent_ago))
        return closed

    async def breaker_probe(
        self, name: str, recovery_timeout: float, lease: float
    ) -> tuple[str, BreakerView]:
        token, rec, now = await self._mutate(name, rule_probe(recovery_timeout, lease))
        return token, view_of(rec, now, recovery_timeout)

    async def breaker_probe_done(self, name: str, token: str, ok: bool | None) -> str:
        state, _, _ = await self._mutate(name, rule_probe_done(token, ok))
        return state

    async def breaker_reset(self, name: str) -> None:
        await self._mutate(name, rule_reset)

    # -- writes without a lookup whose outcome is unknown (src.registry.kinds) ---------
    # Kept as cache entries under their own prefix, so every backend has them as is.
    async def unknown_write_put(self, key: str, ttl_s: float) -> None:
        """Remember that the write ``key`` (a hash of who and what) may have applied."""
        await self.cache_put(f"{UNKNOWN_WRITE_PREFIX}{key}", {"unknown": True}, ttl_s)

    async def unknown_write_seen(self, key: str) -> bool:
        """Whether the write ``key`` is remembered as of unknown outcome."""
        return await self.cache_get(f"{UNKNOWN_WRITE_PREFIX}{key}") is not None

    # -- issues #15, #23: the fleet's retry budget (a sliding window per vendor) -------
    async def budget_update(
        self,
        name: str,
        requests: int,
        retries: int,
        reserve: bool,
        window_s: float,
        floor: float,
        percent: float,
    ) -> bool:
        """Count ``requests`` first attempts and ``retries`` retries in ``name``'s retry
        window; with ``reserve``, also take one retry if the window allows it. Result:
        whether a retry was reserved. Kept under its own key, beside the breakers."""
        granted, _, _ = await self._mutate(
            f"retry-budget:{name}",
            rule_retry_budget(requests, retries, reserve, window_s, floor, percent),
        )
        return granted


# -- issues #15, #23: the fleet's retry budget ----------------------------------------
def budget_totals(rec: Record, now: float, window_s: float) -> tuple[int, int]:
    """(first attempts, retries) in the window ending ``now``."""
    requests = retries = 0
    for at, req, ret in rec.get("b", ()):
        if float(at) > now - window_s:
            requests += int(req)
            retries += int(ret)
    return requests, max(0, retries)  # a refund may outlive the retry it gave back


def rule_retry_budget(
    requests: int, retries: int, reserve: bool, window_s: float, floor: float, percent: float
) -> Mutation[bool]:
    """Finagle's RetryBudget over one-second buckets: add the counts to the bucket of
    ``now``, drop buckets older than the window, and with ``reserve`` take one retry when
    ``retries + 1 <= floor + percent x requests`` over the window. Result: reserved."""

    def apply(rec: Record, now: float) -> tuple[bool, bool]:
        buckets = [b for b in rec.get("b", ()) if float(b[0]) > now - window_s]
        second = float(int(now))
        if not buckets or float(buckets[-1][0]) != second:
            buckets.append([second, 0, 0])
        buckets[-1][1] = int(buckets[-1][1]) + requests
        buckets[-1][2] = int(buckets[-1][2]) + retries
        rec["b"] = buckets
        total_req, total_ret = budget_totals(rec, now, window_s)
        granted = reserve and total_ret + 1 <= floor + percent * total_req
        if granted:
            buckets[-1][2] += 1
        return granted, True

    return apply
