"""The resilience store: what every conversation of a fleet shares (circuit breaker
state, the durable CRM outbox, vendor quotas and the usage cache), chosen by
``RESILIENCE_STORE_URL``.

* ``sqlite:///path/to/file.db``: the default for one host (every job process of a worker
  shares the file); default path under the system temp dir (:data:`DEFAULT_STORE_URL`).
* ``redis://host:port/db`` / ``rediss://``: several workers or LiveKit Cloud replicas.
* ``memory://``: in-process, for unit tests.

Failures are contained by :class:`StoreGuard`: callers fall back to local state.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .base import BreakerView, OutboxItem, ResilienceStore, StoreError
from .guard import StoreGuard
from .limits import FleetQuotaStore, FleetUsageCache
from .memory import MemoryStore
from .sqlite import SqliteStore

__all__ = [
    "DEFAULT_STORE_URL",
    "BreakerView",
    "FleetQuotaStore",
    "FleetUsageCache",
    "MemoryStore",
    "OutboxItem",
    "ResilienceStore",
    "SqliteStore",
    "StoreError",
    "StoreGuard",
    "open_store",
    "validate_store_url",
]

DEFAULT_STORE_URL = f"sqlite:///{Path(tempfile.gettempdir()) / 'pandadoc-resilience.db'}"
SCHEMES = ("sqlite", "redis", "rediss", "memory")


def validate_store_url(url: str) -> str:
    """The URL when its scheme is supported, else ``ValueError`` (message names no value)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError("must start with sqlite://, redis://, rediss:// or memory://")
    if scheme == "sqlite" and not rest.strip("/"):
        raise ValueError("sqlite:// needs a file path, e.g. sqlite:///var/lib/agent/store.db")
    if scheme in ("redis", "rediss") and not rest:
        raise ValueError("redis:// needs a host, e.g. redis://localhost:6379/0")
    return url


def open_store(url: str = DEFAULT_STORE_URL) -> ResilienceStore:
    """A store for ``url`` (validated). Opening connects lazily: a store that is down
    now is not an error here, only on use."""
    scheme = validate_store_url(url).partition("://")[0]
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        return SqliteStore(url[len("sqlite://") :])
    from .redis_store import RedisStore  # imported only when used

    return RedisStore(url)
