"""The one HTTP layer every service client uses.

It owns the per-request timeout (one timer per attempt: inside a retry it borrows the
attempt's timer, see :mod:`src.attempt`), caps every response body (streamed; a body over
``HttpOptions.max_body_bytes`` is :class:`~src.errors.BadResponse` decided before the
rest is read), translates every transport and HTTP failure into the
:mod:`src.errors` taxonomy where it enters (``raise ... from exc``), parses ``Retry-After``
(seconds or HTTP-date), validates response bodies against pydantic models (a mismatch is
:class:`~src.errors.BadResponse`), and logs one structured, redacted line per request.

Sessions: inside a LiveKit job the per-job ``http_context`` session is reused; elsewhere
(tests, the sandbox, benchmarks) each client owns one session, created lazily and closed
by :meth:`ServiceHttp.aclose`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import aiohttp
import pydantic

from .. import latency
from ..attempt import current_attempt_timer, vendor_answered
from ..errors import (
    AuthenticationFailed,
    BadResponse,
    CircuitOpenError,
    ConnectionFailed,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceError,
    ServiceTimeout,
    ServiceUnavailable,
)
from ..redaction import get_logger

__all__ = [
    "DEFAULT_HTTP_OPTIONS",
    "ErrorClassifier",
    "HttpOptions",
    "ServiceClient",
    "ServiceHttp",
    "error_for_status",
    "parse_model",
    "parse_retry_after",
    "write_outcome_is_ambiguous",
]

logger = get_logger("pandadoc.services.http")

M = TypeVar("M", bound=pydantic.BaseModel)
# Refines an error answer's taxonomy error from its decoded JSON body (or None).
ErrorClassifier = Callable[[ServiceError, Any], ServiceError]


@dataclass(frozen=True)
class HttpOptions:
    """Per-request limits.

    Attributes:
        timeout: seconds for one whole request (connect + send + read). Default 4.0: one
            attempt must leave room for a retry inside a tool's voice budget.
        connect_timeout: seconds to establish the connection. Default 1.5.
        max_body_bytes: largest response body accepted, in bytes; a larger one is
            refused as :class:`~src.errors.BadResponse` without reading the rest.
            Default 1 MiB (our queries ask for one record or a few slots).
    """

    timeout: float = 4.0
    connect_timeout: float = 1.5
    max_body_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError("timeout must be > 0 seconds")
        if not 0 < self.connect_timeout <= self.timeout:
            raise ValueError("connect_timeout must be > 0 and <= timeout")
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be >= 1024")


DEFAULT_HTTP_OPTIONS = HttpOptions()

# An error answer's body is never used; a small one is drained so the connection can be
# reused, a larger one costs the connection instead of memory.
ERROR_BODY_DRAIN = 64 * 1024
_READ_CHUNK = 64 * 1024
# Reads a reset mid-body may simply repeat; any other method's outcome is unknown.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class _BodyTooLarge(Exception):
    """Internal: the body passed the cap (``declared`` when Content-Length said so)."""

    def __init__(self, declared: bool) -> None:
        super().__init__()
        self.declared = declared


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body of ``resp``, read in chunks; raises ``_BodyTooLarge`` as soon as it is
    known to exceed ``limit`` bytes (at once when Content-Length says so), so at most
    ``limit`` plus one chunk is ever held."""
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise _BodyTooLarge(declared=True)
    body = bytearray()
    async for chunk in resp.content.iter_chunked(_READ_CHUNK):
        body += chunk
        if len(body) > limit:
            raise _BodyTooLarge(declared=False)
    return bytes(body)


def _decode(raw: bytes, charset: str | None) -> str:
    # Undecodable bytes become U+FFFD, so a bad body fails as BadResponse.
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return raw.decode("utf-8", errors="replace")


_DELTA_SECONDS = re.compile(r"\d{1,9}(?:\.\d{1,6})?")
MAX_RETRY_AFTER = 86_400.0  # a day: anything longer is as good as "not today"


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds (RFC 9110; decimals tolerated)
    or an HTTP-date; ``None`` when absent or unparseable. Past dates give 0.0; values are
    capped at :data:`MAX_RETRY_AFTER`."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _DELTA_SECONDS.fullmatch(value):
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, when.timestamp() - now()), MAX_RETRY_AFTER)


def error_for_status(
    service: str, status: int, headers: Mapping[str, str] | None = None
) -> ServiceError | None:
    """The taxonomy error for an HTTP status, or ``None`` for success (2xx/3xx)."""
    if status < 400:
        return None
    msg = f"{service} answered HTTP {status}"
    if status == 429:
        retry_after = parse_retry_after((headers or {}).get("Retry-After"))
        return RateLimited(service, msg, retry_after=retry_after)
    if status in (401, 403):
        return AuthenticationFailed(service, msg, status=status)
    if status == 404:
        return NotFound(service, msg, status=status)
    if status == 408:
        return ServiceTimeout(service, msg, status=status)
    if status >= 500:
        return ServiceUnavailable(service, msg, status=status)
    return InvalidRequest(service, msg, status=status)


