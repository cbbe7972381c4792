"""Input validation shared by the agent, the settings and the clients: one definition
of a well-formed email address, so they never disagree about what a caller may say."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["is_valid_email", "is_valid_salesforce_id", "salesforce_id_checksum"]

_NON_ASCII = r"[^\x00-\x7f\s]"
_ATEXT = rf"(?:[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-]|{_NON_ASCII})"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|{_NON_ASCII}|\\[\x20-\x7e])*"'
_LABEL_CH = rf"(?:[A-Za-z0-9]|{_NON_ASCII})"
_LABEL = rf"{_LABEL_CH}(?:(?:{_LABEL_CH}|-)*{_LABEL_CH})?"
_EMAIL = re.compile(rf"(?P<local>{_DOT_ATOM}|{_QUOTED})@(?P<domain>{_LABEL}(?:\.{_LABEL})+)")


def is_valid_email(email: str) -> bool:
    """Whether ``email`` has the syntax of an address: a dot-atom or quoted local part of
    at most 64 characters, ``@``, and a dotted domain; at most 254 characters in all;
    non-ASCII letters allowed (RFC 6531); no control, format or surrogate characters.

    Deliberately permissive about *which* characters (``o'brien@...``, ``a+b@...`` are
    real addresses); it is a guard against garbage, while :func:`soql_quote` is what
    makes any value safe in a query.
    """
    if not email or len(email) > 254:
        return False
    # (printable text has no category C character: the walk is for the rest)
    if not email.isprintable() and any(unicodedata.category(ch).startswith("C") for ch in email):
        return False
    match = _EMAIL.fullmatch(email)
    return match is not None and len(match.group("local")) <= 64


_SF_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
_SF_CHECKSUM_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def salesforce_id_checksum(id15: str) -> str:
    """The three characters Salesforce appends to a 15-character id to make the
    case-insensitive 18-character form: one per block of five, encoding which of the
    block's characters are upper-case letters."""
    out = []
    for block in range(3):
        bits = sum(1 << i for i, ch in enumerate(id15[block * 5 : block * 5 + 5]) if ch.isupper())
        out.append(_SF_CHECKSUM_CHARS[bits])
    return "".join(out)


def is_valid_salesforce_id(value: str, *, prefix: str | None = None) -> bool:
    """Whether ``value`` is a Salesforce record id: 15 case-sensitive alphanumerics, or 18
    whose last three are the checksum of the first 15 (compared case-insensitively, as
    Salesforce does). ``prefix`` (e.g. ``"005"`` for a User) also checks the key prefix."""
    if not _SF_ID.fullmatch(value):
        return False
    if prefix is not None and not value.startswith(prefix):
        return False
    return len(value) == 15 or value[15:].upper() == salesforce_id_checksum(value[:15])
