"""CRM writes that must be neither lost nor doubled (:mod:`.core`), the write as kept and
the backoff / dead-letter rule (:mod:`.write`), and the operator's command
``python -m src.outbox list|drain|retry|drop`` (:mod:`.cli`).

Imports run one way: the agent imports the outbox; the outbox and its command build what
they need from :mod:`src.services.wiring`, :mod:`src.settings` and
:mod:`src.error_recovery`, never from :mod:`src.agent`.
"""

from .core import CLAIM_BATCH, CLAIM_LEASE_S, Outbox, ProtectedCall
from .write import REF_MARK, OutboxPolicy, PendingWrite, WriteOutcome, with_ref

__all__ = [
    "CLAIM_BATCH",
    "CLAIM_LEASE_S",
    "REF_MARK",
    "Outbox",
    "OutboxPolicy",
    "PendingWrite",
    "ProtectedCall",
    "WriteOutcome",
    "with_ref",
]
