"""Salesforce stand-in: client-credentials tokens, a strict SOQL endpoint, Task creation.

Seeded from :data:`~src.sandbox.data.TRIAL_USERS` (users with ``in_salesforce``, as a Lead
or Contact per ``salesforce_object``), so an email means the same person here as in the
other sandboxes.

Endpoints (vendor shapes):

* ``POST /services/oauth2/token`` (form): ``grant_type=client_credentials`` with the
  sandbox client id/secret. Unknown client id -> 400 ``invalid_client_id``; wrong secret
  -> 401 ``invalid_client``; other grants -> 400 ``unsupported_grant_type``. Issued tokens
  are remembered; :meth:`SalesforceServer.expire_tokens` forgets them (the next data call
  answers 401, as after a session timeout). Set ``token_expires_in`` to announce a lifetime.
* ``GET /services/data/vXX.X/query?q=<SOQL>``, the REST Query resource. As on Salesforce,
  any other method (``POST`` with a JSON body, as the bundled reference files it) is 405
  ``METHOD_NOT_ALLOWED``, and an unknown resource is 404 ``NOT_FOUND``. The SOQL is
  *parsed*, strictly, for the one shape the client sends::

      SELECT f1, f2.Sub, ... FROM Lead|Contact WHERE Email = '<literal>'
          [ORDER BY <field> [ASC|DESC]] [LIMIT n]

  The literal is unescaped exactly as Salesforce does (``\\\\ \\' \\" \\n \\r \\t \\b \\f``,
  letters case-insensitive; any other backslash sequence is an error, ``\\%``/``\\_``
  included since they are ``LIKE``-only). Anything else, such as text after a literal
  an injection closed early, is 400 ``MALFORMED_QUERY``; an unknown field is 400
  ``INVALID_FIELD``. Matching is exact, case-insensitive equality, so no query can return
  another person's row.
* ``POST /services/data/vXX.X/sobjects/Task``: stores the Task on :attr:`tasks`. The
  ``WhoId``, when sent (a Task without one is attached to nobody), must be a seeded
  Lead/Contact and an ``OwnerId``, when sent, a seeded user
  (``005...``; a queue cannot own a Task here): else 400 ``INVALID_CROSS_REFERENCE_KEY``,
  or 400 ``MALFORMED_ID`` when the value is not even shaped like a 15/18-character id.
  Records are owned by users, or by :data:`SANDBOX_LEAD_QUEUE_ID` when added so.

Data errors use Salesforce's list shape ``[{"message", "errorCode", "fields"?}]``; a
missing, unknown or expired bearer token is 401 ``INVALID_SESSION_ID``. The ``lock-row``
fault answers 400 ``UNABLE_TO_LOCK_ROW`` (transient; nothing applied).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..validation import salesforce_id_checksum
from .base import SandboxServer, bearer_token
from .data import SANDBOX_CREDENTIALS, TRIAL_USERS
from .write_refs import is_task_query, task_query

__all__ = [
    "SANDBOX_LEAD_QUEUE_ID",
    "SANDBOX_TASK_OWNER_ID",
    "SalesforceServer",
    "SoqlError",
    "SoqlQuery",
    "parse_soql",
]

# Users (key prefix 005) who own the seeded records; one more, SANDBOX_TASK_OWNER_ID, is
# the fallback owner for Tasks on records a queue owns (SALESFORCE_TASK_OWNER_ID).
_USERS = {
    "005Hs00000A1b2cIAB": "Priya Patel",
    "005Hs00000A1b2dIAB": "Marcus Chen",
    "005Hs00000A1b2eIAB": "Trialist Desk",
}
_OWNERS = ("005Hs00000A1b2cIAB", "005Hs00000A1b2dIAB")
SANDBOX_TASK_OWNER_ID = "005Hs00000A1b2eIAB"
SANDBOX_LEAD_QUEUE_ID = "00GHs000001QueuMAC"
_LEAD_STATUS = "Open - Not Contacted"

# Selectable fields per object; dotted names are parent relationships.
_FIELDS: dict[str, frozenset[str]] = {
    "Lead": frozenset(
        {
            "Id",
            "FirstName",
            "LastName",
            "Name",
            "Email",
            "Company",
            "Title",
            "Phone",
            "Status",
            "Owner.Id",
            "Owner.Name",
            "LastModifiedDate",
        }
    ),
    "Contact": frozenset(
        {
            "Id",
            "FirstName",
            "LastName",
            "Name",
            "Email",
            "Title",
            "Phone",
            "Account.Name",
            "Owner.Id",
            "Owner.Name",
            "LastModifiedDate",
        }
    ),
}
_ID_SHAPE = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
_KEY_PREFIX = {"Lead": "00Q", "Contact": "003", "Task": "00T"}

# -- SOQL --------------------------------------------------------------------------------


class SoqlError(ValueError):
    """A query the sandbox refuses; ``code`` is the Salesforce ``errorCode``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SoqlQuery:
    fields: tuple[str, ...]
    sobject: str
    where_field: str
    value: str
    order_by: str | None = None
    descending: bool = False
    limit: int | None = None


