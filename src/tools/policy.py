"""Who may hear what: the disclosure policy, enforced here in code, never in the prompt.

Every tool that reads a person's data (usage, CRM record) asks :func:`readable_address`
first. With a *verified* identity the lookup is for that identity only: a different
email the caller (or the model) names gets :data:`~src.phrases.ONLY_THIS_CALL` and no
request is made. Without one, the email the caller says becomes a *claimed* identity,
good for booking a demo and logging the call but not for hearing usage figures or CRM
details (:data:`~src.phrases.PRIVACY_CLAIMED`); on a phone call the claim is verified
when the caller number matches a CRM phone the caller cannot have set themselves
(:mod:`src.tools.verify`).

No answer to a caller who is not verified depends on whether an address has a record:
a read is refused without any request (or, on a phone call, after a check that makes the
same requests for every address), and a write goes to the *unverified intake*
(:func:`intake_write`), never to the record of the address they named.

Identity decisions take the conversation's :class:`~src.identity.IdentityLedger` lock, so
the parallel tools of one reply decide one after another; the phone checks are counted
in that ledger, which no rollback undoes (``MAX_SIP_CHECKS`` holds).

A refusal is a :class:`Refusal` the tool returns as its output (a normal answer, so the
claimed identity it recorded survives the error-recovery rollback), after an operator log
line (email masked) and a ``pandadoc_identity_refusals_total{tool,reason}`` count. Reasons:
``other_email`` (a verified caller asked about someone else), ``unverified`` (a claimed
identity; no phone check was possible), ``sip_no_match`` (the phone check found no
matching trusted phone), ``sip_untrusted`` (only a phone the caller could have set
matched: a Lead's or a form's), ``sip_limit`` (``MAX_SIP_CHECKS`` already used), and
``intake`` (a write sent to the unverified intake instead of a record).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from livekit.agents.llm import ToolError

from src.identity import CallerIdentity
from src.metrics import CALLER_IDENTITIES, IDENTITY_REFUSALS
from src.phrases import ASK_EMAIL, BAD_EMAIL, ONLY_THIS_CALL, PRIVACY_CLAIMED
from src.redaction import get_logger, mask_email
from src.services.crm import CrmContact
from src.state import TrialistData
from src.tools.runtime import ToolRuntime
from src.tools.verify import trusted_phone_match
from src.validation import is_valid_email

__all__ = [
    "MAX_SIP_CHECKS",
    "Access",
    "Refusal",
    "count_intake",
    "readable_address",
    "record_identity",
]

logger = get_logger("pandadoc.agent")

#: Distinct emails whose CRM phone is compared with the caller number, per call (a
#: misheard address gets a second chance; a caller cannot probe a list of addresses).
MAX_SIP_CHECKS = 2

RefusalReason = Literal[
    "other_email", "unverified", "sip_no_match", "sip_untrusted", "sip_limit", "intake"
]


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


def count_intake(tool: str, claimed: str, identity: CallerIdentity) -> None:
    """A non-verified caller's write went to the unverified intake: counted and logged
    (masked) like a refusal, since it was refused the claimed address's record."""
    IDENTITY_REFUSALS.labels(tool=tool, reason="intake").inc()
    logger.info(
        "Identity policy refused %s (intake): the write goes to the unverified intake, "
        "not to the record of %s; caller is %s",
        tool,
        mask_email(claimed),
        identity.describe(),
    )


def _said_email(email: object) -> str:
    candidate = str(email or "").strip().lower()
    if candidate and not is_valid_email(candidate):
        raise ToolError(BAD_EMAIL)
    return candidate


def _verified_access(said: str, identity: CallerIdentity, tool: str) -> Access | Refusal | None:
    if not (identity.verified and identity.email):
        return None
    if said and said != identity.email:
        return _refuse(tool, "other_email", said, identity)
    return Access(identity.email)


async def readable_address(
    rt: ToolRuntime, data: TrialistData, email: object, tool: str
) -> Access | Refusal:
    """Whether ``tool`` may read the data of ``email`` (the model's argument: what the
    caller said, or empty for "the caller on this call") and for which address.

    Raises ``ToolError`` with a question when the email is malformed or missing, and
    the CRM fallback sentence when a phone caller's number cannot be checked now."""
    said = _said_email(email)
    decided = _verified_access(said, data.identity, tool)
    if decided is not None:
        return decided
    async with data.identity_ledger.lock:
        # A sibling tool may have decided while we waited: read the identity again.
        decided = _verified_access(said, data.identity, tool)
        if decided is not None:
            return decided
        return await _decide(rt, data, said or data.identity.email or "", tool)


async def _decide(rt: ToolRuntime, data: TrialistData, address: str, tool: str) -> Access | Refusal:
    """The identity decision for a caller who is not verified (under the ledger lock)."""
    if not address:
        raise ToolError(ASK_EMAIL)
    identity, ledger = data.identity, data.identity_ledger
    reason: RefusalReason = "unverified"
    if identity.caller_number and rt.settings.agent.sip_verify_from != "off":
        if address == ledger.phone_verified:
            # Matched earlier in this call, then rolled back with a failed tool: no new
            # request, the match still holds.
            return _verify(data, identity, address, None)
        if address in ledger.phone_checks:
            reason = "sip_no_match"  # checked before in this call: never a second request
        elif len(ledger.phone_checks) >= MAX_SIP_CHECKS:
            reason = "sip_limit"
        else:
            check = await trusted_phone_match(rt, address, identity.caller_number)
            if check is not None:
                ledger.phone_checks.append(address)  # in place: no rollback undoes it
                if check.verdict == "matched":
                    ledger.phone_verified = address
                    return _verify(data, identity, address, check.record)
                reason = "sip_untrusted" if check.verdict == "untrusted" else "sip_no_match"
                logger.info(
                    "Caller number does not match a trusted CRM phone for %s%s; identity "
                    "stays claimed",
                    mask_email(address),
                    " (only a phone the caller could have set matches)"
                    if check.verdict == "untrusted"
                    else "",
                )
        identity = replace(identity, sip_checked=tuple(ledger.phone_checks))
    if identity.email != address or identity.trust != "claimed":
        identity = identity.claim(address)
        record_identity(identity)
        logger.info("Caller identity: claimed (%s)", mask_email(address))
    data.identity = identity
    data.switch_email(address)
    return _refuse(tool, reason, address, identity)


def _verify(
    data: TrialistData, identity: CallerIdentity, address: str, record: CrmContact | None
) -> Access:
    checked = tuple(data.identity_ledger.phone_checks)
    data.identity = replace(identity, sip_checked=checked).verify_by_phone(address)
    data.switch_email(address)
    record_identity(data.identity)
    logger.info(
        "Caller identity: verified, the caller number matches a trusted CRM phone of %s",
        mask_email(address),
    )
    return Access(address, record)
