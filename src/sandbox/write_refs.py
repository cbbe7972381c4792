"""The exactly-once searches, served strictly: the Salesforce Task query by write
reference (``SELECT Id FROM Task WHERE WhoId = '…'|null AND Subject LIKE '%…%'``) and the
HubSpot notes search (``hs_note_body`` ``CONTAINS_TOKEN``, answering only the properties
asked for, ``limit`` results per page, ``paging.next.after`` to the next). Anything else
about Tasks or notes is refused the way the vendor refuses it (e.g. SOQL cannot filter on
the long text ``Description``)."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

__all__ = ["is_task_query", "note_search", "task_query"]

_TASK = re.compile(r"\s*SELECT\s.+?\sFROM\s+Task\b", re.IGNORECASE | re.DOTALL)
_TASK_REF = re.compile(
    r"\s*SELECT\s+Id\s+FROM\s+Task\s+WHERE\s+WhoId\s*=\s*"
    r"(?:'(?P<who>[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?)'|(?P<null>null))"
    r"\s+AND\s+Subject\s+LIKE\s+'(?P<pat>(?:[^'\\]|\\.)*)'(?:\s+LIMIT\s+(?P<limit>\d{1,5}))?\s*",
    re.IGNORECASE,
)


def is_task_query(soql: str) -> bool:
    return _TASK.match(soql) is not None


def _like(pattern: str) -> re.Pattern[str]:
    """SOQL LIKE (case-insensitive; ``%`` any run, ``_`` one character, ``\\%``/``\\_``
    and the string escapes literal) as a regex."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def _sf_error(code: str, message: str) -> web.Response:
    return web.json_response([{"message": message, "errorCode": code}], status=400)


def task_query(tasks: list[dict[str, Any]], soql: str, version: str) -> web.Response:
    if re.search(r"\bDescription\b\s*(=|LIKE)", soql, re.IGNORECASE):
        return _sf_error("INVALID_FIELD", "field 'Description' can not be filtered in a query call")
    m = _TASK_REF.fullmatch(soql)
    if m is None:
        return _sf_error("MALFORMED_QUERY", "unexpected token: the Task query is not supported")
    like = _like(m.group("pat"))
    who = None if m.group("null") else m.group("who")  # WhoId = null: Tasks on nobody
    rows = [t for t in tasks if t.get("WhoId") == who and like.fullmatch(t["Subject"])]
    if m.group("limit") is not None:
        rows = rows[: int(m.group("limit"))]
    records = [
        {
            "attributes": {
                "type": "Task",
                "url": f"/services/data/{version}/sobjects/Task/{t['Id']}",
            },
            "Id": t["Id"],
        }
        for t in rows
    ]
    return web.json_response({"totalSize": len(records), "done": True, "records": records})


def _hs_error(message: str) -> web.Response:
    return web.json_response(
        {"status": "error", "category": "VALIDATION_ERROR", "message": message}, status=400
    )


def note_search(notes: list[Any], body: Any) -> web.Response:
    """``notes``: the sandbox's notes (``.body``, ``.to_json()``)."""
    groups = body.get("filterGroups") if isinstance(body, dict) else None
    if not isinstance(groups, list) or len(groups) != 1 or not isinstance(groups[0], dict):
        return _hs_error("filterGroups must hold exactly one group")
    filters = groups[0].get("filters")
    if not isinstance(filters, list) or len(filters) != 1 or not isinstance(filters[0], dict):
        return _hs_error("the filter group must hold exactly one filter")
    flt = filters[0]
    if flt.get("propertyName") != "hs_note_body" or flt.get("operator") != "CONTAINS_TOKEN":
        return _hs_error("only hs_note_body CONTAINS_TOKEN is supported")
    value = flt.get("value")
    if not isinstance(value, str) or not value.strip():
        return _hs_error("the filter needs a value")
    limit = body.get("limit", 10)
    if not isinstance(limit, int) or not 1 <= limit <= 200:
        return _hs_error("limit must be between 1 and 200")
    after = body.get("after", "0")
    if not isinstance(after, str) or not after.isdigit():
        return _hs_error("after must be a paging cursor")
    wanted = body.get("properties", [])
    if not isinstance(wanted, list) or not all(isinstance(p, str) for p in wanted):
        return _hs_error("properties must be a list of property names")
    token = value.strip().lower()
    hits = [n for n in notes if token in re.findall(r"[a-z0-9]+", n.body.lower())]
    start = int(after)
    results = []
    for note in hits[start : start + limit]:
        # As HubSpot: only the properties asked for, plus the object id.
        shown = note.to_json()
        props = {k: v for k, v in shown["properties"].items() if k in wanted}
        shown["properties"] = {**props, "hs_object_id": note.id}
        results.append(shown)
    answer: dict[str, Any] = {"total": len(hits), "results": results}
    if start + limit < len(hits):
        answer["paging"] = {"next": {"after": str(start + limit)}}
    return web.json_response(answer)