_FIELD = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?"
_HEAD = re.compile(
    rf"\s*SELECT\s+(?P<fields>{_FIELD}(?:\s*,\s*{_FIELD})*)\s+FROM\s+(?P<obj>[A-Za-z_]\w*)"
    rf"\s+WHERE\s+(?P<where>{_FIELD})\s*=\s*'",
    re.IGNORECASE,
)
_TAIL = re.compile(
    r"(?:\s+ORDER\s+BY\s+(?P<order>[A-Za-z_]\w*)(?:\s+(?P<dir>ASC|DESC))?)?"
    r"(?:\s+LIMIT\s+(?P<limit>\d{1,5}))?\s*",
    re.IGNORECASE,
)
_UNESCAPE = {
    "\\": "\\",
    "'": "'",
    '"': '"',
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "b": "\b",
    "f": "\f",
}


def _read_literal(text: str, start: int) -> tuple[str, int]:
    """Decode the string literal whose opening quote ends at ``start``; returns the value
    and the index just after the closing quote."""
    out: list[str] = []
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "'":
            return "".join(out), i + 1
        if ch == "\\":
            if i + 1 >= len(text):
                break
            decoded = _UNESCAPE.get(text[i + 1].lower() if text[i + 1].isalpha() else text[i + 1])
            if decoded is None:
                raise SoqlError(
                    "MALFORMED_QUERY", f"Invalid string literal: bad escape at position {i}"
                )
            out.append(decoded)
            i += 2
            continue
        out.append(ch)
        i += 1
    raise SoqlError("MALFORMED_QUERY", "unexpected end of query: unterminated string literal")


def parse_soql(text: str) -> SoqlQuery:
    """Parse the single query shape the sandbox serves; raise :class:`SoqlError`."""
    head = _HEAD.match(text)
    if head is None:
        raise SoqlError("MALFORMED_QUERY", "unexpected token: the query shape is not supported")
    value, end = _read_literal(text, head.end())
    tail = _TAIL.fullmatch(text, end)
    if tail is None:
        raise SoqlError("MALFORMED_QUERY", f"unexpected token at position {end}")
    sobject = head.group("obj")
    canonical = next((o for o in _FIELDS if o.lower() == sobject.lower()), None)
    if canonical is None:
        raise SoqlError("INVALID_TYPE", f"sObject type '{sobject}' is not supported.")
    known = {f.lower(): f for f in _FIELDS[canonical]}
    fields = tuple(f.strip() for f in head.group("fields").split(","))
    for name in (*fields, head.group("where"), tail.group("order") or "Id"):
        if name.lower() not in known:
            raise SoqlError("INVALID_FIELD", f"No such column '{name}' on entity '{canonical}'.")
    if known[head.group("where").lower()] != "Email":
        raise SoqlError("MALFORMED_QUERY", "only Email filters are supported")
    limit = tail.group("limit")
    return SoqlQuery(
        fields=tuple(known[f.lower()] for f in fields),
        sobject=canonical,
        where_field="Email",
        value=value,
        order_by=known[tail.group("order").lower()] if tail.group("order") else None,
        descending=(tail.group("dir") or "").upper() == "DESC",
        limit=int(limit) if limit is not None else None,
    )


def _errors(status: int, code: str, message: str, fields: list[str] | None = None) -> web.Response:
    item: dict[str, Any] = {"message": message, "errorCode": code}
    if fields is not None:
        item["fields"] = fields
    return web.json_response([item], status=status)


# -- server ----------------------------------------------------------------------------------


