"""Who may hear what: the disclosure policy, enforced here in code, never in the prompt.

Every tool that reads a person's data (usage, CRM record) asks :func:`readable_address`
first. With a *verified* identity the lookup is for that identity only: a different
email the caller (or the model) names gets :data:`~src.phrases.ONLY_THIS_CALL` and no
request is made. Without one, the email the caller says becomes a *claimed* identity,
good for booking a demo and logging the call but not for hearing usage figures or CRM
details (:data:`~src.phrases.PRIVACY_CLAIMED`); on a phone call the claim is verified
when the caller number matches the phone on the CRM record of that email.

A refusal is a :class:`Refusal` the tool returns as its output (a normal answer, so the
claimed identity it recorded survives the error-recovery rollback), after an operator log
line (email masked) and a ``pandadoc_identity_refusals_total`` count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from livekit.agents.llm import ToolError

from src.identity import CallerIdentity, same_phone
from src.metrics import CALLER_IDENTITIES, IDENTITY_REFUSALS
from src.phrases import ASK_EMAIL, BAD_EMAIL, ONLY_THIS_CALL, PRIVACY_CLAIMED
from src.redaction import get_logger, mask_email
from src.services.crm import CrmContact
from src.state import TrialistData
from src.tools.records import find_crm_record
from src.tools.runtime import ToolRuntime
from src.validation import is_valid_email

__all__ = ["MAX_SIP_CHECKS", "Access", "Refusal", "readable_address", "record_identity"]

logger = get_logger("pandadoc.agent")

#: Distinct emails whose CRM phone is compared with the caller number, per call (a
#: misheard address gets a second chance; a caller cannot probe a list of addresses).
MAX_SIP_CHECKS = 2

RefusalReason = Literal["other_email", "unverified"]


@dataclass(frozen=True)
class Refusal:
    """The policy said no: ``sentence`` is what the caller hears."""

    sentence: str
    reason: RefusalReason


@dataclass(frozen=True)
class Access:
    """The policy said yes, for ``email``; ``record`` is the CRM record already fetched
    to verify a phone caller (so the tool need not fetch it again)."""

    email: str
    record: CrmContact | None = None


def record_identity(identity: CallerIdentity) -> None:
    """Count an identity decision (``pandadoc_caller_identities_total``)."""
    CALLER_IDENTITIES.labels(trust=identity.trust, source=identity.source or "none").inc()


def _refuse(tool: str, reason: RefusalReason, asked: str, identity: CallerIdentity) -> Refusal:
    IDENTITY_REFUSALS.labels(tool=tool, reason=reason).inc()
    logger.info(
        "Identity policy refused %s (%s): asked about %s, caller is %s",
        tool,
        reason,
        mask_email(asked),
        identity.describe(),
    )
    return Refusal(ONLY_THIS_CALL if reason == "other_email" else PRIVACY_CLAIMED, reason)


def _said_email(email: object) -> str:
    candidate = str(email or "").strip().lower()
    if candidate and not is_valid_email(candidate):
        raise ToolError(BAD_EMAIL)
    return candidate


async def readable_address(
    rt: ToolRuntime, data: TrialistData, email: object, tool: str
) -> Access | Refusal:
    """Whether ``tool`` may read the data of ``email`` (the model's argument: what the
    caller said, or empty for "the caller on this call") and for which address.

    Raises ``ToolError`` with a question when the email is malformed or missing, and
    the CRM fallback sentence when a phone caller's number cannot be checked now."""
    said = _said_email(email)
    identity = data.identity
    if identity.verified and identity.email:
        if said and said != identity.email:
            return _refuse(tool, "other_email", said, identity)
        return Access(identity.email)
    address = said or identity.email
    if not address:
        raise ToolError(ASK_EMAIL)
    if identity.caller_number and (
        address not in identity.sip_checked and len(identity.sip_checked) < MAX_SIP_CHECKS
    ):
        record = await find_crm_record(rt, address)
        identity = identity.checked(address)
        if record is not None and same_phone(record.phone, identity.caller_number):
            data.identity = identity.verify_by_phone(address)
            data.email = address
            record_identity(data.identity)
            logger.info(
                "Caller identity: verified, the caller number matches the CRM phone of %s",
                mask_email(address),
            )
            return Access(address, record)
        logger.info(
            "Caller number does not match a CRM phone for %s; identity stays claimed",
            mask_email(address),
        )
    if identity.email != address or identity.trust != "claimed":
        identity = identity.claim(address)
        record_identity(identity)
        logger.info("Caller identity: claimed (%s)", mask_email(address))
    data.identity = identity
    data.email = address
    return _refuse(tool, "unverified", address, identity)