def write_outcome_is_ambiguous(exc: BaseException) -> bool:
    """Whether a failed write may nevertheless have been applied by the server.

    False when the request certainly changed nothing: the breaker refused it, the
    connection was never established (refused, DNS, connect timeout), or the server
    rejected it (4xx, 429, and 503, which RFC 9110 defines as "unable to handle the
    request"). True for timeouts, other 5xx, connections lost after sending, and
    anything unexpected. A write whose outcome is ambiguous must not be re-sent without
    an idempotency key.
    """
    if isinstance(exc, CircuitOpenError):
        return False
    never_sent = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
    if isinstance(exc.__cause__, never_sent):
        return False
    if isinstance(exc, ServiceUnavailable) and exc.status == 503:
        return False
    if isinstance(exc, ServiceError):
        return isinstance(exc, ServiceTimeout | ServiceUnavailable | BadResponse)
    return True


def parse_model(service: str, model: type[M], data: Any) -> M:
    """Validate ``data`` against ``model``; a mismatch becomes :class:`BadResponse`."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        # Field locations only: the values may be personal data.
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors()[:5])
        raise BadResponse(service, f"{service} response failed validation at: {fields}") from exc


def _job_session() -> aiohttp.ClientSession | None:
    """LiveKit's per-job session when running inside a job, else ``None``. Never imports
    LiveKit itself (a 2 s import would stall the event loop outside a worker)."""
    http_context = sys.modules.get("livekit.agents.utils.http_context")
    if http_context is None:
        return None
    try:
        session: aiohttp.ClientSession = http_context.http_session()
    except RuntimeError:  # not inside a job
        return None
    return session


class ServiceHttp:
    """JSON-over-HTTP for one service, with the error translation described above.

    Args:
        service: short service name used in errors and logs.
        base_url: scheme://host[:port][/prefix]; paths are appended to it.
        options: per-request timeouts (:data:`DEFAULT_HTTP_OPTIONS`).
        session: an explicit ``aiohttp.ClientSession`` to use (not closed by us).
    """

    def __init__(
        self,
        service: str,
        base_url: str,
        *,
        options: HttpOptions = DEFAULT_HTTP_OPTIONS,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{service}: base URL must be an absolute http(s) URL")
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.options = options
        self._session = session
        self._owns_session = False

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is not None and not self._session.closed:
            return self._session
        job = _job_session()
        if job is not None:
            return job
        self._session = aiohttp.ClientSession()
        self._owns_session = True
        return self._session

    async def aclose(self) -> None:
        """Close the session if this client created it."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
        self._owns_session = False

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        expect_json: bool = True,
        on_404: type[ServiceError] = NotFound,
        idempotent: bool | None = None,
        classify: ErrorClassifier | None = None,
    ) -> Any:
        """Send one request and return the decoded JSON body (``None`` for an empty body).

        ``timeout`` (seconds, > 0) shortens the per-request timeout for this call, never
        exceeding ``options.timeout``. ``on_404`` is the error a 404 becomes: the default
        :class:`NotFound` suits record reads; a search or query endpoint, which answers
        "nothing" with an empty list, passes :class:`BadResponse` so a wrong URL is not
        mistaken for a missing person. ``idempotent`` (default: GET, HEAD, OPTIONS) says
        whether a connection lost mid-body may be retried (:class:`ConnectionFailed`); for
        anything else it is :class:`BadResponse`, an outcome-unknown failure. ``classify``
        refines the error of an error answer from its body (the vendor's error codes):
        it gets the taxonomy error and the decoded JSON body (``None`` when empty or not
        JSON) and returns the error to raise. Raises only
        :class:`~src.errors.ServiceError` subclasses (and ``asyncio.CancelledError``).
        """
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be > 0 seconds")
        total = min(timeout, self.options.timeout) if timeout else self.options.timeout
        adapted = latency.REQUEST_LIMIT.get()  # issue #15: the vendor's adaptive timeout
        if adapted is not None and adapted > 0:
            total = min(total, adapted)
        if idempotent is None:
            idempotent = method.upper() in IDEMPOTENT_METHODS
        url = f"{self.base_url}{path}"
        started = time.perf_counter()
        status: int | str = "-"
        # One timer per attempt: borrow the retry's attempt timer when there is one.
        timer = current_attempt_timer()
        restore_at: float | None = None
        own_timer: contextlib.AbstractAsyncContextManager[Any]
        if timer is not None:
            own_timer = contextlib.nullcontext()
            attempt_end = timer.when()
            own_end = asyncio.get_running_loop().time() + total
            if attempt_end is not None and own_end < attempt_end:
                timer.reschedule(own_end)
                restore_at = attempt_end
        else:
            own_timer = asyncio.timeout(total)
        try:
            try:
                async with own_timer:
                    status, text = await self._send(
                        method, url, params, json_body, form, headers, total, on_404, classify
                    )
            except _Status as answered:
                status = answered.status
                raise answered.error from None
            except asyncio.CancelledError:
                if timer is not None and restore_at is not None and timer.expired():
                    # Our own limit fired on the borrowed timer: report it as ours (the
                    # timer's exit then sees no cancellation to convert).
                    status = "timeout"
                    raise ServiceTimeout(
                        self.service, f"{self.service} did not answer within {total:.1f}s"
                    ) from None
                raise
            except _BodyTooLarge as exc:
                status = "too-large"
                cap = self.options.max_body_bytes
                how = "declared" if exc.declared else "sent"
                raise BadResponse(
                    self.service, f"{self.service} {how} a body over {cap} bytes"
                ) from None
            except TimeoutError as exc:
                status = "timeout"
                raise ServiceTimeout(
                    self.service, f"{self.service} did not answer within {total:.1f}s"
                ) from exc
            except (aiohttp.ClientConnectionError, ConnectionError) as exc:
                # ClientConnectorError (refused/DNS), ServerDisconnectedError, resets.
                status = "connection"
                raise ConnectionFailed(
                    self.service, f"{self.service} connection failed: {type(exc).__name__}"
                ) from exc
            except aiohttp.ClientPayloadError as exc:
                if idempotent:
                    # A read cut mid-body changed nothing: repeating it is safe.
                    status = "connection-mid-body"
                    raise ConnectionFailed(
                        self.service, f"{self.service} connection lost mid-body"
                    ) from exc
                status = "bad-payload"
                raise BadResponse(self.service, f"{self.service} sent a broken body") from exc
            except aiohttp.ClientError as exc:
                status = "client-error"
                raise ServiceUnavailable(
                    self.service, f"{self.service} request failed: {type(exc).__name__}"
                ) from exc
            finally:
                if timer is not None and restore_at is not None and not timer.expired():
                    timer.reschedule(restore_at)
            if not expect_json or not text.strip():
                return text if not expect_json else None
            try:
                return json.loads(text)
            except (ValueError, RecursionError) as exc:
                status = f"{status}-unparseable"
                raise BadResponse(self.service, f"{self.service} sent a non-JSON body") from exc
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            if isinstance(status, int):  # answered: how long an answer takes (issue #15)
                latency.observe(self.service, elapsed_ms / 1000)
                vendor_answered()  # issue #23: a probe may close the circuit on this
            logger.debug(  # the logger's redacting filter masks the path when it logs
                "%s %s %s -> %s in %.0f ms",
                self.service,
                method,
                path,
                status,
                elapsed_ms,
                extra={"service": self.service, "status": status, "elapsed_ms": elapsed_ms},
            )

    async def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, str | int] | None,
        json_body: Any,
        form: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        total: float,
        on_404: type[ServiceError],
        classify: ErrorClassifier | None = None,
    ) -> tuple[int, str]:
        """One request; its status and body as text. The caller arms the overall timer; aiohttp
        bounds only the connect phase."""
        client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(self.options.connect_timeout, total)
        )
        async with self._get_session().request(
            method,
            url,
            params=params,
            json=json_body,
            data=form,
            headers=headers,
            timeout=client_timeout,
        ) as resp:
            error = error_for_status(self.service, resp.status, resp.headers)
            if error is not None:
                raw = b""
                try:
                    raw = await read_capped(resp, ERROR_BODY_DRAIN)  # reuse the connection
                except _BodyTooLarge:
                    resp.close()  # drop the connection rather than read the rest
                if resp.status == 404 and on_404 is not NotFound:
                    error = on_404(self.service, error.args[0], status=404)
                if classify is not None:
                    error = classify(error, _error_body(raw, resp.charset))
                raise _Status(resp.status, error)
            raw = await read_capped(resp, self.options.max_body_bytes)
            return resp.status, _decode(raw, resp.charset)


def _error_body(raw: bytes, charset: str | None) -> Any:
    """An error answer's JSON body, or ``None`` (empty, too large, not JSON)."""
    try:
        return json.loads(_decode(raw, charset)) if raw.strip() else None
    except (ValueError, RecursionError):
        return None


class _Status(Exception):
    """Internal: the server answered with an error status (carried to the log line)."""

    def __init__(self, status: int, error: ServiceError) -> None:
        super().__init__(status)
        self.status = status
        self.error = error


class ServiceClient:
    """Base of the vendor clients: each owns one :class:`ServiceHttp` as ``_http`` and is
    an async context manager that closes it."""

    _http: ServiceHttp

    async def aclose(self) -> None:
        """Close the HTTP session if this client created it."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