class SalesforceServer(SandboxServer):
    """Salesforce sandbox. Fresh seeded state per instance; see the module docstring.

    Attributes:
        records: the Lead/Contact rows (dicts with Salesforce field names plus ``object``).
        tasks: created Tasks, in order (request fields plus ``Id``).
        tokens: access tokens currently accepted; ``issued``: every token ever issued.
        token_expires_in: seconds announced as ``expires_in`` on new tokens (default
            ``None``: omitted, as Salesforce does).
        client_id, client_secret: the accepted credentials (``SANDBOX_CREDENTIALS``).
    """

    name = "salesforce"

    def __init__(self) -> None:
        self.client_id = SANDBOX_CREDENTIALS["SALESFORCE_CLIENT_ID"]
        self.client_secret = SANDBOX_CREDENTIALS["SALESFORCE_CLIENT_SECRET"]
        self.tokens: set[str] = set()
        self.issued: list[str] = []
        self.token_expires_in: int | None = None
        self.records: list[dict[str, Any]] = []
        self.tasks: list[dict[str, Any]] = []
        self._ids = 0
        for user in TRIAL_USERS:
            if user.in_salesforce:
                self.add_person(
                    user.email,
                    user.first_name,
                    user.last_name,
                    object_type=user.salesforce_object,
                    company=user.company,
                    title=user.title,
                    phone=user.phone,
                )
        super().__init__()

    # -- data helpers --------------------------------------------------------------------
    def _new_id(self, object_type: str) -> str:
        self._ids += 1
        id15 = f"{_KEY_PREFIX[object_type]}5e000{self._ids:07d}"
        return id15 + salesforce_id_checksum(id15)

    def add_person(
        self,
        email: str,
        first_name: str,
        last_name: str,
        *,
        object_type: str = "Lead",
        company: str = "",
        title: str = "",
        phone: str = "",
        owner_id: str | None = None,
    ) -> str:
        """Add a Lead or Contact (for tests with unusual emails); returns its id.
        ``owner_id``: a user (``005...``) or :data:`SANDBOX_LEAD_QUEUE_ID`; default: one
        of the seeded reps, in turn."""
        if object_type not in ("Lead", "Contact"):
            raise ValueError("object_type must be 'Lead' or 'Contact'")
        record_id = self._new_id(object_type)
        self.records.append(
            {
                "object": object_type,
                "Id": record_id,
                "Email": email,
                "FirstName": first_name,
                "LastName": last_name,
                "Company": company,
                "Title": title,
                "Phone": phone or None,
                "Status": _LEAD_STATUS if object_type == "Lead" else None,
                "OwnerId": owner_id or _OWNERS[len(self.records) % len(_OWNERS)],
                "LastModifiedDate": f"2025-01-{1 + len(self.records) % 28:02d}T12:00:00.000+0000",
            }
        )
        return record_id

    def expire_tokens(self) -> None:
        """Invalidate every issued token: the next data call with one answers 401."""
        self.tokens.clear()

    def malformed_body(self, request: web.Request) -> web.Response:
        """Valid JSON that breaks the schema (a query result without its records)."""
        return web.json_response({"totalSize": "many", "done": "maybe"})

    def lock_row_answer(self, request: web.Request) -> web.Response:
        """``FaultKind.LOCK_ROW``: Salesforce's transient lock error (nothing applied)."""
        message = "unable to obtain exclusive access to this record or 1 records"
        return _errors(400, "UNABLE_TO_LOCK_ROW", message)

    # -- routes --------------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/services/oauth2/token", self._token)
        query = r"/services/data/{version:v\d+\.\d}/query"
        app.router.add_get(query, self._query)  # GET also answers HEAD
        app.router.add_route("*", query, self._method_not_allowed)
        app.router.add_post(r"/services/data/{version:v\d+\.\d}/sobjects/{sobject}", self._create)
        app.router.add_route("*", "/services/{tail:.*}", self._not_found)

    @staticmethod
    async def _method_not_allowed(request: web.Request) -> web.Response:
        return _errors(
            405,
            "METHOD_NOT_ALLOWED",
            f"HTTP Method '{request.method}' not allowed. Allowed are GET,HEAD",
        )

    @staticmethod
    async def _not_found(request: web.Request) -> web.Response:
        return _errors(404, "NOT_FOUND", "The requested resource does not exist")

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return web.json_response(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant type not supported",
                },
                status=400,
            )
        if form.get("client_id") != self.client_id:
            return web.json_response(
                {"error": "invalid_client_id", "error_description": "client identifier invalid"},
                status=400,
            )
        if form.get("client_secret") != self.client_secret:
            return web.json_response(
                {"error": "invalid_client", "error_description": "invalid client credentials"},
                status=401,
            )
        token = f"00DSANDBOX!{secrets.token_urlsafe(32)}"
        self.tokens.add(token)
        self.issued.append(token)
        body: dict[str, Any] = {
            "access_token": token,
            "instance_url": self.base_url,
            "id": f"{self.base_url}/id/00DSANDBOX/005SANDBOX",
            "token_type": "Bearer",
            "issued_at": "1735732800000",
            "signature": secrets.token_urlsafe(16),
        }
        if self.token_expires_in is not None:
            body["expires_in"] = self.token_expires_in
        return web.json_response(body)

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if bearer_token(request) in self.tokens:
            return None
        return _errors(401, "INVALID_SESSION_ID", "Session expired or invalid")

    async def _query(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        soql = request.query.get("q")
        if not isinstance(soql, str) or not soql:
            return _errors(400, "MALFORMED_QUERY", "A query string is required")
        if is_task_query(soql):  # the exactly-once search by write reference
            return task_query(self.tasks, soql, request.match_info["version"])
        try:
            query = parse_soql(soql)
        except SoqlError as exc:
            return _errors(400, exc.code, str(exc))
        version = request.match_info["version"]
        rows = [
            r
            for r in self.records
            if r["object"] == query.sobject and r["Email"].casefold() == query.value.casefold()
        ]
        if query.order_by is not None:
            rows.sort(key=lambda r: str(self._value(r, query.order_by or "Id")))
            if query.descending:
                rows.reverse()
        if query.limit is not None:
            rows = rows[: query.limit]
        records = [self._project(r, query, version) for r in rows]
        return web.json_response({"totalSize": len(records), "done": True, "records": records})

    @staticmethod
    def _value(row: dict[str, Any], field_name: str) -> Any:
        if field_name == "Name":
            return f"{row['FirstName']} {row['LastName']}".strip()
        return row.get(field_name)

    @staticmethod
    def _owner(owner_id: str) -> dict[str, Any]:
        kind = "User" if owner_id.startswith("005") else "Group"
        return {"attributes": {"type": kind, "url": f"/sobjects/{kind}/{owner_id}"}}

    def _project(self, row: dict[str, Any], query: SoqlQuery, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attributes": {
                "type": row["object"],
                "url": f"/services/data/{version}/sobjects/{row['object']}/{row['Id']}",
            }
        }
        for name in query.fields:
            if name.startswith("Owner."):
                owner = out.setdefault("Owner", self._owner(row["OwnerId"]))
                owner[name.removeprefix("Owner.")] = (
                    row["OwnerId"] if name == "Owner.Id" else _USERS.get(row["OwnerId"], "Leads")
                )
            elif name == "Account.Name":
                out["Account"] = {"attributes": {"type": "Account"}, "Name": row["Company"]}
            else:
                out[name] = self._value(row, name)
        return out

    async def _create(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        if request.match_info["sobject"] != "Task":
            return _errors(404, "NOT_FOUND", "The requested resource does not exist")
        try:
            body = await request.json()
        except ValueError:
            return _errors(400, "JSON_PARSER_ERROR", "The request body is not valid JSON")
        if not isinstance(body, dict):
            return _errors(400, "JSON_PARSER_ERROR", "Expected a JSON object")
        subject = body.get("Subject")
        if not isinstance(subject, str) or not subject.strip():
            return _errors(
                400, "REQUIRED_FIELD_MISSING", "Required fields are missing: [Subject]", ["Subject"]
            )
        if len(subject) > 255:
            return _errors(400, "STRING_TOO_LONG", "Subject: data value too large", ["Subject"])
        for name, label in (("WhoId", "Name ID"), ("OwnerId", "Assigned To ID")):
            value = body.get(name)
            if value is not None and not (
                isinstance(value, str)
                and re.fullmatch(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?", value)
            ):
                return _errors(
                    400, "MALFORMED_ID", f"{label}: id value of incorrect type: {value}", [name]
                )
        who_id = body.get("WhoId")
        # No WhoId: a Task on nobody (an unverified intake), as Salesforce allows.
        if who_id is not None and not any(r["Id"] == who_id for r in self.records):
            return _errors(
                400,
                "INVALID_CROSS_REFERENCE_KEY",
                "invalid cross reference id",
                ["WhoId"],
            )
        owner_id = body.get("OwnerId")
        if owner_id is not None and owner_id not in _USERS:
            # Tasks are owned by users; a queue or an unknown id is refused.
            return _errors(
                400,
                "INVALID_CROSS_REFERENCE_KEY",
                "invalid cross reference id",
                ["OwnerId"],
            )
        task_id = self._new_id("Task")
        self.tasks.append({**body, "Id": task_id})
        return web.json_response({"id": task_id, "success": True, "errors": []}, status=201)
