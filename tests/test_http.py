"""The shared HTTP layer: every failure becomes the taxonomy, nothing else escapes."""

from __future__ import annotations

import email.utils
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from src.errors import (
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
from src.sandbox.base import SandboxServer
from src.services.http import (
    MAX_RETRY_AFTER,
    HttpOptions,
    ServiceHttp,
    error_for_status,
    parse_retry_after,
    write_outcome_is_ambiguous,
)

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("  7 ", 7.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-5", None),
        ("inf", None),
        ("Infinity", None),
        ("1e400", None),
        ("1_0", None),
        ("soon", None),
        ("999999999", MAX_RETRY_AFTER),
        (email.utils.formatdate(NOW + 30, usegmt=True), 30.0),
        (email.utils.formatdate(NOW - 30, usegmt=True), 0.0),
        (email.utils.formatdate(NOW + 10 * 86_400, usegmt=True), MAX_RETRY_AFTER),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=lambda: NOW) == expected


@pytest.mark.parametrize(
    ("status", "expected", "retryable"),
    [
        (200, None, None),
        (304, None, None),
        (400, InvalidRequest, False),
        (401, AuthenticationFailed, False),
        (403, AuthenticationFailed, False),
        (404, NotFound, False),
        (408, ServiceTimeout, True),
        (409, InvalidRequest, False),
        (422, InvalidRequest, False),
        (429, RateLimited, True),
        (500, ServiceUnavailable, True),
        (502, ServiceUnavailable, True),
        (503, ServiceUnavailable, True),
    ],
)
def test_error_for_status(
    status: int, expected: type[ServiceError] | None, retryable: bool | None
) -> None:
    error = error_for_status("svc", status, {"Retry-After": "2"})
    if expected is None:
        assert error is None
        return
    assert type(error) is expected
    assert error.retryable is retryable
    if isinstance(error, RateLimited):
        assert error.retry_after == 2.0


def test_write_outcome_policy() -> None:
    assert not write_outcome_is_ambiguous(CircuitOpenError("svc"))
    assert not write_outcome_is_ambiguous(RateLimited("svc"))
    assert not write_outcome_is_ambiguous(ServiceUnavailable("svc", status=503))
    assert not write_outcome_is_ambiguous(InvalidRequest("svc", status=400))
    assert write_outcome_is_ambiguous(ServiceUnavailable("svc", status=500))
    assert write_outcome_is_ambiguous(ServiceTimeout("svc"))
    assert write_outcome_is_ambiguous(BadResponse("svc"))
    assert write_outcome_is_ambiguous(TimeoutError())


class Odd(SandboxServer):
    """Bodies no vendor should send."""

    name = "odd"

    def add_routes(self, app: web.Application) -> None:
        async def latin(request: web.Request) -> web.Response:
            return web.Response(body=b'{"name": "\xff\xfe"}', content_type="application/json")

        async def deep(request: web.Request) -> web.Response:
            return web.Response(body=b"[" * 100_000, content_type="application/json")

        async def gone(request: web.Request) -> web.Response:
            return web.json_response({"message": "no such route"}, status=404)

        async def ok(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        app.router.add_get("/latin", latin)
        app.router.add_get("/deep", deep)
        app.router.add_get("/gone", gone)
        app.router.add_get("/ok", ok)


@pytest.fixture
async def http() -> AsyncIterator[tuple[Odd, ServiceHttp]]:
    async with Odd() as server:
        client = ServiceHttp("odd", server.base_url, options=HttpOptions(0.5, 0.3))
        yield server, client
        await client.aclose()


async def test_undecodable_and_absurd_bodies_are_bad_responses(
    http: tuple[Odd, ServiceHttp],
) -> None:
    _, client = http
    # Undecodable bytes are replaced, never a UnicodeDecodeError escaping the taxonomy.
    assert await client.request("GET", "/latin") == {"name": "\ufffd\ufffd"}
    with pytest.raises(BadResponse):  # not a RecursionError
        await client.request("GET", "/deep")


async def test_a_search_404_is_not_a_missing_person(http: tuple[Odd, ServiceHttp]) -> None:
    _, client = http
    with pytest.raises(NotFound):
        await client.request("GET", "/gone")
    with pytest.raises(BadResponse) as info:
        await client.request("GET", "/gone", on_404=BadResponse)
    assert info.value.status == 404
    assert info.value.counts_for_breaker


async def test_timeout_override_is_validated(http: tuple[Odd, ServiceHttp]) -> None:
    _, client = http
    assert await client.request("GET", "/ok", timeout=0.2) == {"ok": True}
    with pytest.raises(ValueError):
        await client.request("GET", "/ok", timeout=-1)


async def test_refused_connection_is_connection_failed(http: tuple[Odd, ServiceHttp]) -> None:
    server, client = http
    await server.go_down()
    with pytest.raises(ConnectionFailed) as info:
        await client.request("GET", "/ok")
    assert not write_outcome_is_ambiguous(info.value)  # nothing was sent


def test_base_url_must_be_absolute() -> None:
    with pytest.raises(ValueError):
        ServiceHttp("odd", "api.example.com")
