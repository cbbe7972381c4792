"""SOQL text for the Salesforce client: string literals quoted safely, and the exact
queries the client sends (kept apart so tests and the sandbox can build the same text)."""

from __future__ import annotations

import unicodedata
from typing import Literal

__all__ = ["person_query", "soql_quote", "task_ref_query"]

# Characters with an escape sequence inside a SOQL string literal (Salesforce SOQL and
# SOSL Reference, "Quoted String Escape Sequences").
_SOQL_ESCAPES = {
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}
_SOQL_LIKE_ESCAPES = {"%": "\\%", "_": "\\_"}
_TABLE = str.maketrans(_SOQL_ESCAPES)
_LIKE_TABLE = str.maketrans({**_SOQL_ESCAPES, **_SOQL_LIKE_ESCAPES})


def soql_quote(value: str, *, like: bool = False) -> str:
    """``value`` as a complete SOQL string literal, quotes included.

    Escapes backslash, single and double quotes, newline, carriage return, tab, backspace
    and form feed. With ``like=True`` (default ``False``) it also escapes ``%`` and ``_``
    so they match literally in a ``LIKE`` pattern; SOQL accepts those two escapes only in
    ``LIKE``, so never pass ``like=True`` for ``=``. Other control characters (category
    ``Cc``: NUL, ESC, DEL, C1 controls, ...) have no SOQL escape and raise ``ValueError``
    rather than being dropped, which would silently query a different value. Everything
    else, including non-ASCII text, is kept verbatim.

    >>> soql_quote("o'brien@example.com")
    "'o\\\\'brien@example.com'"
    """
    if not value.isprintable():  # printable text holds no control character at all
        for ch in value:
            if ch not in _SOQL_ESCAPES and unicodedata.category(ch) == "Cc":
                raise ValueError(f"control character U+{ord(ch):04X} cannot appear in SOQL")
    return "'" + value.translate(_LIKE_TABLE if like else _TABLE) + "'"


# Fields per object; a Contact's company is its Account's name.
_FIELDS: dict[str, tuple[str, ...]] = {
    "Contact": (
        *("Id", "FirstName", "LastName", "Title", "Account.Name"),
        *("Owner.Id", "Owner.Name", "Phone"),
    ),
    "Lead": (
        *("Id", "FirstName", "LastName", "Company", "Title", "Status"),
        *("Owner.Id", "Owner.Name", "Phone"),
    ),
}


def person_query(object_type: Literal["Lead", "Contact"], email: str) -> str:
    """The exact SOQL :meth:`SalesforceClient.find_person` sends for one object."""
    fields = ", ".join(_FIELDS[object_type])
    return (
        f"SELECT {fields} FROM {object_type} WHERE Email = {soql_quote(email)} "
        "ORDER BY LastModifiedDate DESC LIMIT 1"
    )


def task_ref_query(who_id: str | None, ref: str) -> str:
    """The SOQL that finds a Task by write reference (``who_id`` ``None``: an intake Task,
    ``WhoId = null``). Task.Description is a long text area, which SOQL cannot filter
    on, so the reference lives in the Subject."""
    pattern = soql_quote(f"(ref {ref})", like=True)[1:-1]
    who = "null" if who_id is None else soql_quote(who_id)
    return f"SELECT Id FROM Task WHERE WhoId = {who} AND Subject LIKE '%{pattern}%' LIMIT 1"
