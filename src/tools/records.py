"""The caller's CRM record: Salesforce first, HubSpot when Salesforce fails or has no
record, inside one deadline. Used by the CRM tools and by the disclosure policy (a phone
caller's number is checked against the record's phone)."""

from __future__ import annotations

from livekit.agents.llm import ToolError

from src.errors import InvalidRequest, NotFound
from src.phrases import ACCOUNT_FALLBACK
from src.redaction import get_logger
from src.registry import READ
from src.services.crm import CrmContact
from src.tools.runtime import ToolRuntime

__all__ = ["find_crm_record"]

logger = get_logger("pandadoc.agent")


async def find_crm_record(
    rt: ToolRuntime, email: str, deadline_at: float | None = None
) -> CrmContact | None:
    """Salesforce first, HubSpot when Salesforce fails or has no record, all inside one
    deadline (``deadline_at`` on the retry clock; default: the running tool's). ``None``
    when neither CRM has the person; ``ToolError`` with a spoken fallback when no CRM
    could answer."""
    if deadline_at is None:
        deadline_at = rt.deadline()
    answered_not_found = False
    sf, hs = rt.services.salesforce, rt.services.hubspot
    if sf is not None:
        # A slow Salesforce must leave HubSpot a fair share of the budget.
        reserve = rt.reserve(deadline_at) if hs is not None else 0.0
        try:
            person = await rt.protected(
                "salesforce",
                lambda: sf.find_person(email),
                ACCOUNT_FALLBACK,
                kind=READ,
                deadline_at=deadline_at - reserve,
            )
        except (NotFound, InvalidRequest):
            answered_not_found = True
        except ToolError:
            logger.debug("Salesforce unavailable, falling back to HubSpot")  # per call
        else:
            return person
    if hs is not None and rt.retry_clock() < deadline_at:
        try:
            contact = await rt.protected(
                "hubspot",
                lambda: hs.find_contact(email),
                ACCOUNT_FALLBACK,
                kind=READ,
                deadline_at=deadline_at,
            )
        except (NotFound, InvalidRequest):
            return None
        return contact
    if answered_not_found:
        return None
    raise ToolError(ACCOUNT_FALLBACK)
