"""Salesforce CRM client: who is this trialist, and leave a Task for their rep.

Choices, and why:

* **Auth** is the OAuth 2.0 client-credentials flow: ``POST {instance}/services/oauth2/token``
  with ``grant_type=client_credentials``. The token is cached; if the response carries
  ``expires_in`` (Salesforce usually omits it; the session policy decides) the token is
  renewed a little before it runs out. Concurrent callers share one token request (an
  ``asyncio.Lock`` held only around the fetch). A 401 on a data call means the session was
  revoked or timed out: the client fetches a new token **once** and repeats that call
  **once**; a second 401 is :class:`~src.errors.AuthenticationFailed`. Repeating a call
  after a 401 is safe even for writes, because Salesforce rejected it before doing anything.
  A 400/401 from the token endpoint (``invalid_client_id``, ``invalid_client``) is also
  ``AuthenticationFailed``: our configuration is wrong and retrying will not fix it.
* **Paths.** The reference (``salesforce-*.openapi.yml``) describes ``POST /query`` with
  a JSON body ``{"q": <SOQL>}`` and ``POST /sobjects/{type}``, under a server URL copied
  from its Bulk API 2.0 bundle (``.../services/data/v63.0/jobs``). The REST resources live
  directly under ``/services/data/<version>``, so that is the prefix used here (one place:
  :meth:`SalesforceClient._data_path`); the version defaults to the reference's ``v63.0``.
* **Lookup.** One SOQL query per object, ``Contact`` and ``Lead``, sent concurrently so a
  lookup costs one round trip of voice latency. The Contact wins when both exist: a Lead
  that has been converted lives on as a Contact, which is the current record. Each query
  compares with ``=`` (never ``LIKE``: an email is an exact key, and ``=`` gives ``%`` and
  ``_`` no meaning) and orders by ``LastModifiedDate DESC LIMIT 1`` so duplicates resolve
  to the freshest record.
* **SOQL injection.** The email is shape-checked (:func:`is_valid_email`, RFC 5321/5322/6531
  syntax, no control or format characters) and then quoted with :func:`soql_quote`, which
  escapes every character SOQL gives meaning to inside a string literal and refuses the
  ones SOQL cannot represent. The shape check is a second line, not the defence: quoting
  alone keeps any value inside its literal.
* **Writes.** :meth:`SalesforceClient.create_task` is *not* idempotent: Salesforce offers no
  idempotency key for ``POST /sobjects/Task`` (the only server-side dedupe, an upsert on an
  external-id field, needs a custom field and is not in the reference). If it fails with a
  timeout or a dropped connection the Task may or may not exist, so callers must not
  retry it blindly; the client itself never repeats it except after a 401 (see above).
* **Errors** are read from Salesforce's error array by ``errorCode``
  (:func:`classify_errors`): a transient code such as ``UNABLE_TO_LOCK_ROW`` (HTTP 400) is
  :class:`~src.errors.ServiceBusy` (certainly not applied: the outbox keeps the write and
  sends it again later); a validation code stays a permanent ``InvalidRequest``.

Retry safety: :meth:`~SalesforceClient.find_person` is read-only and safe to retry;
:meth:`~SalesforceClient.create_task` is not.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from ..errors import (
    AuthenticationFailed,
    BadResponse,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceBusy,
    ServiceError,
)
from ..redaction import get_logger, register_secret
from ..validation import is_valid_email, is_valid_salesforce_id
from .crm import CrmContact
from .http import (
    DEFAULT_HTTP_OPTIONS,
    HttpOptions,
    ServiceClient,
    ServiceHttp,
    parse_model,
    write_outcome_is_ambiguous,
)
from .salesforce_model import (
    RECORD_ID,
    CountResult,
    CreateResult,
    QueryResult,
    TokenResponse,
    to_contact,
)
from .soql import person_query, soql_quote, task_ref_query

__all__ = [
    "DEFAULT_API_VERSION",
    "TRANSIENT_ERROR_CODES",
    "CrmContact",
    "SalesforceClient",
    "classify_errors",
    "error_codes",
    "is_valid_email",
    "person_query",
    "soql_quote",
]

SERVICE = "salesforce"
DEFAULT_API_VERSION = "v63.0"
TOKEN_PATH = "/services/oauth2/token"

logger = get_logger("pandadoc.services.salesforce")

# Renew a token this many seconds before the expiry the server announced (at most half
# its lifetime), so a request never leaves with a token that dies on the way.
_EXPIRY_MARGIN_S = 30.0

# == Salesforce facts this client relies on ====================================================
# Sources: reference/apis/vendor-facts.md ("Salesforce REST") and salesforce-*.openapi.yml.
# Error answers are a JSON array ``[{"errorCode", "message", "fields"}]``: classify by
# ``errorCode``, never by HTTP status alone (:func:`classify_errors`).
ERROR_CODE = "errorCode"
# Transient: refused for now, certainly not applied, safe to send again later.
# UNABLE_TO_LOCK_ROW: another transaction holds the record lock (seen with HTTP 400).
TRANSIENT_ERROR_CODES = frozenset({"UNABLE_TO_LOCK_ROW"})
# Every other code of a 4xx answer is permanent: validation (REQUIRED_FIELD_MISSING,
# STRING_TOO_LONG, FIELD_CUSTOM_VALIDATION_EXCEPTION, INVALID_CROSS_REFERENCE_KEY,
# MALFORMED_ID, ...) will fail the same way however often it is sent.
_SUBJECT_MAX = 255  # Task.Subject is a 255-character field
_DESCRIPTION_MAX = 32_000  # Task.Description is a 32k long text area
# Task.OwnerId is a user (``005...``); Task.WhoId a Contact or Lead. SOQL literal escapes:
# :mod:`src.services.soql`.
# == end of Salesforce facts ===================================================================
_CODE_SHAPE = re.compile(r"[A-Z][A-Z_]{0,63}")


def error_codes(body: Any) -> list[str]:
    """The ``errorCode`` of each item of a Salesforce error array (``"?"`` for an item
    without a well-formed one); empty when the body is not such an array."""
    if not isinstance(body, list):
        return []
    codes = [item.get(ERROR_CODE) if isinstance(item, dict) else None for item in body]
    return [c if isinstance(c, str) and _CODE_SHAPE.fullmatch(c) else "?" for c in codes]


def classify_errors(error: ServiceError, body: Any) -> ServiceError:
    """Refine an error answer by its error codes: when every code is transient
    (:data:`TRANSIENT_ERROR_CODES`) it is :class:`~src.errors.ServiceBusy` (retry later,
    certainly not applied), whatever the status; a rejected request names its codes for
    the operator. 401/403 and 429 keep their meaning (token refresh, back-off)."""
    codes = error_codes(body)
    if not codes or isinstance(error, AuthenticationFailed | RateLimited):
        return error
    shown = ",".join(codes[:3])
    if all(c in TRANSIENT_ERROR_CODES for c in codes):
        logger.info("salesforce: answered HTTP %s %s; retry later", error.status, shown)
        return ServiceBusy(SERVICE, f"salesforce answered {shown}", status=error.status)
    if isinstance(error, InvalidRequest):
        logger.info("salesforce: answered HTTP %s %s; not retried", error.status, shown)
        return type(error)(
            SERVICE, f"salesforce answered HTTP {error.status} {shown}", status=error.status
        )
    return error


@dataclass
class _Token:
    value: str
    expires_at: float | None  # clock() reading after which it is renewed; None: until a 401


# -- client --------------------------------------------------------------------------------


class SalesforceClient(ServiceClient):
    """Async Salesforce REST client (client-credentials OAuth, SOQL lookup, Task create).

    Args:
        instance_url: the org's My Domain URL, e.g. ``https://acme.my.salesforce.com``
            (``SALESFORCE_INSTANCE_URL``); both the token and the data calls go there.
        client_id, client_secret: the connected/external client app's consumer key and
            secret (``SALESFORCE_CLIENT_ID``, ``SALESFORCE_CLIENT_SECRET``).
        api_version: REST API version, default ``"v63.0"`` (the reference's).
        options: per-request timeouts in seconds (:data:`DEFAULT_HTTP_OPTIONS`).
        session: an ``aiohttp.ClientSession`` to use (not closed by :meth:`aclose`).
        clock: monotonic clock in seconds, for token expiry; default ``time.monotonic``.
        task_owner_id: the user (or queue) a Task is assigned to when its record has no
            user owner (``SALESFORCE_TASK_OWNER_ID``); empty: Salesforce's default, the
            integration's "Run As" user.
        intake_owner_id: the user who owns an unverified-intake Task (no ``WhoId``)
            (``SALESFORCE_INTAKE_OWNER_ID``); empty: ``task_owner_id``.

    Use as ``async with SalesforceClient(...) as sf:`` or call :meth:`aclose`.
    """

    def __init__(
        self,
        instance_url: str,
        client_id: str,
        client_secret: str,
        *,
        api_version: str = DEFAULT_API_VERSION,
        options: HttpOptions = DEFAULT_HTTP_OPTIONS,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
        task_owner_id: str = "",
        intake_owner_id: str = "",
    ) -> None:
        if not client_id or not client_secret:
            raise ValueError("salesforce: client_id and client_secret are required")
        if task_owner_id and not is_valid_salesforce_id(task_owner_id):
            raise ValueError("salesforce: task_owner_id must be a 15/18-character record id")
        self._task_owner_id = task_owner_id or None
        if intake_owner_id and not is_valid_salesforce_id(intake_owner_id):
            raise ValueError("salesforce: intake_owner_id must be a 15/18-character record id")
        self._intake_owner_id = intake_owner_id or self._task_owner_id
        if not re.fullmatch(r"v\d+\.\d", api_version):
            raise ValueError("salesforce: api_version must look like 'v63.0'")
        register_secret(client_id)
        register_secret(client_secret)
        self._http = ServiceHttp(SERVICE, instance_url, options=options, session=session)
        self._client_id = client_id
        self._client_secret = client_secret
        self._api_version = api_version
        self._clock = clock
        self._token: _Token | None = None
        self._token_lock = asyncio.Lock()
        self._token_epoch = 0  # token fetches finished; lets waiters share a failed one
        self._token_error: ServiceError | None = None

    def _data_path(self, resource: str) -> str:
        return f"/services/data/{self._api_version}{resource}"

    # -- token ------------------------------------------------------------------------------
    def _valid_token(self) -> _Token | None:
        token = self._token
        if token is None or (token.expires_at is not None and self._clock() >= token.expires_at):
            return None
        return token

    async def _access_token(self, *, stale: str | None = None) -> str:
        """A usable token. ``stale`` is one the server just rejected: it is replaced,
        unless another caller already replaced it while we waited for the lock."""
        token = self._valid_token()
        if token is not None and token.value != stale:
            return token.value
        epoch = self._token_epoch
        async with self._token_lock:
            token = self._valid_token()
            if token is not None and token.value != stale:
                return token.value
            if self._token_epoch != epoch and self._token_error is not None:
                # The fetch we queued behind failed: share its outcome, not a second request.
                raise self._token_error
            self._token = None
            self._token_error = None  # only this fetch's own failure may be shared
            try:
                self._token = await self._fetch_token()
            except ServiceError as exc:
                self._token_error = exc
                raise
            finally:
                # A cancelled fetch leaves no error behind: waiters fetch for themselves.
                self._token_epoch += 1
            return self._token.value

    async def _fetch_token(self) -> _Token:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
        }
        try:
            # Asking for a token again is harmless: a reset mid-body may be retried.
            data = await self._http.request("POST", TOKEN_PATH, form=form, idempotent=True)
        except InvalidRequest as exc:
            # 400 invalid_client_id / invalid_grant: our configuration, not the service.
            raise AuthenticationFailed(
                SERVICE, "salesforce rejected the client credentials", status=exc.status
            ) from exc
        parsed = parse_model(SERVICE, TokenResponse, data)
        register_secret(parsed.access_token)
        expires_at = None
        if parsed.expires_in is not None and parsed.expires_in > 0:
            lifetime = parsed.expires_in
            expires_at = self._clock() + max(lifetime - _EXPIRY_MARGIN_S, lifetime / 2)
        logger.debug("salesforce: new access token (expiry announced: %s)", bool(expires_at))
        return _Token(parsed.access_token, expires_at)

    async def _authed(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        *,
        params: dict[str, str] | None = None,
        on_404: type[ServiceError] = BadResponse,
    ) -> Any:
        """One data call with the bearer token; on 401, one token refresh and one repeat.
        A 404 means a wrong instance URL or API version, never a missing person."""
        token = await self._access_token()
        try:
            return await self._http.request(
                method,
                path,
                json_body=json_body,
                params=params,
                headers={"Authorization": f"Bearer {token}"},
                on_404=on_404,
                classify=classify_errors,
            )
        except AuthenticationFailed as exc:
            if exc.status != 401:
                raise  # 403: permissions; a new token will not change them
            logger.info("salesforce: access token rejected, refreshing it once")
        token = await self._access_token(stale=token)
        return await self._http.request(
            method,
            path,
            json_body=json_body,
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            on_404=on_404,
            classify=classify_errors,
        )

    # -- public API -------------------------------------------------------------------------
    async def find_person(self, email: str) -> CrmContact:
        """The Contact, else the Lead, whose ``Email`` equals ``email`` (case-insensitive,
        as Salesforce compares). Read-only, so safe to retry.

        Raises:
            InvalidRequest: ``email`` is not a well-formed address (nothing is sent).
            NotFound: neither a Contact nor a Lead has that email.
            ServiceError: any other failure, translated by the HTTP layer. A failed
                Contact query is raised even when the Lead query found someone (a
                Contact, had it been found, would have won); a failed Lead query is
                raised only when no Contact was found.
        """
        email = email.strip()
        if not is_valid_email(email):
            raise InvalidRequest(SERVICE, "email address is not well-formed")
        contact_result, lead_result = await asyncio.gather(
            self._query_one("Contact", email),
            self._query_one("Lead", email),
            return_exceptions=True,
        )
        for result in (contact_result, lead_result):
            if isinstance(result, CrmContact):
                logger.debug("salesforce: person found as a %s", result.object_type)
                return result
            if isinstance(result, BaseException) and not isinstance(result, NotFound):
                # A failed Contact query hides whether a Contact (which would win) exists.
                raise result
        raise NotFound(SERVICE, "no Contact or Lead with that email")

    async def find_contact(self, email: str) -> CrmContact:
        """The *Contact* (never a Lead) whose ``Email`` equals ``email``: one query,
        whether or not it exists. A phone caller is verified only against a Contact's
        phone, since Web-to-Lead lets anyone create a Lead with any email and their own
        phone. Read-only, so safe to retry.

        Raises:
            InvalidRequest: ``email`` is not a well-formed address (nothing is sent).
            NotFound: no Contact has that email.
            ServiceError: any other failure, translated by the HTTP layer.
        """
        email = email.strip()
        if not is_valid_email(email):
            raise InvalidRequest(SERVICE, "email address is not well-formed")
        return await self._query_one("Contact", email)

    async def _query_one(self, object_type: Literal["Lead", "Contact"], email: str) -> CrmContact:
        # The REST Query resource: GET .../query?q=SOQL answers synchronously with the
        # records. (The bundled reference files this under Bulk API 2.0 as a POST with a
        # JSON body; the sandbox accepts both.)
        data = await self._authed(
            "GET", self._data_path("/query"), params={"q": person_query(object_type, email)}
        )
        result = parse_model(SERVICE, QueryResult, data)
        if not result.records:
            raise NotFound(SERVICE, f"no {object_type} with that email")
        record = result.records[0]
        if record.attributes.type != object_type:
            raise BadResponse(SERVICE, f"salesforce answered a {object_type} query with other rows")
        return to_contact(record)

    async def create_task(
        self, who_id: str | None, subject: str, description: str, *, owner_id: str | None = None
    ) -> str:
        """Create a ``Task`` (status *Not Started*, priority *Normal*) on the Lead or
        Contact ``who_id`` and return the new Task's id. With ``who_id`` ``None`` the
        Task is an *unverified intake* (no ``WhoId``: attached to nobody), assigned to
        ``owner_id`` or the configured ``intake_owner_id`` (then ``task_owner_id``).

        The Task is assigned (``OwnerId``) to ``owner_id``, the record owner found by
        :meth:`find_person`; without one, to the configured ``task_owner_id``; without
        that, Salesforce assigns it to the integration user. A malformed ``owner_id`` is
        ignored (logged) in favour of the fallback rather than failing the write.

        ``subject`` is cut to 255 and ``description`` to 32,000 characters (the fields'
        limits). **Not idempotent**: a timeout or dropped connection leaves it unknown
        whether the Task exists, so do not retry it blindly (a duplicate Task is the
        risk). Only a 401 is repeated, once, after a token refresh: Salesforce rejected
        that request before acting on it.

        Raises:
            InvalidRequest: ``who_id`` is not a record id or ``subject`` is blank (nothing
                is sent), or Salesforce rejected the fields (400, a validation code).
            ServiceBusy: a transient error code (``UNABLE_TO_LOCK_ROW``): the Task was
                certainly not created; send it again later.
            BadResponse: Salesforce answered without a created id.
            ServiceError: any other failure, translated by the HTTP layer.
        """
        if who_id is not None and not RECORD_ID.fullmatch(who_id):
            raise InvalidRequest(SERVICE, "who_id is not a Salesforce record id")
        subject = " ".join(subject.split())
        if not subject:
            raise InvalidRequest(SERVICE, "task subject is blank")
        body = {
            "Subject": _truncate(subject, _SUBJECT_MAX),
            "Description": _truncate(description.strip(), _DESCRIPTION_MAX),
            "Status": "Not Started",
            "Priority": "Normal",
        }
        if who_id is not None:
            body["WhoId"] = who_id
        if owner_id is not None and not is_valid_salesforce_id(owner_id):
            logger.warning("salesforce: ignoring a malformed task owner id; using the fallback")
            owner_id = None
        fallback = self._task_owner_id if who_id is not None else self._intake_owner_id
        owner = owner_id or fallback
        if owner is not None:
            body["OwnerId"] = owner
        else:
            logger.info("salesforce: task has no owner; it goes to the integration user")
        try:
            data = await self._authed("POST", self._data_path("/sobjects/Task"), body)
        except ServiceError as exc:
            if write_outcome_is_ambiguous(exc):
                exc.retryable = False  # the Task may exist: never repeat blindly
            raise
        created = parse_model(SERVICE, CreateResult, data)
        if not created.success:
            raise BadResponse(SERVICE, "salesforce reported the task as not created")
        logger.info("salesforce: task created")
        return created.id

    async def task_exists(self, who_id: str | None, ref: str) -> bool:
        """Whether a Task on ``who_id`` (``None``: an intake Task, on nobody) carries the
        write reference ``ref`` in its Subject (:func:`task_ref_query`): the exactly-once
        check after a write whose outcome was unknown. Idempotent (a query); SOQL reads
        are consistent, so an empty answer means the Task certainly does not exist.

        Raises:
            InvalidRequest: a malformed ``who_id`` or ``ref`` (nothing is sent).
            ServiceError: any failure, translated by the HTTP layer.
        """
        if (who_id is not None and not RECORD_ID.fullmatch(who_id)) or not WRITE_REF.fullmatch(ref):
            raise InvalidRequest(SERVICE, "task search needs a record id and a write ref")
        data = await self._authed(
            "GET", self._data_path("/query"), params={"q": task_ref_query(who_id, ref)}
        )
        return parse_model(SERVICE, CountResult, data).totalSize > 0


WRITE_REF = re.compile(r"[0-9a-f]{32}")


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
