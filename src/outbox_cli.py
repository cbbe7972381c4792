"""``python -m src.outbox list|drain``: the operator's view of the durable outbox.

* ``list``: every waiting CRM write (id, CRM, record, subject, age, attempts, claimed),
  never its body (a call summary may name people).
* ``drain``: send every waiting write now, through the same breakers, retries and
  exactly-once checks as a conversation; prints how many were sent and how many wait.

Both read ``RESILIENCE_STORE_URL`` and the CRM settings from the environment / ``.env``.
Exit status: 0 when nothing is left waiting, 1 when writes still wait, 2 on bad usage or
configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

from src.outbox import PendingWrite
from src.redaction import redact
from src.settings import Settings, SettingsError, load_settings
from src.store import StoreError, StoreGuard, open_store

__all__ = ["main"]


async def _list(url: str) -> int:
    store = open_store(url)
    try:
        items = await store.outbox_list()
    finally:
        await store.aclose()
    now = time.time()
    print(f"{len(items)} CRM write(s) waiting")
    for item in items:
        try:
            w = PendingWrite.from_json(item.payload)
        except (ValueError, TypeError):
            print(f"  {item.id[:12]}  (unreadable payload)")
            continue
        claimed = " claimed" if item.claimed_until > now else ""
        age = max(0.0, now - item.created)
        print(
            f"  {item.id[:12]}  {w.source}  record {w.record_id}  "
            f"{redact(w.subject)!r}  age {age:.0f}s  attempts {w.attempts}{claimed}"
        )
    return 1 if items else 0


async def _drain(settings: Settings) -> int:
    # Imported here: `list` must not pay for loading LiveKit and its plugins.
    from src.agent import PandaDocTrialistAgent
    from src.services.wiring import TrialistServices

    guard = StoreGuard(open_store(settings.fleet.store_url))
    services = TrialistServices.from_settings(settings)
    agent = PandaDocTrialistAgent(services, settings, store=guard)
    try:
        before = await agent.outbox.depth()
        left = await agent.flush_pending_writes()
    finally:
        await services.aclose()
        await guard.store.aclose()
    print(f"sent or settled {max(0, before - left)} CRM write(s); {left} still waiting")
    return 1 if left else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.outbox", description=__doc__)
    parser.add_argument("command", choices=["list", "drain"])
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "list":
            return asyncio.run(_list(settings.fleet.store_url))
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
