"""``python -m src.outbox list|drain|retry|drop``: the operator's view of the durable outbox.

* ``list``: every waiting CRM write (id, CRM, record, subject, age, attempts, claimed, its
  next attempt) and every dead-lettered one (with why), never its body (a call summary
  may name people).
* ``drain``: send every due write now, through the same breakers, retries and
  exactly-once checks as a conversation; prints how many were sent and how many wait.
* ``retry ID``: a dead-lettered write (ID: its id or a unique prefix, as ``list`` shows)
  becomes live again, due now, with a fresh count of attempts.
* ``drop ID``: give up a dead-lettered write for good (it is removed, never sent).

All read ``RESILIENCE_STORE_URL`` (and, for ``drain``, the CRM settings) from the
environment / ``.env``. Exit status: 0 when nothing is left waiting (``list``/``drain``)
or the command was done (``retry``/``drop``); 1 when writes still wait, the store did
not answer or no single write matches ID; 2 on bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from src.redaction import redact
from src.settings import Settings, SettingsError, load_settings
from src.store import OutboxItem, ResilienceStore, StoreError, StoreGuard, open_store

from .write import OutboxPolicy, PendingWrite

if TYPE_CHECKING:  # `list` must not pay for loading LiveKit and the vendor clients
    from src.services.wiring import TrialistServices

    from .core import Outbox

__all__ = ["main", "outbox_for"]

CRMS = ("salesforce", "hubspot")


def _line(item: OutboxItem, now: float) -> str:
    try:
        w = PendingWrite.from_json(item.payload)
    except (ValueError, TypeError):
        return f"  {item.id[:12]}  (unreadable payload)"
    claimed = " claimed" if item.claimed_until > now else ""
    due = f" next in {item.next_at - now:.0f}s" if item.next_at > now and not item.dead else ""
    dead = f"  DEAD ({item.dead})" if item.dead else ""
    age = max(0.0, now - item.created)
    return (
        f"  {item.id[:12]}  {w.source}  record {w.record_id}  "
        f"{redact(w.subject)!r}  age {age:.0f}s  attempts {w.attempts}{claimed}{due}{dead}"
    )


async def _list(url: str) -> int:
    store = open_store(url)
    try:
        items = await store.outbox_list()
    finally:
        await store.aclose()
    now = time.time()
    live = [i for i in items if not i.dead]
    dead = [i for i in items if i.dead]
    print(f"{len(live)} CRM write(s) waiting")
    for item in live:
        print(_line(item, now))
    if dead:
        print(f"{len(dead)} CRM write(s) dead-lettered (retry ID or drop ID)")
        for item in dead:
            print(_line(item, now))
    return 1 if items else 0


def outbox_for(
    settings: Settings,
    services: TrialistServices,
    guard: StoreGuard | None,
    *,
    policy: OutboxPolicy | None = None,
) -> Outbox:
    """An outbox sending through the breakers, budgets and retries a conversation would
    use (shared with the fleet through ``guard``), without an agent."""
    from src.error_recovery import CircuitBreaker, ErrorRecoveryMixin, VoiceRetryPolicy
    from src.error_recovery.budget import process_budget

    from .core import Outbox

    r = settings.resilience

    class Drainer(ErrorRecoveryMixin):
        def __init__(self) -> None:
            self.circuit_breakers = {
                name: CircuitBreaker(
                    r.failure_threshold, r.recovery_timeout, name=name, store=guard
                )
                for name in CRMS
            }
            self.retry_budgets = {
                name: process_budget(
                    name, r.retry_budget_max_tokens, r.retry_budget_token_ratio, guard=guard
                )
                for name in CRMS
            }
            self.retry_policy = VoiceRetryPolicy(
                max_retries=r.max_retries,
                base_delay=r.base_delay,
                max_delay=r.max_delay,
                jitter=r.jitter,
            )

    return Outbox(
        services,
        Drainer().call_with_retry_and_circuit_breaker,
        clock=time.monotonic,
        service_timeout=r.service_timeout,
        store=guard,
        policy=policy or OutboxPolicy.from_settings(r),
    )


async def _drain(settings: Settings) -> int:
    from src.services.wiring import TrialistServices

    guard = StoreGuard(open_store(settings.fleet.store_url))
    services = TrialistServices.from_settings(settings)
    outbox = outbox_for(settings, services, guard)
    try:
        before = await outbox.depth()
        left = await outbox.flush()
    finally:
        await services.aclose()
        await guard.store.aclose()
    print(f"sent or settled {max(0, before - left)} CRM write(s); {left} still waiting")
    return 1 if left else 0


async def _find(store: ResilienceStore, prefix: str) -> OutboxItem | str:
    """The one write whose id starts with ``prefix``, or what to tell the operator."""
    matches = [i for i in await store.outbox_list() if i.id.startswith(prefix)]
    if not matches:
        return f"No CRM write with id {prefix!r}."
    if len(matches) > 1:
        return f"{len(matches)} CRM writes start with {prefix!r}; give more of the id."
    return matches[0]


async def _revive(store: ResilienceStore, found: OutboxItem) -> str | None:
    """``retry``: the dead letter waits again, its attempts reset."""
    try:
        write = PendingWrite.from_json(found.payload)
        fresh: str | None = write.replace(attempts=0, created_at=time.time()).to_json()
    except (ValueError, TypeError):
        fresh = None  # unreadable: a drain removes it
    await store.outbox_revive(found.id, fresh)
    return None


async def _bury(store: ResilienceStore, found: OutboxItem) -> str | None:
    """``drop``: only a dead letter goes; anything else is refused with a line."""
    if not found.dead:
        return (
            f"CRM write {found.id[:12]} is not dead-lettered; only a dead-lettered write"
            " can be dropped."
        )
    await store.outbox_done(found.id)
    return None


_ACTIONS = {
    "retry": (_revive, "CRM write {id} is waiting again; the next drain sends it."),
    "drop": (_bury, "CRM write {id} dropped; it will not be sent."),
}


async def _operate(url: str, command: str, prefix: str) -> int:
    """``retry`` or ``drop`` the one write ``prefix`` names; 1 with a line when it cannot."""
    act, done = _ACTIONS[command]
    store = open_store(url)
    try:
        found = await _find(store, prefix)
        refusal = found if isinstance(found, str) else await act(store, found)
    finally:
        await store.aclose()
    if refusal is not None or isinstance(found, str):
        print(refusal, file=sys.stderr)
        return 1
    print(done.format(id=found.id[:12]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.outbox", description=__doc__)
    parser.add_argument("command", choices=["list", "drain", "retry", "drop"])
    parser.add_argument("id", nargs="?", help="retry/drop: a write id or unique prefix")
    args = parser.parse_args(argv)
    if args.command in ("retry", "drop") and not args.id:
        parser.error(f"{args.command} needs the id of a dead-lettered write (see list)")
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2
    url = settings.fleet.store_url
    try:
        if args.command == "list":
            return asyncio.run(_list(url))
        if args.command in _ACTIONS:
            return asyncio.run(_operate(url, args.command, args.id))
        return asyncio.run(_drain(settings))
    except StoreError as exc:
        print(f"The resilience store did not answer ({redact(str(exc))}).", file=sys.stderr)
        return 1
    except ValueError:
        # The client library parses the URL and may quote parts of it (a password).
        print(
            "RESILIENCE_STORE_URL could not be used (check its form; a password with / or #"
            " must be percent-encoded).",
            file=sys.stderr,
        )
        return 2
