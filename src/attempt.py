"""The timer of the attempt in progress, shared between the retry helper and the HTTP
layer so that one attempt runs under one timer.

:func:`~src.error_recovery.retry_with_exponential_backoff` bounds each attempt with an
``asyncio.timeout`` and publishes it here; :class:`~src.services.http.ServiceHttp` then
borrows that timer (pulling it earlier for its own per-request limit, and putting it back
afterwards) instead of arming a second one. Outside a retry there is no attempt timer and
the HTTP layer arms its own. Kept free of imports so the HTTP layer can use it without
loading LiveKit.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

__all__ = ["ATTEMPT_TIMER"]

ATTEMPT_TIMER: ContextVar[asyncio.Timeout | None] = ContextVar("attempt_timer", default=None)
