"""Hostile answers at the HTTP layer (issue #11): huge bodies are refused while they
stream, a read reset mid-body is retried, and one attempt runs under one timer. Real
sandbox servers on 127.0.0.1, real aiohttp clients."""

from __future__ import annotations

import asyncio
import base64
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from src.attempt import current_attempt_timer
from src.error_recovery import retry_with_exponential_backoff
from src.errors import (
    BadResponse,
    ConnectionFailed,
    ServiceTimeout,
    ServiceUnavailable,
)
from src.sandbox import Sandbox
from src.sandbox.__main__ import main as sandbox_cli
from src.sandbox.amplitude import AmplitudeServer
from src.sandbox.base import FaultKind, SandboxServer
from src.sandbox.data import SANDBOX_CREDENTIALS, TRIAL_USERS
from src.sandbox.hubspot import HubSpotServer
from src.services.amplitude import AmplitudeClient, parse_activity
from src.services.http import HttpOptions, ServiceHttp, write_outcome_is_ambiguous
from src.services.hubspot import HubSpotClient
from src.settings import ResponseLimits, SettingsError, settings_from_env
from tests.test_agent import Rig, rig, sandbox, tool_output  # noqa: F401  (fixtures)

CAP = ResponseLimits().amplitude
OPTIONS = HttpOptions(timeout=5.0, connect_timeout=1.0, max_body_bytes=CAP)
JANE = TRIAL_USERS[0]
ACTIVITY = "/api/2/useractivity"
_PAIR = f"{SANDBOX_CREDENTIALS['AMPLITUDE_API_KEY']}:{SANDBOX_CREDENTIALS['AMPLITUDE_SECRET_KEY']}"
AUTH = {"Authorization": "Basic " + base64.b64encode(_PAIR.encode()).decode()}


@pytest.fixture
async def amplitude() -> AsyncIterator[AmplitudeServer]:
    srv = AmplitudeServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def client(amplitude: AmplitudeServer) -> AsyncIterator[AmplitudeClient]:
    c = AmplitudeClient(
        SANDBOX_CREDENTIALS["AMPLITUDE_API_KEY"],
        SANDBOX_CREDENTIALS["AMPLITUDE_SECRET_KEY"],
        amplitude.base_url,
        options=OPTIONS,
    )
    async with c:
        yield c


