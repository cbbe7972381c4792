"""Who the caller is, and how far we trust it.

The trust level is decided once per conversation (see README "Privacy and identity"):

* ``verified``: the job's dispatch said who the caller is (participant attributes or job
  metadata set by the app's backend), the console/dev setting ``TRIALIST_EMAIL``, or a
  phone call whose caller number (LiveKit's SIP attribute ``sip.phoneNumber``) matches the
  phone on the CRM record of the email the caller gave;
* ``claimed``: an email the caller said, nothing more;
* ``none``: nobody yet.

What each level may hear is enforced in :mod:`src.tools.policy`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from livekit import rtc

from src.redaction import get_logger, mask_email
from src.services.crm import speakable
from src.validation import is_valid_email

__all__ = [
    "SIP_CALLER_NUMBER",
    "CallerIdentity",
    "IdentityLedger",
    "IdentitySource",
    "TrustLevel",
    "caller_number",
    "identity_at_start",
    "identity_from_job",
    "normalize_phone",
    "same_phone",
    "trusted_attributes",
]

logger = get_logger("pandadoc.agent")

TrustLevel = Literal["verified", "claimed", "none"]
IdentitySource = Literal["dispatch", "console", "sip", "spoken", ""]

#: The LiveKit SIP participant attribute holding the caller's own number (E.164).
SIP_CALLER_NUMBER = "sip.phoneNumber"

_DIGITS = re.compile(r"\d")
_PHONE_TEXT = re.compile(r"[\d\s().+\-/]*")
_EXTENSION = re.compile(r"(?i)\s*(?:ext\.?|x|#)\s*\d+\s*$")


@dataclass(frozen=True)
class CallerIdentity:
    """The caller's identity for this conversation.

    Attributes:
        trust: ``"verified"``, ``"claimed"`` or ``"none"``.
        email: the identity's email (``None`` when ``trust`` is ``"none"``).
        source: how it was decided: ``dispatch``, ``console``, ``sip`` (caller number
            matched the CRM phone) or ``spoken`` (claimed).
        caller_number: the SIP caller number as E.164 digits, when the call is a phone call.
        sip_checked: emails whose CRM phone was already compared with the caller number.
    """

    trust: TrustLevel = "none"
    email: str | None = None
    source: IdentitySource = ""
    caller_number: str | None = None
    sip_checked: tuple[str, ...] = ()

    @property
    def verified(self) -> bool:
        return self.trust == "verified"

    def describe(self) -> str:
        """For log lines: ``verified(dispatch)``, ``claimed(spoken)``, ``none``."""
        return f"{self.trust}({self.source})" if self.source else self.trust

    def claim(self, email: str) -> CallerIdentity:
        """This identity with ``email`` claimed by the caller (never downgrades a verified one)."""
        if self.verified:
            return self
        return replace(self, trust="claimed", email=email, source="spoken")

    def verify_by_phone(self, email: str) -> CallerIdentity:
        """Verified: the caller number matched the CRM phone of ``email``."""
        return replace(self, trust="verified", email=email, source="sip")

    def checked(self, email: str) -> CallerIdentity:
        """This identity remembering that ``email``'s CRM phone was compared."""
        return replace(self, sip_checked=(*self.sip_checked, email))


