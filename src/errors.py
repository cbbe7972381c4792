"""One exception taxonomy for every external service, decided in one place.

Service clients translate each transport or HTTP failure where it enters (``raise ...
from exc``) into this tree; the breaker, the retry policy and the phrase the caller hears
all read it, so no other module inspects status codes or aiohttp exceptions::

    ServiceError(service, retryable)
     ├── ServiceUnavailable    connect errors, 5xx             retryable, counts for the breaker
     │    └── ConnectionFailed connection refused / reset      retryable, counts
     ├── ServiceTimeout        attempt or deadline exceeded    retryable, counts
     ├── RateLimited           429 (+ retry_after seconds)     retryable, counts
     ├── AuthenticationFailed  401/403                         not retried, counts
     ├── NotFound              404 / empty result              not retried, does not count
     ├── BadResponse           unparseable / schema mismatch   not retried, counts
     ├── ServiceBusy           refused for now, not applied    retryable, does not count
     │                         (a vendor code such as Salesforce UNABLE_TO_LOCK_ROW)
     └── InvalidRequest        400/409/422: we sent bad input  not retried, does not count
    CircuitOpenError           raised by the breaker without calling the service

Messages are for operators (logs) and never reach the LLM or the caller; the phrase the
caller hears is chosen from the exception *type* by ``error_recovery``.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "BadResponse",
    "CircuitOpenError",
    "ConnectionFailed",
    "InvalidRequest",
    "NotFound",
    "RateLimited",
    "ServiceBusy",
    "ServiceError",
    "ServiceTimeout",
    "ServiceUnavailable",
]


class ServiceError(Exception):
    """Base of every failure of an external service.

    Attributes:
        service: short service name (``"amplitude"``, ``"salesforce"``, ...).
        retryable: whether repeating the same request may succeed.
        counts_for_breaker: whether the failure is evidence that the service is unhealthy.
        status: HTTP status when one was received, else ``None`` (operators only).
    """

    retryable: bool = False
    counts_for_breaker: bool = True

    def __init__(self, service: str, message: str = "", *, status: int | None = None) -> None:
        super().__init__(message or self.__class__.__name__)
        self.service = service
        self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}(service={self.service!r}, status={self.status!r})"


class ServiceUnavailable(ServiceError):
    """The service could not serve the request (5xx or no connection)."""

    retryable = True


class ConnectionFailed(ServiceUnavailable):
    """No connection could be made or kept (refused, reset, DNS)."""


class ServiceTimeout(ServiceError):
    """An attempt or the overall deadline ran out before the service answered."""

    retryable = True


class RateLimited(ServiceError):
    """HTTP 429. ``retry_after`` is the server's requested wait in seconds, if any."""

    retryable = True

    def __init__(
        self,
        service: str,
        message: str = "",
        *,
        retry_after: float | None = None,
        status: int | None = 429,
    ) -> None:
        super().__init__(service, message, status=status)
        self.retry_after = retry_after


class AuthenticationFailed(ServiceError):
    """HTTP 401/403: our credentials are wrong or expired. Retrying will not help."""


class NotFound(ServiceError):
    """The record does not exist. A normal answer, not a sign of an unhealthy service."""

    counts_for_breaker = False


class BadResponse(ServiceError):
    """The service answered with something we cannot parse or that breaks its schema."""


class ServiceBusy(ServiceError):
    """The service refused this request for now and certainly did not apply it (a
    transient vendor error code, e.g. Salesforce ``UNABLE_TO_LOCK_ROW`` with HTTP 400: a
    record locked by another transaction). The same request may succeed later, so a write
    is kept and sent again; a busy record says nothing about the service's health."""

    retryable = True
    counts_for_breaker = False


class InvalidRequest(ServiceError):
    """The service rejected our input (400/409/422). Our fault, not the service's health."""

    counts_for_breaker = False


class CircuitOpenError(Exception):
    """Raised by a :class:`~src.error_recovery.CircuitBreaker` that refuses a call.

    ``retry_in`` is the number of seconds until the breaker will let a probe through.
    """

    retryable = False

    def __init__(self, name: str = "", retry_in: float = 0.0) -> None:
        super().__init__(f"circuit {name or '<unnamed>'} is open")
        self.name = name
        self.retry_in = retry_in
