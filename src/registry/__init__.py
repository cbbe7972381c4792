"""One declaration per vendor and per tool: protection is stated once, the rest derived.

* :mod:`.vendors`: :data:`VENDORS` (what a declaration is: :mod:`.base`), each vendor's
  settings section, client, sandbox stand-in, response cap and capability; breakers,
  bulkheads, retry budgets, clients, settings, the sandbox and the degraded notice are
  loops over it.
* :mod:`.kinds`: the operation kinds (read, write with a lookup, write without one),
  each with its one retry rule.
* :mod:`.tools`: :func:`declared`, the declaration written next to each
  ``@function_tool`` (vendors used, kind, filler, capability, fallback, keywords).
"""

from .base import Capability, ClientContext, Registry, Vendor, VendorEnv
from .kinds import (
    READ,
    WRITE_WITH_LOOKUP,
    WRITE_WITHOUT_LOOKUP,
    OperationKind,
    OutcomeUnknown,
    RetryRule,
    is_answer,
    outcome_unknown,
    retry_rule,
)
from .tools import ToolDeclaration, declaration_of, declared, declared_tools, undeclare
from .vendors import VENDORS

__all__ = [
    "READ",
    "VENDORS",
    "WRITE_WITHOUT_LOOKUP",
    "WRITE_WITH_LOOKUP",
    "Capability",
    "ClientContext",
    "OperationKind",
    "OutcomeUnknown",
    "Registry",
    "RetryRule",
    "ToolDeclaration",
    "Vendor",
    "VendorEnv",
    "declaration_of",
    "declared",
    "declared_tools",
    "is_answer",
    "outcome_unknown",
    "retry_rule",
    "undeclare",
]
