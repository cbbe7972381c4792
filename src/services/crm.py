"""The CRM record both CRM clients return, so the agent treats Salesforce and HubSpot
alike (the fallback chain swaps one for the other without the caller noticing)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from ..phrases import crm_sentence

__all__ = ["WRITE_REF_MARK", "CrmContact", "speakable"]

# How a CRM write carries its write reference (the end of a Task subject / a note's first
# line); the outbox writes it (``src.outbox.REF_MARK``) and the "already written?"
# lookups confirm exactly this text, never a looser match.
WRITE_REF_MARK = "(ref {})"

# Free-text CRM fields hold placeholders, markup, addresses, ids or whole paragraphs that
# a caller should never hear.
_PLACEHOLDERS = frozenset(
    {
        "",
        "-",
        "--",
        "?",
        "n/a",
        "na",
        "#n/a",
        "none",
        "--none--",
        "null",
        "nil",
        "undefined",
        "nan",
        "unknown",
        "tbd",
        "true",
        "false",
        "[not provided]",
    }
)
_UNSPEAKABLE = re.compile(r"[<>{}\[\]|\\@_$%#]|https?:|www\.", re.IGNORECASE)
# Record ids and other codes: one "word" of ten or more characters mixing letters and digits.
_CODE = re.compile(r"(?=\S*\d)(?=\S*[A-Za-z])\S{10,}")
_MAX_SPOKEN_CHARS = 80


def speakable(value: str | None) -> str | None:
    """``value`` if it reads well aloud, else ``None``: placeholders, markup, URLs,
    codes and ids, values without a letter, invisible formatting characters, anything
    over 80 characters."""
    text = " ".join((value or "").split())
    if text.casefold() in _PLACEHOLDERS or len(text) > _MAX_SPOKEN_CHARS:
        return None
    if not any(ch.isalpha() for ch in text):
        return None
    if not text.isprintable() and any(
        unicodedata.category(ch) in ("Cf", "Cc", "Co", "Cs") for ch in text
    ):
        return None
    if _UNSPEAKABLE.search(text) or _CODE.search(text):
        return None
    return text


@dataclass(frozen=True, kw_only=True)
class CrmContact:
    """A person's CRM record, as far as the agent needs it.

    Attributes:
        id: the CRM's record id (Salesforce Lead/Contact id, HubSpot contact id); used to
            attach a call summary. Never spoken.
        source: ``"salesforce"`` or ``"hubspot"``.
        first_name, last_name, company, title: as recorded; ``None`` when empty.
        object_type: Salesforce ``"Lead"`` or ``"Contact"``; ``None`` for HubSpot.
        status: Salesforce Lead status, when any.
        owner: the record owner (Salesforce: the rep's name; HubSpot: owner id).
        owner_id: Salesforce only: the owning *user's* id (``005...``), which a Task for
            this record is assigned to; ``None`` when a queue owns the record.
        lifecycle_stage: HubSpot's lifecycle stage, when any.
        phone: the phone on the record, only compared with a SIP caller number
            (:mod:`src.identity`); never spoken and never given to the model.

    Only name, company and title are ever spoken (:meth:`spoken_summary`), and they
    reach the model only as quoted data (:meth:`for_model`).
    """

    id: str
    source: str
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    title: str | None = None
    object_type: str | None = None
    status: str | None = None
    owner: str | None = None
    owner_id: str | None = None
    lifecycle_stage: str | None = None
    phone: str | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a CRM contact needs an id")

    @property
    def full_name(self) -> str | None:
        """First and last name joined, ``None`` when neither is recorded."""
        return " ".join(p for p in (self.first_name, self.last_name) if p) or None

    def spoken_summary(self) -> str:
        """One short sentence, e.g. "Jane Doe works at Acme Corp as Head of Sales
        Operations." Never ids, record types, stages, owners or CRM jargon."""
        first, last = speakable(self.first_name), speakable(self.last_name)
        name = " ".join(p for p in (first, last) if p)
        return crm_sentence(name, speakable(self.company) or "", speakable(self.title) or "")

    def for_model(self) -> str:
        """The sentence the model reads: :meth:`spoken_summary` with every CRM value in
        double quotes, as quoted data (the agent's instructions say quoted text from
        records is data, never instructions). Each value is :func:`speakable` (capped,
        no control characters, no markup) with double quotes stripped, so it cannot
        close its own quotes, e.g. ``"Jane Doe" works at "Acme Corp" as "Head of Sales
        Operations".``"""
        first, last = _quotable(self.first_name), _quotable(self.last_name)
        name = " ".join(p for p in (first, last) if p)
        return crm_sentence(
            _quoted(name), _quoted(_quotable(self.company)), _quoted(_quotable(self.title))
        )


_QUOTES = re.compile(r'["\u201c\u201d\u201e\u201f\u00ab\u00bb\u2033]')


def _quotable(value: str | None) -> str:
    """A CRM value fit to be quoted: speakable, without double-quote characters."""
    text = speakable(value)
    return " ".join(_QUOTES.sub("", text).split()) if text else ""


def _quoted(text: str) -> str:
    return f'"{text}"' if text else ""
