"""Phone verification: does the caller number match a CRM phone the caller cannot have
set themselves?

Only two phones count (``SIP_VERIFY_FROM=contacts``, the default):

* a Salesforce **Contact**'s phone, never a Lead's: Web-to-Lead lets anyone create a Lead
  with someone else's email and their own phone;
* a HubSpot contact's phone whose latest value did not come from a form or another
  channel the public can write to (:data:`UNTRUSTED_PHONE_SOURCES`), read from the
  property's history (``propertiesWithHistory=phone``, its ``sourceType``). A phone
  without a readable history does not count either.

Both CRMs are asked at once, every time, with one request each whose shape does not
depend on the address (Salesforce: one Contact query; HubSpot: one batch read by email),
so how long a check takes says nothing about whether the address has a record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from livekit.agents.llm import ToolError

from src.errors import InvalidRequest, NotFound
from src.identity import same_phone
from src.phrases import ACCOUNT_FALLBACK
from src.registry import READ
from src.services.crm import CrmContact
from src.tools.runtime import ToolRuntime

__all__ = ["UNTRUSTED_PHONE_SOURCES", "PhoneCheck", "trusted_phone_match"]

T = TypeVar("T")

#: HubSpot ``sourceType`` values of a phone the caller may have typed in themselves: a
#: form, a meetings-booking page, a chat conversation, or a sync from Salesforce (which may
#: carry a Web-to-Lead phone). A value with no history at all is not trusted either.
UNTRUSTED_PHONE_SOURCES = frozenset({"FORM", "MEETINGS", "CONVERSATIONS", "SALESFORCE"})

#: ``matched``: a trusted phone matches; ``untrusted``: only a phone the caller could have
#: set matches (an operator signal, never told to the caller); ``no_match``: otherwise.
PhoneVerdict = Literal["matched", "untrusted", "no_match"]


@dataclass(frozen=True)
class PhoneCheck:
    """The outcome of one check: the verdict and, when ``matched``, the record."""

    verdict: PhoneVerdict
    record: CrmContact | None = None


async def trusted_phone_match(rt: ToolRuntime, email: str, number: str) -> PhoneCheck | None:
    """Compare ``number`` with the trusted CRM phones of ``email``.

    Returns ``None`` when no CRM is configured (nothing was asked). Raises ``ToolError``
    with the CRM fallback sentence when no trusted phone matched and a CRM could not
    answer (the check could not be completed; it does not count)."""
    sf, hs = rt.services.salesforce, rt.services.hubspot
    checks: list[Callable[[], Awaitable[tuple[CrmContact, bool] | None]]] = []
    if sf is not None:

        async def salesforce() -> tuple[CrmContact, bool] | None:
            assert sf is not None
            contact = await _read(rt, "salesforce", lambda: sf.find_contact(email))
            return (contact, True) if contact is not None else None

        checks.append(salesforce)
    if hs is not None:

        async def hubspot() -> tuple[CrmContact, bool] | None:
            assert hs is not None
            found = await _read(rt, "hubspot", lambda: hs.find_contact_phone(email))
            if found is None:
                return None
            contact, source = found
            return contact, source is not None and source not in UNTRUSTED_PHONE_SOURCES

        checks.append(hubspot)
    if not checks:
        return None
    # Both run to the end, whatever the first answers: the same work for every address.
    results = await asyncio.gather(*(check() for check in checks), return_exceptions=True)
    untrusted = failed = False
    for result in results:
        if isinstance(result, ToolError):
            failed = True
        elif isinstance(result, BaseException):
            raise result
        elif result is not None and same_phone(result[0].phone, number):
            if result[1]:
                return PhoneCheck("matched", result[0])
            untrusted = True
    if failed:
        raise ToolError(ACCOUNT_FALLBACK)
    return PhoneCheck("untrusted" if untrusted else "no_match")


async def _read(rt: ToolRuntime, service: str, call: Callable[[], Awaitable[T]]) -> T | None:
    """One protected CRM read; ``None`` when the CRM says there is no such person."""
    try:
        # A read: the vendor's answers (NotFound, InvalidRequest) reach this body.
        return await rt.protected(service, call, ACCOUNT_FALLBACK, kind=READ)
    except (NotFound, InvalidRequest):
        return None
