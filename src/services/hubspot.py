"""HubSpot client: the CRM fallback when Salesforce has no record of a caller or fails.

Endpoints (``reference/apis/hubspot-*.yml``), all with ``Authorization: Bearer <private-app
access token>`` (``HUBSPOT_ACCESS_TOKEN``) on ``HUBSPOT_BASE_URL`` (default
``https://api.hubapi.com``):

* ``POST /crm/v3/objects/contacts/search`` with one filter group ``email EQ <email>``
  (HubSpot compares emails case-insensitively) and the properties we read.
* ``POST /crm/v3/objects/notes`` with ``hs_note_body``, ``hs_timestamp`` and an
  association to the contact (``HUBSPOT_DEFINED`` type 202, note -> contact).

Not found: :meth:`HubSpotClient.find_contact` raises :class:`~src.errors.NotFound` rather
than returning ``None``. The taxonomy defines NotFound as "404 / empty result": it does not
count for the breaker, maps to the "data not found" phrase, and lets the agent treat
"Salesforce has nothing" and "HubSpot has nothing" the same way in its fallback chain.

Idempotency:

* ``find_contact`` is a search: a POST, but a read without side effects, so it is
  idempotent and safe to retry whenever the error says ``retryable``.
* ``create_note`` is **not** idempotent: every accepted request creates another note, and
  the reference offers no idempotency key. It must not be retried blindly. So that
  generic retry helpers do the right thing, errors whose outcome is ambiguous (the request
  may have been processed: timeouts, 5xx, a connection lost after sending) are re-marked
  ``retryable = False``; only failures where HubSpot certainly did not create anything
  (429, 401/403, 400, a refused connection or a connect timeout) keep their usual flag.
  :func:`write_outcome_is_ambiguous` is that policy, callable on its own.

Neither emails nor note bodies are logged (only contact and note ids).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pydantic

from ..errors import (
    BadResponse,
    InvalidRequest,
    NotFound,
    ServiceError,
)
from ..redaction import get_logger, register_secret
from .crm import WRITE_REF_MARK, CrmContact
from .http import (
    DEFAULT_HTTP_OPTIONS,
    HttpOptions,
    ServiceClient,
    ServiceHttp,
    parse_model,
    write_outcome_is_ambiguous,
)

__all__ = [
    "CONTACT_PROPERTIES",
    "NOTE_TO_CONTACT_ASSOCIATION",
    "CrmContact",
    "HubSpotClient",
    "write_outcome_is_ambiguous",
]

SERVICE = "hubspot"

# == HubSpot facts this client relies on =======================================================
# Sources: reference/apis/vendor-facts.md ("HubSpot CRM") and hubspot-*.openapi.yml.

#: Contact properties requested from the search (HubSpot returns only those asked for).
CONTACT_PROPERTIES: tuple[str, ...] = (
    "email",
    "firstname",
    "lastname",
    "company",
    "jobtitle",
    "lifecyclestage",
    "hubspot_owner_id",
    "phone",
)
#: HubSpot-defined association type id for note -> contact.
NOTE_TO_CONTACT_ASSOCIATION = 202
_MAX_NOTE_CHARS = 65_536  # HubSpot's limit for hs_note_body
NOTE_SEARCH_PATH = "/crm/v3/objects/notes/search"
# CONTAINS_TOKEN's tokenisation is undocumented and the search index lags behind writes:
# a match is confirmed by reading ``hs_note_body`` (asked for in ``properties``) of
# several results, page by page (``paging.next.after``), never by ``total > 0``. Search
# endpoints allow about 4-5 requests per second per account: few pages at most.
NOTE_SEARCH_LIMIT = 10
NOTE_SEARCH_PAGES = 3
# == end of HubSpot facts ======================================================================

logger = get_logger("pandadoc.services.hubspot")


# -- wire models ----------------------------------------------------------------------------


class _Contact(pydantic.BaseModel):
    id: str
    properties: dict[str, str | None] = pydantic.Field(default_factory=dict)


class _SearchResponse(pydantic.BaseModel):
    results: list[_Contact]


class _Note(pydantic.BaseModel):
    id: str


class _PhoneValue(pydantic.BaseModel):
    value: str | None = None
    timestamp: str = ""
    sourceType: str | None = None


class _ContactWithHistory(_Contact):
    propertiesWithHistory: dict[str, list[_PhoneValue]] = pydantic.Field(default_factory=dict)


class _BatchRead(pydantic.BaseModel):
    results: list[_ContactWithHistory] = pydantic.Field(default_factory=list)


def _latest_source(history: list[_PhoneValue], current: str | None) -> str | None:
    """The ``sourceType`` of the newest value in a property's history, when that value is
    the current one; ``None`` when that cannot be told (no history, a timestamp that is
    not a date, or a newest value that differs from the property)."""
    dated: list[tuple[datetime, _PhoneValue]] = []
    for item in history:
        try:
            when = datetime.fromisoformat(item.timestamp)
        except ValueError:
            return None
        dated.append((when if when.tzinfo else when.replace(tzinfo=UTC), item))
    if not dated or current is None:
        return None
    _, latest = max(dated, key=lambda pair: pair[0])
    if _clean(latest.value) != current:
        return None
    return latest.sourceType or None


def _clean(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def _contact(raw: _Contact) -> CrmContact:
    p = raw.properties
    return CrmContact(
        id=raw.id,
        first_name=_clean(p.get("firstname")),
        last_name=_clean(p.get("lastname")),
        company=_clean(p.get("company")),
        title=_clean(p.get("jobtitle")),
        lifecycle_stage=_clean(p.get("lifecyclestage")),
        owner=_clean(p.get("hubspot_owner_id")),
        phone=_clean(p.get("phone")),
        source=SERVICE,
    )


def _hubspot_time(when: datetime) -> str:
    """``2024-01-15T10:30:00.000Z``: UTC with milliseconds, as the reference shows."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class HubSpotClient(ServiceClient):
    """Finds contacts and logs notes in HubSpot CRM.

    Args:
        access_token: private-app access token (``HUBSPOT_ACCESS_TOKEN``), sent as Bearer.
        base_url: API host (``HUBSPOT_BASE_URL``), default ``https://api.hubapi.com``.
        options: per-request timeouts (default 4.0 s total, 1.5 s connect).
        session: an ``aiohttp.ClientSession`` to reuse (not closed by :meth:`aclose`).
        clock: current time (aware, UTC), the default ``hs_timestamp`` of a note.
        intake_record_id: the contact an unverified caller's note is associated with
            (``HUBSPOT_INTAKE_RECORD_ID``); empty: such a note is associated with nothing.
    """

    service = SERVICE

    def __init__(
        self,
        access_token: str,
        base_url: str = "https://api.hubapi.com",
        *,
        options: HttpOptions = DEFAULT_HTTP_OPTIONS,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], datetime] = _utc_now,
        intake_record_id: str = "",
    ) -> None:
        if not access_token:
            raise ValueError("hubspot: access_token is required")
        if intake_record_id and not (intake_record_id.isascii() and intake_record_id.isdigit()):
            raise ValueError("hubspot: intake_record_id must be a record id (digits)")
        self._intake_record_id = intake_record_id or None
        register_secret(access_token)
        self._headers = {
            "Authorization": f"Bearer {access_token}",
            "Accept": "application/json",
        }
        self._http = ServiceHttp(SERVICE, base_url, options=options, session=session)
        self._clock = clock

    async def find_contact(self, email: str) -> CrmContact:
        """The contact whose primary email is ``email`` (case-insensitive).

        Idempotent (a search): safe to retry when the error is ``retryable``.

        Raises:
            NotFound: no such contact (does not count for the breaker).
            InvalidRequest: ``email`` is blank (nothing is sent).
            ServiceError: any other failure, translated by :class:`ServiceHttp`.
        """
        address = email.strip()
        if not address:
            raise InvalidRequest(SERVICE, "hubspot: empty email")
        body: dict[str, Any] = {
            "filterGroups": [
                {"filters": [{"propertyName": "email", "operator": "EQ", "value": address}]}
            ],
            "properties": list(CONTACT_PROPERTIES),
            "limit": 1,  # a primary email belongs to one contact at most
        }
        data = await self._http.request(
            "POST",
            "/crm/v3/objects/contacts/search",
            json_body=body,
            headers=self._headers,
            on_404=BadResponse,  # a search answers "nobody" with an empty list
            idempotent=True,  # a search: a reset mid-body may be retried
        )
        found = parse_model(SERVICE, _SearchResponse, data)
        if not found.results:
            raise NotFound(SERVICE, "hubspot: no contact with that email")
        contact = _contact(found.results[0])
        logger.debug("hubspot contact found: id=%s", contact.id)
        return contact

    async def find_contact_phone(self, email: str) -> tuple[CrmContact, str | None]:
        """The contact whose primary email is ``email``, and the ``sourceType`` of its
        phone's latest value (``FORM``, ``CRM_UI``, ``IMPORT``, ...; ``None`` when HubSpot
        gives no history, or the latest history value is not the current phone).

        One ``POST /crm/v3/objects/contacts/batch/read`` by ``idProperty=email`` with
        ``propertiesWithHistory=phone`` (a search cannot return history): the same single
        request whether or not the contact exists. Idempotent (a read).

        Raises:
            NotFound: no such contact. InvalidRequest: blank ``email`` (nothing is sent).
            ServiceError: any other failure, translated by :class:`ServiceHttp`.
        """
        address = email.strip()
        if not address:
            raise InvalidRequest(SERVICE, "hubspot: empty email")
        body: dict[str, Any] = {
            "idProperty": "email",
            "inputs": [{"id": address}],
            "properties": list(CONTACT_PROPERTIES),
            "propertiesWithHistory": ["phone"],
        }
        data = await self._http.request(
            "POST",
            "/crm/v3/objects/contacts/batch/read",
            json_body=body,
            headers=self._headers,
            on_404=BadResponse,
            idempotent=True,
        )
        found = parse_model(SERVICE, _BatchRead, data)
        if not found.results:
            raise NotFound(SERVICE, "hubspot: no contact with that email")
        raw = found.results[0]
        contact = _contact(_Contact(id=raw.id, properties=raw.properties))
        return contact, _latest_source(raw.propertiesWithHistory.get("phone", []), contact.phone)

    async def create_note(
        self, contact_id: str | None, body: str, *, timestamp: datetime | None = None
    ) -> str:
        """Log a note on the contact's timeline and return the new note's id.

        Args:
            contact_id: HubSpot contact id (:attr:`CrmContact.id`); ``None`` for an
                *unverified intake* note: associated with the configured intake record,
                or with nothing.
            body: note text (``hs_note_body``), at most 65,536 characters.
            timestamp: when the note happened (``hs_timestamp``); default now (UTC).

        **Not idempotent**: each accepted call creates a note and HubSpot offers no
        idempotency key. Errors whose outcome is ambiguous (timeout, 5xx, connection lost
        after sending) are raised with ``retryable = False`` so no generic retry repeats
        the write; 429 and a refused connection stay retryable.

        Raises:
            InvalidRequest: blank ``contact_id``/``body``, an over-long body (nothing is
                sent), or HubSpot rejected the request (e.g. unknown contact, HTTP 400).
            ServiceError: any other failure, translated by :class:`ServiceHttp`.
        """
        target = self._intake_record_id if contact_id is None else contact_id.strip()
        if (contact_id is not None and not target) or not body.strip():
            raise InvalidRequest(SERVICE, "hubspot: note needs a contact id and a body")
        if len(body) > _MAX_NOTE_CHARS:
            raise InvalidRequest(SERVICE, "hubspot: note body too long")
        payload = {
            "properties": {
                "hs_note_body": body,
                "hs_timestamp": _hubspot_time(timestamp or self._clock()),
            },
            "associations": [
                {
                    "to": {"id": target},
                    "types": [
                        {
                            "associationCategory": "HUBSPOT_DEFINED",
                            "associationTypeId": NOTE_TO_CONTACT_ASSOCIATION,
                        }
                    ],
                }
            ]
            if target
            else [],
        }
        try:
            data = await self._http.request(
                "POST", "/crm/v3/objects/notes", json_body=payload, headers=self._headers
            )
        except ServiceError as exc:
            if write_outcome_is_ambiguous(exc):
                exc.retryable = False  # the note may exist: never repeat blindly
            raise
        note = parse_model(SERVICE, _Note, data)
        logger.debug("hubspot note %s created for contact %s", note.id, target or "(none)")
        return note.id

    async def note_exists(self, ref: str) -> bool:
        """Whether a note carries the write reference ``ref``: the exactly-once check
        after a write whose outcome was unknown. The search (``hs_note_body``
        ``CONTAINS_TOKEN`` ``ref``) only proposes candidates; a note counts only when its
        ``hs_note_body`` holds the exact marker ``(ref <ref>)``. Idempotent (a search).
        HubSpot's search index lags new records, so ``False`` for a recent write means
        "not known yet" to the outbox (its settle window).

        Raises:
            InvalidRequest: ``ref`` is not a write reference (nothing is sent).
            BadResponse: a candidate came back without its body, or the candidates did not
                end within :data:`NOTE_SEARCH_PAGES` pages (cannot be decided now).
            ServiceError: any failure, translated by :class:`ServiceHttp`.
        """
        if not (len(ref) == 32 and all(c in "0123456789abcdef" for c in ref)):
            raise InvalidRequest(SERVICE, "hubspot: not a write reference")
        marker = WRITE_REF_MARK.format(ref)
        after: str | None = None
        for _ in range(NOTE_SEARCH_PAGES):
            body: dict[str, Any] = {
                "filterGroups": [
                    {
                        "filters": [
                            {
                                "propertyName": "hs_note_body",
                                "operator": "CONTAINS_TOKEN",
                                "value": ref,
                            }
                        ]
                    }
                ],
                "properties": ["hs_note_body"],
                "limit": NOTE_SEARCH_LIMIT,
            }
            if after is not None:
                body["after"] = after
            data = await self._http.request(
                "POST",
                NOTE_SEARCH_PATH,
                json_body=body,
                headers=self._headers,
                on_404=BadResponse,
                idempotent=True,  # a search: a reset mid-body may be retried
            )
            page = parse_model(SERVICE, _NoteSearch, data)
            bodies = [hit.properties.get("hs_note_body") for hit in page.results]
            if any(not isinstance(text, str) for text in bodies):
                raise BadResponse(SERVICE, "hubspot: a note search result has no hs_note_body")
            if any(marker in str(text) for text in bodies):
                return True
            if page.results:
                logger.info("hubspot: %d token matches without the exact marker", len(bodies))
            after = page.paging.next.after if page.paging and page.paging.next else None
            if after is None:
                return False
        raise BadResponse(SERVICE, f"hubspot: note search not done after {NOTE_SEARCH_PAGES} pages")


class _NextPage(pydantic.BaseModel):
    after: str = pydantic.Field(min_length=1, max_length=256)


class _Paging(pydantic.BaseModel):
    next: _NextPage | None = None


class _NoteHit(pydantic.BaseModel):
    id: str
    properties: dict[str, str | None] = pydantic.Field(default_factory=dict)


class _NoteSearch(pydantic.BaseModel):
    total: int = pydantic.Field(ge=0)
    results: list[_NoteHit]
    paging: _Paging | None = None
