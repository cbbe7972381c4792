"""Operation kinds: what may be repeated is declared at the call site, and each kind has
one retry rule, decided here and nowhere else.

=====================  ==================================================================
kind                   rule
=====================  ==================================================================
READ                   idempotent: a retryable failure is retried inside the turn
                       budget; a timed-out attempt is a hang signal and is not retried
                       inside the turn (a hung vendor costs the caller one attempt).
WRITE_WITH_LOOKUP      the vendor can be asked "did write X apply?" (CRM notes/Tasks by
                       their write reference, ChiliPiper bookings): a failure that
                       certainly did not apply (refused connection, 503, 429) is retried;
                       an unknown outcome is never re-sent by the call: it ends in
                       :class:`OutcomeUnknown`, and whoever holds the write looks it up
                       by its write id before sending it again (the outbox).
WRITE_WITHOUT_LOOKUP   no way to ask: a failure that certainly did not apply is retried
                       once; an unknown outcome (a 500, a timeout, a reset) is never
                       re-sent: :class:`OutcomeUnknown`, and the runtime remembers it in
                       the resilience store so the same person's next call does not
                       repeat it (:meth:`~src.tools.runtime.ToolRuntime.protected`).
=====================  ==================================================================

With any kind, an *answer* (the vendor refused the request for a reason no retry
changes: :class:`~src.errors.NotFound`, :class:`~src.errors.InvalidRequest` and their
subclasses) is raised to the tool body, which knows what to say; every other failure
becomes the call's spoken fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ..errors import InvalidRequest, NotFound, ServiceTimeout
from ..services.http import write_outcome_is_ambiguous

__all__ = [
    "READ",
    "WRITE_WITHOUT_LOOKUP",
    "WRITE_WITH_LOOKUP",
    "OperationKind",
    "OutcomeUnknown",
    "RetryRule",
    "is_answer",
    "outcome_unknown",
    "retry_rule",
]


class OperationKind(StrEnum):
    READ = "read"
    WRITE_WITH_LOOKUP = "write_with_lookup"
    WRITE_WITHOUT_LOOKUP = "write_without_lookup"

    @property
    def is_write(self) -> bool:
        return self is not OperationKind.READ


READ = OperationKind.READ
WRITE_WITH_LOOKUP = OperationKind.WRITE_WITH_LOOKUP
WRITE_WITHOUT_LOOKUP = OperationKind.WRITE_WITHOUT_LOOKUP


class OutcomeUnknown(Exception):
    """A write failed after it may have been applied (its cause is the failure). It was
    not re-sent; the caller reconciles it (lookup) or remembers it (no lookup)."""

    def __init__(self, service: str, kind: OperationKind) -> None:
        super().__init__(f"{service} {kind.value}: outcome unknown")
        self.service = service
        self.kind = kind


def outcome_unknown(exc: BaseException) -> bool:
    """Whether a failed write may nevertheless have been applied (a timeout, a 500, a
    connection lost after sending, anything unexpected); False when it certainly changed
    nothing (refused by the breaker, never connected, 4xx, 429, 503)."""
    return write_outcome_is_ambiguous(exc)


def is_answer(exc: BaseException) -> bool:
    """Whether ``exc`` is the vendor's answer for the tool body (not found, refused as
    invalid), rather than a failure to hide behind the fallback."""
    return isinstance(exc, NotFound | InvalidRequest)


@dataclass(frozen=True)
class RetryRule:
    """How a call of one kind treats a failed attempt.

    Attributes:
        kind: the operation kind.
        max_retries: a cap on retries after the first attempt (``None``: the retry
            policy's ``max_retries``).
    """

    kind: OperationKind
    max_retries: int | None = None

    def retries(self, policy_max: int) -> int:
        return policy_max if self.max_retries is None else min(policy_max, self.max_retries)

    def may_resend(self, exc: BaseException) -> bool:
        """Whether a retryable failure ``exc`` may be sent again by this kind's rule
        (retryability itself, the breaker and the retry budget are checked too)."""
        if self.kind is READ:
            return not isinstance(exc, ServiceTimeout | TimeoutError)  # a hang
        return not outcome_unknown(exc)

    def unknown(self, exc: BaseException) -> bool:
        """Whether the call ends in :class:`OutcomeUnknown` after ``exc``."""
        return self.kind.is_write and not is_answer(exc) and outcome_unknown(exc)


_RULES = {
    READ: RetryRule(READ),
    WRITE_WITH_LOOKUP: RetryRule(WRITE_WITH_LOOKUP),
    WRITE_WITHOUT_LOOKUP: RetryRule(WRITE_WITHOUT_LOOKUP, max_retries=1),
}


def retry_rule(kind: OperationKind) -> RetryRule:
    """The one retry rule of ``kind``."""
    return _RULES[kind]
