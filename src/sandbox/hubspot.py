"""HubSpot CRM stand-in: contact search and note creation.

Speaks the shapes of ``reference/apis/hubspot-crm-search.openapi.yml``,
``hubspot-crm-contacts.openapi.yml`` and ``hubspot-engagement-notes.openapi.yml``:

* ``POST /crm/v3/objects/contacts/search``: ``filterGroups`` are OR-ed, the filters in a
  group AND-ed; operators ``EQ``/``NEQ`` (case-insensitive, as HubSpot compares emails),
  ``HAS_PROPERTY``/``NOT_HAS_PROPERTY`` and ``IN``; anything else is a 400. Only the
  requested ``properties`` are returned (a default set otherwise), ``limit`` (max 200) and
  an ``after`` cursor page the results.
* ``POST /crm/v3/objects/contacts/batch/read``: ``inputs`` by ``id`` or by a unique
  ``idProperty`` (``email``), the requested ``properties`` and ``propertiesWithHistory``
  (each value with ``timestamp`` and ``sourceType``, newest first). Inputs that match
  nothing make it a 207 with ``errors`` (``OBJECT_NOT_FOUND``), as HubSpot answers.
  :meth:`HubSpotServer.set_phone` records a phone change with its source (``FORM`` for
  a web form, ``CRM_UI`` for a rep).
* ``POST /crm/v3/objects/notes``: ``properties`` (string values, ``hs_timestamp``
  required) and ``associations``; an association to a contact that does not exist, or of
  a type other than ``HUBSPOT_DEFINED``/202 (note -> contact), is a 400. Created notes are
  kept in :attr:`HubSpotServer.notes` and answered with 201 and the note.

As on HubSpot, ``hs_timestamp`` must be an ISO 8601 date-time or epoch milliseconds
and an association target a numeric object id (else 400 ``VALIDATION_ERROR``); another
method on either path is 405 and an unknown ``/crm/`` path 404, in HubSpot's error shape.

Only seeded users with ``in_hubspot=True`` exist, with deterministic ids. Auth is
``Authorization: Bearer <HUBSPOT_ACCESS_TOKEN>`` from
:data:`~src.sandbox.data.SANDBOX_CREDENTIALS`; anything else is a 401 with HubSpot's
error body. A MALFORMED fault answers 200 with valid JSON of the wrong shape.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .base import SandboxServer, bearer_token
from .data import SANDBOX_CREDENTIALS, TRIAL_USERS, TrialUser
from .write_refs import note_search

__all__ = ["HubSpotServer", "SandboxNote", "contact_id_for"]

_DEFAULT_PROPERTIES = ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate")
_SEEDED_AT = "2025-01-06T09:00:00.000Z"
_LIFECYCLE = ("lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity")
_OWNERS = ("81234567", None)
_NOTE_TO_CONTACT = 202
_FIRST_NOTE_ID = 90_000_001
_SUPPORTED_OPERATORS = {"EQ", "NEQ", "HAS_PROPERTY", "NOT_HAS_PROPERTY", "IN"}


def contact_id_for(user: TrialUser) -> str:
    """The seeded HubSpot contact id of ``user`` (stable across runs)."""
    return str(51_000_000 + user.amplitude_id % 100_000)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _error(status: int, category: str, message: str) -> web.Response:
    return web.json_response(
        {
            "status": "error",
            "message": message,
            "correlationId": str(uuid.uuid4()),
            "category": category,
        },
        status=status,
    )


def _is_hubspot_time(value: str) -> bool:
    if value.isdigit():
        return True
    try:
        when = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        return False
    return "T" in value and when.tzinfo is not None


def _history_value(value: str, when: str, source_type: str) -> dict[str, str]:
    return {"value": value, "timestamp": when, "sourceType": source_type, "sourceId": ""}


def _bad_request(message: str) -> web.Response:
    return _error(400, "VALIDATION_ERROR", message)


@dataclass
class SandboxNote:
    """A note created through the sandbox."""

    id: str
    properties: dict[str, str]
    contact_ids: tuple[str, ...]
    associations: list[dict[str, Any]] = field(default_factory=list)
    created_at: str = ""

    @property
    def body(self) -> str:
        return self.properties.get("hs_note_body", "")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "properties": dict(self.properties),
            "createdAt": self.created_at,
            "updatedAt": self.created_at,
            "archived": False,
        }


class HubSpotServer(SandboxServer):
    """HubSpot CRM sandbox.

    Args:
        now: current time (aware, UTC) stamped on created notes.
        users: the seeded users, default :data:`TRIAL_USERS` (only ``in_hubspot`` ones
            become contacts).
    """

    name = "hubspot"

    def __init__(
        self,
        *,
        now: Callable[[], datetime] = _utc_now,
        users: tuple[TrialUser, ...] = TRIAL_USERS,
    ) -> None:
        self.now = now
        self.token = SANDBOX_CREDENTIALS["HUBSPOT_ACCESS_TOKEN"]
        self.contacts: dict[str, dict[str, str | None]] = {}
        # contact id -> property -> its values, oldest first (propertiesWithHistory)
        self.history: dict[str, dict[str, list[dict[str, str]]]] = {}
        for i, user in enumerate(u for u in users if u.in_hubspot):
            cid = contact_id_for(user)
            self.contacts[cid] = {
                "hs_object_id": cid,
                "email": user.email,
                "firstname": user.first_name,
                "lastname": user.last_name,
                "company": user.company,
                "jobtitle": user.title,
                "phone": user.phone or None,
                "lifecyclestage": _LIFECYCLE[i % len(_LIFECYCLE)],
                "hubspot_owner_id": _OWNERS[i % len(_OWNERS)],
                "createdate": _SEEDED_AT,
                "lastmodifieddate": _SEEDED_AT,
            }
            if user.phone:
                self.history[cid] = {
                    "phone": [_history_value(user.phone, _SEEDED_AT, user.phone_source)]
                }
        self.notes: list[SandboxNote] = []
        self._note_ids = itertools.count(_FIRST_NOTE_ID)
        super().__init__()

    def set_phone(self, email: str, phone: str, source_type: str = "FORM") -> str:
        """Set the phone of the contact with ``email`` as ``source_type`` would (``FORM``:
        a web form anyone can submit); returns the contact id."""
        cid = next(
            c for c, p in self.contacts.items() if (p["email"] or "").casefold() == email.casefold()
        )
        when = _iso(self.now())
        self.contacts[cid]["phone"] = phone
        self.contacts[cid]["lastmodifieddate"] = when
        self.history.setdefault(cid, {}).setdefault("phone", []).append(
            _history_value(phone, when, source_type)
        )
        return cid

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/crm/v3/objects/contacts/batch/read", self._batch_read)
        app.router.add_post("/crm/v3/objects/contacts/search", self._search_contacts)
        app.router.add_post("/crm/v3/objects/notes", self._create_note)
        app.router.add_post("/crm/v3/objects/notes/search", self._search_notes)
        for path in (
            "/crm/v3/objects/contacts/batch/read",
            "/crm/v3/objects/contacts/search",
            "/crm/v3/objects/notes",
            "/crm/v3/objects/notes/search",
        ):
            app.router.add_route("*", path, self._method_not_allowed)
        app.router.add_route("*", "/crm/{tail:.*}", self._not_found)

    @staticmethod
    async def _method_not_allowed(request: web.Request) -> web.Response:
        return _error(405, "METHOD_NOT_ALLOWED", f"HTTP {request.method} is not supported")

    @staticmethod
    async def _not_found(request: web.Request) -> web.Response:
        return _error(404, "OBJECT_NOT_FOUND", "Resource not found")

    async def _search_notes(self, request: web.Request) -> web.Response:
        body = await self._authorized_body(request)
        if isinstance(body, web.Response):
            return body
        return note_search(self.notes, body)

    async def _authorized_body(self, request: web.Request) -> Any:
        """The request's JSON body, or the vendor's answer when the token is wrong or the
        body is not JSON."""
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            return await request.json()
        except ValueError:
            return _bad_request("Invalid JSON body")

    def malformed_body(self, request: web.Request) -> web.Response:
        if request.path.endswith("/search"):
            broken: Any = {"total": 1, "results": [{"properties": "not-an-object"}]}
        else:
            broken = {"properties": {"hs_note_body": "no id here"}, "archived": "maybe"}
        return web.json_response(broken)

    # -- helpers --------------------------------------------------------------------------
    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if bearer_token(request) == self.token:
            return None
        return _error(
            401,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found. This API supports OAuth 2.0 and "
            "private app access tokens.",
        )

    @staticmethod
    def _matches(props: dict[str, str | None], flt: dict[str, Any]) -> bool:
        name = str(flt.get("propertyName", ""))
        op = str(flt.get("operator", ""))
        have = props.get(name)
        if op == "HAS_PROPERTY":
            return bool(have)
        if op == "NOT_HAS_PROPERTY":
            return not have
        if op == "IN":
            wanted = {str(v).casefold() for v in flt.get("values") or ()}
            return have is not None and have.casefold() in wanted
        equal = have is not None and have.casefold() == str(flt.get("value", "")).casefold()
        return equal if op == "EQ" else not equal

    @staticmethod
    def _check_filter_groups(groups: Any) -> str | None:
        if not isinstance(groups, list):
            return "filterGroups must be an array"
        for group in groups:
            filters = group.get("filters") if isinstance(group, dict) else None
            if not isinstance(filters, list):
                return "each filter group needs a filters array"
            for flt in filters:
                if not isinstance(flt, dict) or not flt.get("propertyName"):
                    return "each filter needs a propertyName"
                if flt.get("operator") not in _SUPPORTED_OPERATORS:
                    return f"operator {flt.get('operator')!r} is not supported by the sandbox"
                if flt["operator"] in ("EQ", "NEQ") and not isinstance(flt.get("value"), str):
                    return "EQ/NEQ filters need a string value"
        return None

    # -- handlers ------------------------------------------------------------------------------
    async def _search_contacts(self, request: web.Request) -> web.Response:
        body = await self._authorized_body(request)
        if isinstance(body, web.Response):
            return body
        if not isinstance(body, dict):
            return _bad_request("Request body must be an object")
        groups = body.get("filterGroups", [])
        if (problem := self._check_filter_groups(groups)) is not None:
            return _bad_request(problem)
        limit, after = body.get("limit", 10), body.get("after", "0")
        if not isinstance(limit, int) or not 0 < limit <= 200:
            return _bad_request("limit must be an integer between 1 and 200")
        if not str(after).isdigit():
            return _bad_request("after must be a paging cursor")
        requested = body.get("properties") or list(_DEFAULT_PROPERTIES)
        if not isinstance(requested, list):
            return _bad_request("properties must be an array")

        hits = [
            (cid, props)
            for cid, props in self.contacts.items()
            if not groups or any(all(self._matches(props, f) for f in g["filters"]) for g in groups)
        ]
        start = int(after)
        page = hits[start : start + limit]
        response: dict[str, Any] = {
            "total": len(hits),
            "results": [
                {
                    "id": cid,
                    "properties": {str(name): props.get(str(name)) for name in requested},
                    "createdAt": props["createdate"],
                    "updatedAt": props["lastmodifieddate"],
                    "archived": False,
                }
                for cid, props in page
            ],
        }
        if start + limit < len(hits):
            response["paging"] = {"next": {"after": str(start + limit)}}
        return web.json_response(response)

    async def _batch_read(self, request: web.Request) -> web.Response:
        body = await self._authorized_body(request)
        if isinstance(body, web.Response):
            return body
        inputs = body.get("inputs") if isinstance(body, dict) else None
        id_property = body.get("idProperty", "hs_object_id") if isinstance(body, dict) else ""
        if not isinstance(inputs, list) or not all(
            isinstance(i, dict) and isinstance(i.get("id"), str) for i in inputs
        ):
            return _bad_request("inputs must be an array of {id}")
        if id_property not in ("hs_object_id", "email"):
            return _bad_request(f"{id_property} is not a unique identifier property")
        requested = body.get("properties") or list(_DEFAULT_PROPERTIES)
        with_history = body.get("propertiesWithHistory") or []
        if not isinstance(requested, list) or not isinstance(with_history, list):
            return _bad_request("properties and propertiesWithHistory must be arrays")
        results: list[dict[str, Any]] = []
        missing: list[str] = []
        for item in inputs:
            wanted = item["id"].casefold()
            cid = next(
                (
                    c
                    for c, p in self.contacts.items()
                    if (p.get(id_property) or "").casefold() == wanted
                ),
                None,
            )
            if cid is None:
                missing.append(item["id"])
                continue
            props = self.contacts[cid]
            history = self.history.get(cid, {})
            results.append(
                {
                    "id": cid,
                    "properties": {str(n): props.get(str(n)) for n in requested},
                    "propertiesWithHistory": {
                        str(n): list(reversed(history.get(str(n), []))) for n in with_history
                    },
                    "createdAt": props["createdate"],
                    "updatedAt": props["lastmodifieddate"],
                    "archived": False,
                }
            )
        answer: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": _iso(self.now()),
            "completedAt": _iso(self.now()),
        }
        if missing:
            answer["numErrors"] = 1
            answer["errors"] = [
                {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": "Could not get some CONTACT objects, they may be deleted or "
                    "not exist. Check that ids are valid.",
                    "context": {"ids": missing},
                }
            ]
        return web.json_response(answer, status=207 if missing else 200)

    async def _create_note(self, request: web.Request) -> web.Response:
        body = await self._authorized_body(request)
        if isinstance(body, web.Response):
            return body
        props = body.get("properties") if isinstance(body, dict) else None
        if not isinstance(props, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in props.items()
        ):
            return _bad_request("properties must be an object of string values")
        if not props.get("hs_timestamp"):
            return _bad_request("Property hs_timestamp is required")
        if not _is_hubspot_time(props["hs_timestamp"]):
            return _bad_request(
                "Property values were not valid: hs_timestamp must be an ISO 8601 "
                "date-time or epoch milliseconds"
            )
        associations = body.get("associations", [])
        contact_ids: list[str] = []
        if not isinstance(associations, list):
            return _bad_request("associations must be an array")
        for assoc in associations:
            to = assoc.get("to") if isinstance(assoc, dict) else None
            types = assoc.get("types") if isinstance(assoc, dict) else None
            if not isinstance(to, dict) or not isinstance(types, list) or not types:
                return _bad_request("each association needs 'to' and 'types'")
            target = str(to.get("id", ""))
            if not target.isdigit():
                return _bad_request(f"Invalid object id in association: {target[:40]!r}")
            for kind in types:
                if not isinstance(kind, dict) or (
                    kind.get("associationCategory"),
                    kind.get("associationTypeId"),
                ) != ("HUBSPOT_DEFINED", _NOTE_TO_CONTACT):
                    return _bad_request("unsupported association type")
            if target not in self.contacts:
                return _bad_request(f"One or more association targets do not exist: {target}")
            contact_ids.append(target)
        note = SandboxNote(
            id=str(next(self._note_ids)),
            properties=dict(props),
            contact_ids=tuple(contact_ids),
            associations=list(associations),
            created_at=_iso(self.now()),
        )
        self.notes.append(note)
        return web.json_response(note.to_json(), status=201)