class LagProbe:
    """A concurrent task that measures how late the event loop wakes it."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.worst = max(self.worst, time.perf_counter() - t0 - self.interval)

    async def __aenter__(self) -> LagProbe:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest.mark.parametrize(
    ("kind", "size", "how"),
    [
        (FaultKind.HUGE_BODY, 10_000_000, "declared"),  # Content-Length says so: no read
        (FaultKind.HUGE_STREAM, 100_000_000, "sent"),  # chunked: cut at the cap
    ],
)
async def test_huge_body_is_refused_without_buffering_it(
    amplitude: AmplitudeServer, client: AmplitudeClient, kind: FaultKind, size: int, how: str
) -> None:
    fault = amplitude.inject(ACTIVITY, kind, size_bytes=size)
    tracemalloc.start()
    try:
        async with LagProbe() as probe:
            started = time.perf_counter()
            with pytest.raises(BadResponse, match=f"{how} a body over {CAP} bytes"):
                await client.get_trial_usage(JANE.email)
            elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < CAP + 2 * 1024 * 1024, f"held {peak} bytes"
    assert fault.sent_bytes < size / 2  # the server could not push the rest
    assert probe.worst < 0.050, f"event loop blocked for {probe.worst * 1000:.0f} ms"
    assert elapsed < 5.0  # upper bound only
    # the connection pool is healthy afterwards
    amplitude.clear()
    usage = await client.get_trial_usage(JANE.email)
    assert usage.documents_created == JANE.documents_created


class HugeError(SandboxServer):
    """A 503 whose body is 50 MB, streamed: an error answer must not be read whole."""

    sent = 0

    def add_routes(self, app: web.Application) -> None:
        async def huge_503(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(status=503)
            resp.content_length = 50_000_000
            await resp.prepare(request)
            chunk = b"x" * 65536
            try:
                while self.sent < 50_000_000:
                    await resp.write(chunk)
                    self.sent += len(chunk)
            except (ConnectionError, RuntimeError):
                pass
            return resp

        app.router.add_get("/down", huge_503)


async def test_error_answer_with_a_huge_body_is_not_read() -> None:
    async with HugeError() as server:
        http = ServiceHttp("svc", server.base_url, options=OPTIONS)
        tracemalloc.start()
        try:
            with pytest.raises(ServiceUnavailable):
                await http.request("GET", "/down")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            await http.aclose()
    assert peak < 2 * 1024 * 1024, f"held {peak} bytes"
    assert server.sent < 25_000_000


def test_response_limits_are_settings() -> None:
    s = settings_from_env({"HUBSPOT_MAX_RESPONSE_BYTES": "2048"})
    assert s.response_limits.hubspot == 2048
    assert s.response_limits.amplitude == 3 * 1024 * 1024
    with pytest.raises(SettingsError, match="AMPLITUDE_MAX_RESPONSE_BYTES"):
        settings_from_env({"AMPLITUDE_MAX_RESPONSE_BYTES": "10"})
    with pytest.raises(ValueError):
        HttpOptions(max_body_bytes=10)


# -- a connection reset mid-body -----------------------------------------------------------


async def test_read_reset_mid_body_is_a_retryable_connection_failure(
    amplitude: AmplitudeServer, client: AmplitudeClient
) -> None:
    amplitude.inject(ACTIVITY, FaultKind.RESET_MID_BODY, count=1)
    with pytest.raises(ConnectionFailed, match="mid-body") as info:
        await client.get_trial_usage(JANE.email)
    assert info.value.retryable

    amplitude.inject(ACTIVITY, FaultKind.RESET_MID_BODY, count=1)
    sleeps: list[float] = []

    async def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    usage = await retry_with_exponential_backoff(
        lambda: client.get_trial_usage(JANE.email), max_retries=2, sleep=no_sleep
    )
    assert usage.documents_created == JANE.documents_created
    assert len(sleeps) == 1  # one retry, recorded, not waited


async def test_write_reset_mid_body_stays_outcome_unknown() -> None:
    async with HubSpotServer() as hubspot:
        http = ServiceHttp("hubspot", hubspot.base_url, options=OPTIONS)
        try:
            hubspot.inject("/crm/v3/objects/notes", FaultKind.RESET_MID_BODY, count=1)
            with pytest.raises(BadResponse) as info:
                await http.request("POST", "/crm/v3/objects/notes", json_body={"x": 1})
        finally:
            await http.aclose()
    assert not info.value.retryable
    assert write_outcome_is_ambiguous(info.value)


async def test_tool_survives_one_reset_mid_body(rig: Rig) -> None:  # noqa: F811
    rig.sandbox.amplitude.inject(ACTIVITY, FaultKind.RESET_MID_BODY, count=1)
    out = tool_output(await rig.say("How is my trial usage?"), "get_trial_usage")
    assert not out.is_error
    assert out.output.startswith("You've created fourteen documents")
    assert len(rig.sleep.delays) == 1


# -- one timer per attempt -----------------------------------------------------------------


async def test_request_borrows_the_attempt_timer_and_gives_it_back(
    amplitude: AmplitudeServer,
) -> None:
    http = ServiceHttp(
        "amplitude", amplitude.base_url, options=HttpOptions(timeout=0.3, connect_timeout=0.3)
    )
    seen: dict[str, Any] = {}

    async def attempt() -> None:
        timer = current_attempt_timer()
        assert timer is not None
        seen["before"] = timer.when()
        await http.request("GET", "/api/2/usersearch", params={"user": JANE.email}, headers=AUTH)
        seen["after_ok"] = timer.when()
        amplitude.inject("*", FaultKind.SLOW, delay_ms=2000)
        await http.request("GET", "/api/2/usersearch", params={"user": JANE.email}, headers=AUTH)

    try:
        started = time.perf_counter()
        with pytest.raises(ServiceTimeout):  # its own limit, reported as its own
            await retry_with_exponential_backoff(attempt, max_retries=0, attempt_timeout=30.0)
        assert time.perf_counter() - started < 2.0
    finally:
        amplitude.clear()
        await http.aclose()
    assert seen["after_ok"] == seen["before"]  # the attempt's own end was restored


async def test_tasks_started_inside_an_attempt_arm_their_own_timers(
    amplitude: AmplitudeServer,
) -> None:
    options = HttpOptions(timeout=0.3, connect_timeout=0.3)
    http = ServiceHttp("amplitude", amplitude.base_url, options=options)
    later: list[asyncio.Task[Any]] = []

    async def attempt() -> list[Any]:
        timer = current_attempt_timer()
        assert timer is not None
        end = timer.when()

        async def search(user: str) -> Any:
            assert current_attempt_timer() is None  # not this task's timer to move
            return await http.request(
                "GET", "/api/2/usersearch", params={"user": user}, headers=AUTH
            )

        results = await asyncio.gather(
            search(JANE.email), search("slow@example.com"), return_exceptions=True
        )
        assert timer.when() == end
        later.append(asyncio.create_task(search(JANE.email)))  # outlives the attempt
        return results

    amplitude.inject("*", FaultKind.SLOW, delay_ms=2000, count=1)
    try:
        first, second = await retry_with_exponential_backoff(
            attempt, max_retries=0, attempt_timeout=30.0
        )
        assert isinstance(first, ServiceTimeout) or isinstance(second, ServiceTimeout)
        assert {type(first), type(second)} == {ServiceTimeout, dict}
        assert isinstance(await later[0], dict)  # no finished timer was touched
    finally:
        amplitude.clear()
        await http.aclose()


async def test_attempt_timer_shorter_than_the_request_limit_wins(
    amplitude: AmplitudeServer,
) -> None:
    http = ServiceHttp("amplitude", amplitude.base_url, options=HttpOptions(timeout=5.0))
    amplitude.inject("*", FaultKind.SLOW, delay_ms=2000)
    try:
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            await retry_with_exponential_backoff(
                lambda: http.request(
                    "GET", "/api/2/usersearch", params={"user": "x"}, headers=AUTH
                ),
                max_retries=0,
                attempt_timeout=0.2,
            )
        assert time.perf_counter() - started < 1.5
    finally:
        amplitude.clear()
        await http.aclose()


async def test_search_by_post_is_a_read_too() -> None:
    async with HubSpotServer() as hubspot:
        client = HubSpotClient(
            SANDBOX_CREDENTIALS["HUBSPOT_ACCESS_TOKEN"], hubspot.base_url, options=OPTIONS
        )
        async with client:
            hubspot.inject("/crm/v3/objects/contacts/search", FaultKind.RESET_MID_BODY, count=1)
            with pytest.raises(ConnectionFailed):
                await client.find_contact(JANE.email)
            contact = await client.find_contact(JANE.email)
    assert contact is not None


async def test_cli_sets_a_huge_body_fault(tmp_path: Path) -> None:
    async with Sandbox() as sb:
        env_file = tmp_path / ".env.local"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in sb.env().items()))
        argv = ["fault", "amplitude", "huge-stream", "--size-bytes", "123456"]
        code = await asyncio.to_thread(sandbox_cli, [*argv, "--env-file", str(env_file)])
        assert code == 0
        (fault,) = sb.amplitude.faults
    assert (fault.kind, fault.size_bytes) == (FaultKind.HUGE_STREAM, 123_456)


async def test_a_large_activity_page_is_validated_in_steps_that_yield_to_the_loop() -> None:
    """Validation of a page near the cap is cut into batches with a yield between them:
    a concurrent task gets turns while it runs (the conversation's audio would too)."""
    event = {"event_type": "document_created", "event_time": "2026-11-20 12:00:00.123456"}
    page = {"userData": {"properties": {}}, "events": [event] * 5_000}
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    started = turns
    activity = await parse_activity(page)
    task.cancel()
    assert len(activity.events) == 5_000
    assert turns - started >= 5_000 // 250 - 1  # a turn for the loop between batches

    broken = {"userData": {}, "events": [event] * 300 + [{"event_type": 7}]}
    with pytest.raises(BadResponse):
        await parse_activity(broken)
    with pytest.raises(BadResponse):
        await parse_activity({"events": "not a list"})