@dataclass
class IdentityLedger:
    """What one conversation's identity decisions share, outside any tool's change set.

    ``lock`` makes each decision (read the identity, maybe check a phone, write the new
    identity and address) atomic among the parallel tools of a reply. ``phone_checks``
    are the emails whose CRM phone was compared with the caller number (and
    ``phone_verified`` the one that matched): mutated in place, never rolled back with a
    failed tool, so ``MAX_SIP_CHECKS`` bounds the checks a call makes whatever fails
    afterwards."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock, compare=False)
    phone_checks: list[str] = field(default_factory=list)
    phone_verified: str | None = None  # the checked email whose trusted phone matched

    def __deepcopy__(self, memo: dict[int, object]) -> IdentityLedger:
        # A fresh, free lock; the facts copied.
        return IdentityLedger(
            phone_checks=list(self.phone_checks), phone_verified=self.phone_verified
        )


def identity_from_job(
    metadata: str, attributes: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """(email, name) of the trialist from participant attributes, else job metadata JSON.
    Untrusted input: anything malformed is ignored with a log line."""
    email = attributes.get("email") or None
    name = attributes.get("name") or None
    if metadata:
        try:
            meta = json.loads(metadata)
        except ValueError:
            logger.warning("Job metadata is not JSON; ignoring it")
            meta = {}
        if isinstance(meta, dict):
            email = email or (meta.get("email") if isinstance(meta.get("email"), str) else None)
            name = name or (meta.get("name") if isinstance(meta.get("name"), str) else None)
    if email is not None:
        email = email.strip().lower()
        if not is_valid_email(email):
            logger.warning("Ignoring a malformed trialist email from the job")
            email = None
    if name is not None:
        # Spoken in the greeting: only a name that reads well aloud (not an email, markup
        # or an id; speakable() already caps the length).
        name = speakable(name)
    return email, name


def normalize_phone(value: object) -> str | None:
    """A phone number as E.164 digits without the ``+``, or ``None`` when it is not one.

    Separators, a trailing extension and an international ``00`` prefix are dropped; a
    ten-digit number without a country code is read as North American (``1``). Anything
    else (letters, fewer than 8 or more than 15 digits) is not a number we can compare."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    text = _EXTENSION.sub("", value.strip())
    if not text or not _PHONE_TEXT.fullmatch(text) or text.count("+") > 1:
        return None
    if "+" in text and not text.startswith("+"):
        return None
    digits = "".join(_DIGITS.findall(text))
    if not text.startswith("+"):
        if digits.startswith("00"):
            digits = digits[2:]
        elif len(digits) == 10:
            digits = "1" + digits
    if not 8 <= len(digits) <= 15 or digits.startswith("0"):
        return None
    return digits


def same_phone(a: object, b: object) -> bool:
    """Whether two phone numbers are the same once normalized (never for non-numbers)."""
    left, right = normalize_phone(a), normalize_phone(b)
    return left is not None and left == right


def caller_number(attributes: Mapping[str, str]) -> str | None:
    """The SIP caller number from a participant's attributes, normalized; ``None`` when
    the participant is not a phone caller or the number is withheld/malformed."""
    raw = attributes.get(SIP_CALLER_NUMBER)
    if not raw:
        return None
    number = normalize_phone(raw)
    if number is None:
        logger.warning("Ignoring a SIP caller number that is not a phone number")
    return number


def trusted_attributes(participant: rtc.RemoteParticipant | None) -> dict[str, str]:
    """The participant's attributes as they joined (set by the token from the app's
    backend, or by LiveKit SIP for a phone caller). ``sip.*`` keys count only on a SIP
    participant: anyone else carrying them did not come through a phone trunk."""
    if participant is None:
        return {}
    attributes = dict(participant.attributes)
    if participant.kind != rtc.ParticipantKind.PARTICIPANT_KIND_SIP:
        attributes = {k: v for k, v in attributes.items() if not k.startswith("sip.")}
    return attributes


def identity_at_start(
    metadata: str,
    attributes: Mapping[str, str],
    *,
    console_email: str | None = None,
) -> tuple[CallerIdentity, str | None]:
    """The identity a conversation starts with, and the caller's name when known.

    The dispatch wins (attributes, then job metadata); else the console/dev setting
    ``TRIALIST_EMAIL``; else nobody yet, with the SIP caller number kept for a later
    check against the CRM. One log line says which, with the email masked."""
    email, name = identity_from_job(metadata, attributes)
    number = caller_number(attributes)
    if email is not None:
        identity = CallerIdentity("verified", email, "dispatch", number)
        logger.info("Caller identity: verified by the dispatch (%s)", mask_email(email))
    elif console_email:
        identity = CallerIdentity("verified", console_email, "console", number)
        logger.info(
            "Caller identity: verified from the TRIALIST_EMAIL setting (%s); "
            "console/dev identity, not from the dispatch",
            mask_email(console_email),
        )
    else:
        identity = CallerIdentity(caller_number=number)
        logger.info(
            "Caller identity: none yet (%s)",
            "phone call, caller number kept for a CRM check" if number else "no caller number",
        )
    return identity, name
