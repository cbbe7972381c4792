"""One CRM write as the outbox keeps it, and the rule that decides when a write that keeps
failing waits longer (its backoff) or is given up to an operator (dead-lettered)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["REF_MARK", "OutboxPolicy", "PendingWrite", "WriteOutcome", "with_ref"]

WriteOutcome = Literal["saved", "queued", "rejected", "checking", "unknown"]
REF_MARK = "(ref {})"
FREE_ATTEMPTS = 2  # attempts before the backoff starts


@dataclass
class PendingWrite:
    """A CRM write that could not be sent (circuit open, rate limited, refused): kept
    outside the session state so a tool's rollback cannot drop it, and retried later."""

    source: str
    record_id: str  # "": an unverified intake (a Task/note attached to no person's record)
    subject: str
    body: str
    attempts: int = 0
    owner_id: str | None = None  # Salesforce: the record owner the Task is assigned to
    write_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    verify: bool = False  # it may have applied: look for it in the CRM before resending
    sent_at: float = 0.0  # wall clock of the last attempt
    created_at: float = 0.0  # wall clock when the outbox first kept it (its age)
    next_at: float = 0.0  # wall clock before which a job's memory does not try it again

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
        if not isinstance(write.attempts, int) or not isinstance(write.verify, bool):
            raise ValueError("not a write")
        return write

    def replace(self, **changes: Any) -> PendingWrite:
        return dataclasses.replace(self, **changes)


def with_ref(write: PendingWrite) -> tuple[str, str]:
    """(subject, body) as sent: the subject ends with the write reference, so the CRM
    record can be found by it (Salesforce filters Task on Subject; HubSpot matches it as
    a word of the note body), cut so the reference always survives the 255-char limit."""
    mark = REF_MARK.format(write.write_id)
    return f"{write.subject[: 254 - len(mark)].rstrip()} {mark}", write.body


@dataclass(frozen=True)
class OutboxPolicy:
    """When a write that did not go is tried again, and when it is given up (issue #23).

    Attributes:
        max_attempts: attempts after which a write is dead-lettered (``OUTBOX_MAX_ATTEMPTS``,
            10: with the backoff below, about an hour of trying).
        max_age_s: seconds after which a waiting write is dead-lettered
            (``OUTBOX_MAX_AGE_S``, 86400).
        backoff_base_s / backoff_max_s: after the first two failed attempts the next
            waits the base, then twice as long at each attempt, up to the cap (30 s /
            1800 s).
    """

    max_attempts: int = 10
    max_age_s: float = 86_400.0
    backoff_base_s: float = 30.0
    backoff_max_s: float = 1_800.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.max_age_s <= 0:
            raise ValueError("max_age_s must be > 0 seconds")
        if not 0 <= self.backoff_base_s <= self.backoff_max_s:
            raise ValueError("need 0 <= backoff_base_s <= backoff_max_s")

    @classmethod
    def from_settings(cls, resilience: Any) -> OutboxPolicy:
        """From :class:`~src.settings.ResilienceSettings` (defaults for what it lacks)."""
        d = cls()
        return cls(
            max_attempts=getattr(resilience, "outbox_max_attempts", d.max_attempts),
            max_age_s=getattr(resilience, "outbox_max_age_s", d.max_age_s),
        )

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt of a write tried ``attempts`` times: none after
        the conversation's own two (its send and its end-of-call flush: the next drain
        tries again), then doubling from the base."""
        if attempts <= FREE_ATTEMPTS:
            return 0.0
        return min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (attempts - 1 - FREE_ATTEMPTS))

    def dead_reason(self, attempts: int, age_s: float) -> str:
        """Why the write is given up now, ``""`` when it keeps waiting."""
        if attempts >= self.max_attempts:
            return f"{attempts} attempts"
        if age_s >= self.max_age_s:
            return f"waited {age_s / 3600:.1f} h"
        return ""
