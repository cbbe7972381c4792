"""The timer of the attempt in progress, shared between the retry helper and the HTTP
layer so that one attempt runs under one timer.

:func:`~src.error_recovery.retry_with_exponential_backoff` bounds each attempt with an
``asyncio.timeout`` and publishes it here; :class:`~src.services.http.ServiceHttp` then
borrows that timer (pulling it earlier for its own per-request limit, and putting it back
afterwards) instead of arming a second one. Outside a retry there is no attempt timer and
the HTTP layer arms its own. Only the task that armed the timer may borrow it: a task
started inside the attempt (``asyncio.gather``) inherits the variable but not the timer,
which cancels the attempt's task, and may outlive it. Kept free of imports so the HTTP
layer can use it without loading LiveKit.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

__all__ = [
    "ATTEMPT_TIMER",
    "VendorContact",
    "current_attempt_timer",
    "listening",
    "served_locally",
    "vendor_answered",
]

# (the attempt's timer, the task it cancels)
ATTEMPT_TIMER: ContextVar[tuple[asyncio.Timeout, asyncio.Task[object] | None] | None] = ContextVar(
    "attempt_timer", default=None
)


def current_attempt_timer() -> asyncio.Timeout | None:
    """The running attempt's timer when this task armed it and it is still running."""
    entry = ATTEMPT_TIMER.get()
    if entry is None:
        return None
    timer, owner = entry
    if owner is not asyncio.current_task() or timer.when() is None or timer.expired():
        return None
    return timer


# -- issue #23: did the vendor itself answer? ---------------------------------------------
# A half-open probe may close a circuit only on an answer from the vendor: the protected
# call listens, the HTTP layer reports each answer (any status), and a cache reports an
# answer it gave instead of the vendor.


class VendorContact:
    """What one protected call heard: answers from the vendor, answers served locally."""

    __slots__ = ("answered", "local")

    def __init__(self) -> None:
        self.answered = 0
        self.local = 0


VENDOR_CONTACT: ContextVar[VendorContact | None] = ContextVar("vendor_contact", default=None)


class listening:  # a context manager, named like contextlib's
    """``with listening() as heard:`` collects what the calls inside heard."""

    def __enter__(self) -> VendorContact:
        self._contact = VendorContact()
        self._token = VENDOR_CONTACT.set(self._contact)
        return self._contact

    def __exit__(self, *exc: object) -> None:
        VENDOR_CONTACT.reset(self._token)


def vendor_answered() -> None:
    """The HTTP layer received a response (any status) from the vendor."""
    contact = VENDOR_CONTACT.get()
    if contact is not None:
        contact.answered += 1


def served_locally() -> None:
    """A cache answered instead of the vendor."""
    contact = VENDOR_CONTACT.get()
    if contact is not None:
        contact.local += 1
