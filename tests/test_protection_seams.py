"""Issue #23: where breaker, retry budget and store meet, protection never harms.

* the rate rules judge calls as the caller feels them (a retried call that succeeds is a
  success), the consecutive-attempt rule still stops a dead vendor after three requests;
* only an answer from the vendor ends a half-open probe as a success, and every probe
  ends (no breaker stays half-open with no probe in flight);
* a success never opens the shared circuit;
* (issue #24) an answer that is no success (not found, invalid) ends a streak of
  failures, as it ends a probe: three failures open a circuit only in a row.

Stores are real: a SQLite file and a redis-server (``store_url``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from src.attempt import listening, served_locally, vendor_answered
from src.drill.simulation.faults import FaultyStore, StoreFaults
from src.error_recovery import CircuitBreaker, CircuitState, ErrorRecoveryMixin, RateRule
from src.errors import (
    CircuitOpenError,
    InvalidRequest,
    NotFound,
    ServiceTimeout,
    ServiceUnavailable,
)
from src.registry import READ
from src.sandbox.base import SandboxServer
from src.services.http import HttpOptions, ServiceHttp
from src.services.quota import QuotaExhausted
from src.store import ResilienceStore, SqliteStore, StoreGuard, open_store
from src.store.base import new_record, rule_failure, rule_success, view_of

FALLBACK = "I can't pull that up right now."


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def no_sleep(_: float) -> None:
    return None


class Caller(ErrorRecoveryMixin):
    retry_sleep = staticmethod(no_sleep)

    def __init__(self, breaker: CircuitBreaker, clock: Clock) -> None:
        self.circuit_breakers = {"amp": breaker}
        self.retry_clock = clock


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[ResilienceStore]:
    opened = open_store(store_url)
    yield opened
    await opened.aclose()


def breaker_on(store: ResilienceStore | None, clock: Clock, **kw: object) -> CircuitBreaker:
    guard = StoreGuard(store) if store is not None else None
    return CircuitBreaker(3, name="amp", clock=clock, store=guard, share_ttl=0.0, **kw)  # type: ignore[arg-type]


async def vendor_down() -> str:
    raise ServiceUnavailable("amp", status=503)


async def vendor_up() -> str:
    return "data"


def every_other_request_fails() -> Callable[[], Awaitable[str]]:
    """A vendor failing every other request (the first with a 503)."""
    n = 0

    async def flapping() -> str:
        nonlocal n
        n += 1
        if n % 2:
            raise ServiceUnavailable("amp", status=503)
        return "data"

    return flapping


# -- item 2: rules that judge what the caller feels ------------------------------------
async def test_every_other_request_failing_is_absorbed_and_the_circuit_stays_closed(
    store: ResilienceStore,
) -> None:
    clock = Clock()
    breaker = breaker_on(store, clock, rate_rule=RateRule())  # failure rate 50 % over 10
    caller = Caller(breaker, clock)
    flapping = every_other_request_fails()

    got = [
        await caller.call_with_retry_and_circuit_breaker("amp", flapping, FALLBACK)
        for _ in range(30)
    ]
    assert got == ["data"] * 30  # every call answered (attempts: half failed)
    assert breaker.state is CircuitState.CLOSED
    assert (await store.breaker_view("amp", 30.0)).state == "closed"


async def test_slow_failed_attempts_do_not_trip_the_slow_call_rule_when_retries_answer() -> None:
    clock = Clock()
    rule = RateRule(slow_call_duration=1.0, slow_call_rate_threshold=0.5)
    breaker = breaker_on(None, clock, rate_rule=rule)
    caller = Caller(breaker, clock)
    n = 0

    async def slow_fail_then_fast() -> str:
        nonlocal n
        n += 1
        if n % 2:
            clock.now += 2.0  # a slow attempt that fails
            raise ServiceTimeout("amp")
        clock.now += 0.1
        return "data"

    got = [
        await caller.call_with_retry_and_circuit_breaker("amp", slow_fail_then_fast, FALLBACK)
        for _ in range(20)
    ]
    assert got == ["data"] * 20 and breaker.state is CircuitState.CLOSED


async def test_failed_calls_still_open_by_rate_and_a_dead_vendor_costs_three_requests() -> None:
    clock = Clock()
    rule = RateRule(failure_rate_threshold=0.5, minimum_calls=4, window_size=4)
    breaker = CircuitBreaker(100, name="amp", clock=clock, rate_rule=rule)
    caller = Caller(breaker, clock)
    failing = False

    async def two_of_three_calls_fail() -> str:  # a failing call: every retry fails too
        if failing:
            raise ServiceUnavailable("amp", status=503)
        return "data"

    for n in range(6):
        failing = bool(n % 3)
        await caller.call_with_retry_and_circuit_breaker("amp", two_of_three_calls_fail, FALLBACK)
    assert breaker.state is CircuitState.OPEN  # the caller-felt failure rate opened it

    requests = 0

    async def dead() -> str:
        nonlocal requests
        requests += 1
        raise ServiceUnavailable("amp", status=503)

    dead_breaker = breaker_on(None, clock, rate_rule=RateRule())
    dead_caller = Caller(dead_breaker, clock)
    for _ in range(5):
        assert (
            await dead_caller.call_with_retry_and_circuit_breaker("amp", dead, FALLBACK) == FALLBACK
        )
    assert requests == 3 and dead_breaker.state is CircuitState.OPEN


async def test_calls_sent_once_by_choice_are_left_to_the_consecutive_rule() -> None:
    # Issue #24: the outbox sends a write once per flush (its retry is the next flush).
    # On a vendor failing every other request such calls fail half the time, though a
    # retry would have absorbed each fault: the failure rate must not open the circuit
    # (a lookup the vendor would answer then falls back). Three in a row still do.
    clock = Clock()
    rule = RateRule(failure_rate_threshold=0.5, minimum_calls=4, window_size=4)
    breaker = CircuitBreaker(3, name="amp", clock=clock, rate_rule=rule)
    caller = Caller(breaker, clock)
    flapping = every_other_request_fails()

    for _ in range(12):
        await caller.call_with_retry_and_circuit_breaker("amp", flapping, "", max_retries=0)
    assert breaker.state is CircuitState.CLOSED  # 6 of 12 sent-once calls failed

    async def down() -> str:
        raise ServiceUnavailable("amp", status=503)

    for _ in range(3):
        await caller.call_with_retry_and_circuit_breaker("amp", down, "", max_retries=0)
    assert breaker.state is CircuitState.OPEN  # three failures in a row


async def test_a_success_the_store_missed_ends_the_fleets_streak_once_it_is_back(
    store: ResilienceStore,
) -> None:
    # Issue #24 (simulate --seed 7): a failure reached the store, then the store was
    # unreachable (down, or cooling down after a slow operation) for a failure and the
    # success that ended the streak. Back, the store still held the old failure: adopted,
    # two new failures made "three in a row" and opened the circuit. The success the
    # store missed is told to it first.
    clock = Clock()
    faults = StoreFaults()
    guard = StoreGuard(FaultyStore(store, faults), clock=clock, cool_down=2.0)  # type: ignore[arg-type]
    breaker = CircuitBreaker(3, name="amp", clock=clock, store=guard, share_ttl=0.0)
    caller = Caller(breaker, clock)

    down, up = vendor_down, vendor_up

    await caller.call_with_retry_and_circuit_breaker("amp", down, "", max_retries=0)
    assert (await store.breaker_view("amp", 30.0)).failures == 1
    faults.down = True
    await caller.call_with_retry_and_circuit_breaker("amp", down, "", max_retries=0)
    assert await caller.call_with_retry_and_circuit_breaker("amp", up, "", max_retries=0) == "data"
    faults.down = False
    clock.now += 3.0  # past the guard's cool-down
    for _ in range(2):
        await caller.call_with_retry_and_circuit_breaker("amp", down, "", max_retries=0)
    assert breaker.state is CircuitState.CLOSED and breaker.failure_count == 2
    view = await store.breaker_view("amp", 30.0)
    assert view.state == "closed" and view.failures == 2
    await caller.call_with_retry_and_circuit_breaker("amp", down, "", max_retries=0)
    assert breaker.state is CircuitState.OPEN  # three in a row still open it


class SlowFirstSuccess:
    """Forwards to ``inner``; the first ``breaker_success`` (the background send) is
    slower than the failure sent after it (well within the guard's 0.3 s timeout)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.delayed = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def breaker_success(self, *args: object) -> bool:
        if not self.delayed:
            self.delayed = True
            await asyncio.sleep(0.05)
        return await self.inner.breaker_success(*args)  # type: ignore[attr-defined, no-any-return]


async def test_a_failure_after_a_background_success_reaches_the_store_after_it(
    store: ResilienceStore,
) -> None:
    # Issue #24 (CI, the test above on Redis): a success the guard's cool-down kept from
    # the store went in the background; the next failure overtook it on its way, and the
    # success then cleared that failure too, so the new streak was counted one short.
    clock = Clock()
    faults = StoreFaults(slow={"breaker_failure": 1})  # committed, the guard stops waiting
    slow = SlowFirstSuccess(FaultyStore(store, faults))
    guard = StoreGuard(slow, clock=clock, cool_down=2.0)  # type: ignore[arg-type]
    breaker = CircuitBreaker(3, name="amp", clock=clock, store=guard, share_ttl=0.0)
    caller = Caller(breaker, clock)

    await caller.call_with_retry_and_circuit_breaker("amp", vendor_down, "", max_retries=0)
    assert guard.cooling_down and (await store.breaker_view("amp", 30.0)).failures == 1
    assert await caller.call_with_retry_and_circuit_breaker("amp", vendor_up, "") == "data"
    clock.now += 3.0  # past the cool-down; the success is still on its way
    await caller.call_with_retry_and_circuit_breaker("amp", vendor_down, "", max_retries=0)
    await asyncio.sleep(0.1)  # anything still in flight lands
    assert slow.delayed
    view = await store.breaker_view("amp", 30.0)
    assert view.failures == 1 and breaker.failure_count == 1


async def test_a_success_lands_after_a_concurrent_failure_on_its_way_to_the_store(
    store: ResilienceStore,
) -> None:
    # Issue #24 (simulate --seed 24, example 3613): two calls of one reply; the first
    # failed, and while its failure was on its way to the store the second succeeded.
    # The success (the process's count still 0) was not written, the failure landed
    # after it, and the fleet kept one failure as the start of a streak that two later
    # failures turned into "three in a row". The success now waits for it.
    clock = Clock()
    release = asyncio.Event()

    class SlowFailures:  # the real store; a failure's write is held until released
        def __init__(self, inner: ResilienceStore) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        async def breaker_failure(self, *args: object) -> object:
            await release.wait()
            return await self.inner.breaker_failure(*args)  # type: ignore[arg-type]

    guard = StoreGuard(SlowFailures(store), timeout=5.0, clock=clock)  # type: ignore[arg-type]
    breaker = CircuitBreaker(3, name="amp", clock=clock, store=guard, share_ttl=0.0)
    caller = Caller(breaker, clock)

    down, up = vendor_down, vendor_up

    failing = asyncio.create_task(
        caller.call_with_retry_and_circuit_breaker("amp", down, "", max_retries=0)
    )
    for _ in range(10):
        await asyncio.sleep(0)  # its failure is on its way to the store
    succeeding = asyncio.create_task(
        caller.call_with_retry_and_circuit_breaker("amp", up, "", max_retries=0)
    )
    for _ in range(10):
        await asyncio.sleep(0)
    release.set()
    assert await succeeding == "data"
    await failing
    assert (await store.breaker_view("amp", 30.0)).failures == 0  # the success came last
    assert breaker.failure_count == 0


async def test_an_answer_that_arrives_after_the_circuit_opened_closes_it(
    store: ResilienceStore,
) -> None:
    # Issue #24 (simulate --seed 7, example 4530): an attempt sent after the failures
    # that then opened the circuit got the vendor's answer just after the opening. The
    # vendor works: refusing everyone for the recovery timeout would turn answers into
    # fallbacks. (An answer to an attempt sent before those failures changes nothing:
    # test_straggler_outcomes_do_not_disturb_an_open_circuit.)
    clock = Clock()

    async def round_trip(served: Callable[[], None]) -> CircuitState:
        # each round its own story (the store judges send times on its own, real clock)
        await store.breaker_reset("amp")
        breaker = breaker_on(store, clock)
        caller = Caller(breaker, clock)
        fail, answer = asyncio.Event(), asyncio.Event()
        sent = asyncio.Queue[None]()

        async def failing() -> str:
            sent.put_nowait(None)
            await fail.wait()
            raise ServiceUnavailable("amp", status=503)

        async def answering() -> str:
            sent.put_nowait(None)
            await answer.wait()
            served()
            return "data"

        failures = [
            asyncio.create_task(
                caller.call_with_retry_and_circuit_breaker("amp", failing, "", max_retries=0)
            )
            for _ in range(3)
        ]
        for _ in failures:
            await sent.get()
        clock.now += 1.0  # sent after the three failing requests
        late = asyncio.create_task(
            caller.call_with_retry_and_circuit_breaker("amp", answering, FALLBACK)
        )
        await sent.get()
        clock.now += 1.0
        fail.set()
        await asyncio.gather(*failures)
        assert breaker.state is CircuitState.OPEN
        answer.set()
        assert await late == "data"
        return breaker.state

    assert await round_trip(vendor_answered) is CircuitState.CLOSED
    assert (await store.breaker_view("amp", 30.0)).state == "closed"
    assert await round_trip(served_locally) is CircuitState.OPEN  # a cache: no word


# -- item 6: only an answer from the vendor ends a probe as a success -----------------
async def open_now(caller: Caller) -> None:
    async def down() -> str:
        raise ServiceUnavailable("amp", status=503)

    await caller.call_with_retry_and_circuit_breaker("amp", down, FALLBACK)
    assert caller.circuit_breakers["amp"].state is CircuitState.OPEN


def assert_open_no_probe(breaker: CircuitBreaker) -> None:
    assert breaker.state is CircuitState.OPEN  # never half-open with no probe in flight
    assert breaker.retry_in() == 0  # due: the next caller is the probe


@pytest.mark.parametrize(
    "refusal",
    [
        QuotaExhausted("amp", "hourly query budget spent"),
        QuotaExhausted("amp", "no free request slot"),
        InvalidRequest("amp", "empty user id"),
        CircuitOpenError("hubspot"),
    ],
    ids=["quota-spent", "no-slot", "invalid-before-sending", "circuit-open"],
)
async def test_a_client_side_refusal_ends_the_probe_without_closing(
    store: ResilienceStore, refusal: Exception
) -> None:
    clock = Clock()
    breaker = breaker_on(store, clock, recovery_timeout=0.0)
    caller = Caller(breaker, clock)
    await open_now(caller)

    async def refused() -> str:
        raise refusal

    assert await caller.call_with_retry_and_circuit_breaker("amp", refused, FALLBACK) == FALLBACK
    assert_open_no_probe(breaker)
    view = await store.breaker_view("amp", 0.0)
    assert view.state == "open" and not view.probing  # the fleet's lease is free again
    other = Caller(breaker_on(store, clock, recovery_timeout=0.0), clock)

    async def answers() -> str:
        vendor_answered()
        return "data"

    assert await other.call_with_retry_and_circuit_breaker("amp", answers, FALLBACK) == "data"
    assert (await store.breaker_view("amp", 0.0)).state == "closed"  # the vendor's answer


async def test_a_cache_hit_is_not_a_probe_success(store: ResilienceStore) -> None:
    clock = Clock()
    breaker = breaker_on(store, clock, recovery_timeout=0.0)
    caller = Caller(breaker, clock)
    await open_now(caller)

    async def from_cache() -> str:
        served_locally()
        return "cached data"

    got = await caller.call_with_retry_and_circuit_breaker("amp", from_cache, FALLBACK)
    assert got == "cached data"  # the caller is served ...
    assert_open_no_probe(breaker)  # ... but the vendor was not heard from
    assert (await store.breaker_view("amp", 0.0)).state == "open"


async def test_breaker_call_probe_raising_circuit_open_ends(store: ResilienceStore) -> None:
    clock = Clock()
    breaker = breaker_on(store, clock, recovery_timeout=0.0)
    await open_now(Caller(breaker, clock))

    async def nested_refusal() -> str:
        raise CircuitOpenError("inner")

    with pytest.raises(CircuitOpenError):
        await breaker.call(nested_refusal)
    assert_open_no_probe(breaker)
    assert not (await store.breaker_view("amp", 0.0)).probing


class Answers(SandboxServer):
    name = "answers"

    def add_routes(self, app: web.Application) -> None:
        async def ok(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        async def gone(request: web.Request) -> web.Response:
            return web.json_response({"message": "none"}, status=404)

        app.router.add_get("/ok", ok)
        app.router.add_get("/gone", gone)


async def test_the_http_layer_reports_each_answer_from_the_vendor() -> None:
    async with Answers() as server:
        client = ServiceHttp("answers", server.base_url, options=HttpOptions(0.5, 0.3))
        try:
            with listening() as heard:
                await client.request("GET", "/ok")
                with pytest.raises(Exception):  # noqa: B017 - a 404 is an answer too
                    await client.request("GET", "/gone")
            assert heard.answered == 2
        finally:
            await client.aclose()
    refused = ServiceHttp("answers", server.base_url, options=HttpOptions(0.5, 0.3))
    try:
        # the server is gone: no answer
        with listening() as heard, pytest.raises(ServiceUnavailable):
            await refused.request("GET", "/ok")
        assert heard.answered == 0
    finally:
        await refused.aclose()


# -- item 7: a success never opens the shared circuit ----------------------------------
async def test_a_success_never_opens_the_shared_circuit(store: ResilienceStore) -> None:
    clock = Clock()
    here = breaker_on(store, clock)
    there = breaker_on(store, clock)
    assert await here.admit() == 0  # a call goes out while the circuit is closed
    for _ in range(3):  # meanwhile another conversation sees the vendor fail
        await there.on_failure(ServiceUnavailable("amp", status=503))
    await here.refresh(force=True)
    assert here.state is CircuitState.OPEN  # adopted
    await store.breaker_reset("amp")  # and the fleet closes it again (a probe elsewhere)
    await here.on_success(duration=0.05)  # our call answers, late
    assert (await store.breaker_view("amp", 30.0)).state == "closed"


# -- issue #24: an answer that is no success still ends a streak of failures -------------
@pytest.mark.parametrize("fleet", [True, False], ids=["shared", "local"])
@pytest.mark.parametrize(
    "answer", [NotFound("amp"), InvalidRequest("amp", status=422)], ids=["404", "422"]
)
async def test_an_answer_between_failures_ends_the_streak(
    store: ResilienceStore, answer: Exception, fleet: bool
) -> None:
    """One conversation sees a 500, then the vendor's "no such record"; another then two
    500s. Not three failures in a row: the circuit stays closed (the fleet simulation
    found it open, refusing a lookup that plain retries would have answered). A third
    failure in a row still opens it."""
    clock = Clock()
    first = breaker_on(store if fleet else None, clock)
    second = breaker_on(store, clock) if fleet else first
    one, two = Caller(first, clock), Caller(second, clock)

    async def fail() -> str:
        raise ServiceUnavailable("amp", status=500)

    async def answered() -> str:
        raise answer

    call = one.call_with_retry_and_circuit_breaker
    assert await call("amp", fail, FALLBACK, max_retries=0, kind=READ) == FALLBACK
    with pytest.raises(type(answer)):
        await call("amp", answered, FALLBACK, max_retries=0, kind=READ)
    for _ in range(2):
        await two.call_with_retry_and_circuit_breaker("amp", fail, FALLBACK, max_retries=0)
    assert second.state is CircuitState.CLOSED
    await two.call_with_retry_and_circuit_breaker("amp", fail, FALLBACK, max_retries=0)
    assert second.state is CircuitState.OPEN


# -- issue #24: a streak of failures that paused longer than the window starts again ----
@pytest.mark.parametrize("where", ["store", "store down", "no store"])
async def test_a_streak_that_paused_longer_than_the_window_starts_again(
    tmp_path: Path, where: str
) -> None:
    """(simulate --seed 7, example 8088) Two failures, an hour of quiet, one more: that is
    no "three in a row" (the circuit opened, and the same reply's retry, which the vendor
    answered, was refused). A streak ends when it pauses longer than the rate rule's
    window, in the process and in the store; within the window three still open it."""
    clock = Clock()
    faults = StoreFaults()
    guard = None
    if where != "no store":
        store = SqliteStore(tmp_path / "fleet.db", clock=clock)
        guard = StoreGuard(FaultyStore(store, faults), clock=clock)  # type: ignore[arg-type]
    breaker = CircuitBreaker(
        3,
        name="amp",
        clock=clock,
        store=guard,
        share_ttl=0.0,
        rate_rule=RateRule(window_seconds=60),
    )
    caller = Caller(breaker, clock)
    call = caller.call_with_retry_and_circuit_breaker
    for _ in range(2):
        await call("amp", vendor_down, FALLBACK, max_retries=0)
    faults.down = where == "store down"
    clock.now += 3600.0
    await call("amp", vendor_down, FALLBACK, max_retries=0)
    assert breaker.state is CircuitState.CLOSED and breaker.failure_count == 1
    if where == "store":
        assert (await store.breaker_view("amp", 30.0, 60.0)).failures == 1
    clock.now += 59.0  # the next two come within the window: three in a row
    for _ in range(2):
        await call("amp", vendor_down, FALLBACK, max_retries=0)
    assert breaker.state is CircuitState.OPEN
    if where == "store":
        assert (await store.breaker_view("amp", 30.0, 60.0)).state == "open"
        await store.aclose()


def test_the_stores_streak_rule_expires_old_failures_on_every_backend() -> None:
    """The mutation every backend applies (SQLite, Redis and memory share it)."""
    rec = new_record()
    failure = rule_failure(3, 60.0)
    assert failure(rec, 100.0) == (False, True)
    assert failure(rec, 150.0) == (False, True)
    assert view_of(rec, 211.0, 30.0, 60.0).failures == 0  # paused past the window
    assert view_of(rec, 211.0, 30.0).failures == 2  # no window: as in the spec
    assert failure(rec, 211.0) == (False, True) and rec["failures"] == 1
    assert rule_failure(3)(dict(rec, failures=2), 9999.0) == (True, True)  # never expires


@pytest.mark.parametrize(
    ("answer_sent", "failures", "state_after"),
    [
        (95.0, 3, "open"),  # before the streak: says nothing about it
        (105.0, 2, "closed"),  # after the first failure: two left in a row
        (125.0, 1, "closed"),
        (135.0, 0, "closed"),  # after the last: the vendor works (as before)
    ],
)
def test_an_answer_told_late_breaks_the_streak_that_opened_the_circuit(
    answer_sent: float, failures: int, state_after: str
) -> None:
    """(simulate --seed 57, example 296) A process got the vendor's answer while the store
    was down, so the store kept a failure from before it; back, another process's two
    failures made "three in a row" and opened the circuit for the fleet. Told (with when
    its attempt was sent), the answer breaks that streak: the failures sent after it are
    the streak now, and fewer than the threshold close the circuit."""
    rec = new_record()
    for sent in (100.0, 120.0, 130.0):
        rule_failure(3, 60.0, sent_ago=140.0 - sent)(rec, 140.0)
    assert rec["state"] == "open"
    closed, _ = rule_success(sent_ago=150.0 - answer_sent)(rec, 150.0)
    assert closed is (state_after == "closed")
    assert rec["state"] == state_after and rec["failures"] == failures
    if state_after == "closed" and failures:  # the rest of the streak still counts
        assert rule_failure(3, 60.0)(rec, 151.0)[0] is (failures == 2)


def test_a_late_answer_leaves_a_circuit_opened_otherwise_or_still_in_a_row() -> None:
    rec = new_record()
    rule_failure(1)(rec, 100.0)  # the rate rule opens at once
    assert rule_success(sent_ago=1.0)(rec, 100.5)[0] is False  # not a streak
    assert rec["state"] == "open"
    rec = new_record()
    for sent in (100.0, 110.0, 120.0, 130.0):  # four in a row, under a threshold of 5
        rule_failure(5, 60.0, sent_ago=140.0 - sent)(rec, 140.0)
    assert rule_failure(3, 60.0)(rec, 140.0) == (True, True)  # a fifth opens on 3
    assert rule_success(sent_ago=140.0 - 105.0)(rec, 140.0)[0] is False  # 4 after
    assert rec["state"] == "open"
    legacy = new_record() | {"state": "open", "failures": 3, "failed_sent": 130.0}
    assert rule_success(sent_ago=20.0)(legacy, 140.0)[0] is False  # no times kept
    assert legacy["state"] == "open"


async def test_a_success_kept_from_the_store_by_its_cool_down_reaches_it_at_once(
    store: ResilienceStore,
) -> None:
    """(simulate --seed 24, example 5976) A failure's write committed but the guard
    stopped waiting (a slow store), so its cool-down kept the success that ended the
    streak from the store. Another process read the stale count and its two failures
    made "three in a row". The success is now sent at once, in a task no caller waits
    for; the caller's own call is not slowed by the store."""
    clock = Clock()
    faults = StoreFaults(slow={"breaker_failure": 1})
    guard = StoreGuard(FaultyStore(store, faults), clock=clock, cool_down=2.0)  # type: ignore[arg-type]
    breaker = CircuitBreaker(3, name="amp", clock=clock, store=guard, share_ttl=0.0)
    caller = Caller(breaker, clock)
    call = caller.call_with_retry_and_circuit_breaker
    await call("amp", vendor_down, "", max_retries=0)
    assert (await store.breaker_view("amp", 30.0)).failures == 1  # committed nonetheless
    assert guard.cooling_down
    assert await call("amp", vendor_up, "", max_retries=0) == "data"
    for _ in range(5):
        await asyncio.sleep(0)
    assert (await store.breaker_view("amp", 30.0)).failures == 0
    other = breaker_on(store, clock)  # another process: two failures are not three
    for _ in range(2):
        await Caller(other, clock).call_with_retry_and_circuit_breaker(
            "amp", vendor_down, "", max_retries=0
        )
    assert other.state is CircuitState.CLOSED


@pytest.mark.parametrize("sent", ["after", "between", "before"])
@pytest.mark.parametrize("seen", ["open", "stale"])
async def test_an_answer_after_the_fleets_failures_closes_the_circuit_everywhere(
    store: ResilienceStore, sent: str, seen: str
) -> None:
    """(simulate --seed 24, example 9103) Another process's failures opened the circuit
    while this process's call, sent after the last of them, was on its way; the vendor
    answered it. The store keeps when the latest failed attempt was sent (on its clock,
    from each attempt's age), so the answer closes the circuit fleet-wide, whether this
    process had already adopted the opening or still saw it closed. One sent between
    the failures shows they were not three in a row (in the order they were sent): the
    circuit closes too. An answer to an attempt sent before them changes nothing."""
    clock = Clock()
    here, there = breaker_on(store, clock), breaker_on(store, clock)
    # (attempts' ages, not the test's clock: the store judges them on its own clock)
    for _ in range(2):
        await there.on_failure(ServiceUnavailable("amp", status=503), duration=10.0)
    assert await here.admit() == 0  # this call goes out while the circuit is closed
    await there.on_failure(ServiceTimeout("amp"), duration=3.0)  # sent 3 s ago
    assert there.state is CircuitState.OPEN
    if seen == "open":
        await here.refresh(force=True)
        assert here.state is CircuitState.OPEN
    with listening() as heard:
        vendor_answered()
    await here.on_success(
        duration={"after": 2.0, "between": 5.0, "before": 12.0}[sent], heard=heard
    )
    expected = "open" if sent == "before" else "closed"
    assert (await store.breaker_view("amp", 30.0)).state == expected
    await here.refresh(force=True)
    assert here.state.value == expected
    with listening() as cached:
        served_locally()
    if sent == "before":  # a cache's answer is no word from the vendor either
        await here.on_success(duration=0.01, heard=cached)
        assert (await store.breaker_view("amp", 30.0)).state == "open"


async def test_a_probe_lease_refused_because_the_fleet_closed_lets_the_call_go(
    store: ResilienceStore,
) -> None:
    """(simulate --seed 7, example 9766) This process's circuit was open and due; its
    refresh got no answer from the store (a slow read), so it asked for the probe lease.
    The store refused it because the fleet had closed the circuit meanwhile: the
    process adopted "closed" and still refused the call, and the lookup fell back."""
    clock = Clock()
    faults = StoreFaults(slow={"breaker_view": 1})
    guard = StoreGuard(FaultyStore(store, faults), clock=clock, cool_down=0.0)  # type: ignore[arg-type]
    breaker = CircuitBreaker(3, name="amp", clock=clock, store=guard, share_ttl=0.0)
    for _ in range(3):  # opened here while the store was out of reach
        breaker.record_failure(ServiceUnavailable("amp", status=503))
    assert breaker.state is CircuitState.OPEN
    clock.now += breaker.recovery_timeout + 1  # due for a probe; the fleet is closed
    got = await Caller(breaker, clock).call_with_retry_and_circuit_breaker(
        "amp", vendor_up, FALLBACK
    )
    assert faults.escaped == ["slow:breaker_view"]  # the refresh went unanswered
    assert got == "data" and breaker.state is CircuitState.CLOSED


@pytest.mark.parametrize("case", ["answered after", "sent before", "failed since"])
async def test_an_answer_the_store_could_not_hear_closes_the_fleets_circuit_once_told(
    store: ResilienceStore, case: str
) -> None:
    """(next to simulate --seed 31) Other processes' failures opened the fleet's circuit;
    then the store went down, and this process (its view still closed) got the vendor's
    answer. Back, the store still said "open" and every process refused a vendor whose
    latest attempt answered. The answer, sent after those failures, is told to the store
    when it is heard again (a read, or a failure this process writes after it) and
    closes the circuit; one sent before them changes nothing."""
    clock = Clock()
    faults = StoreFaults()
    there = breaker_on(store, clock)
    guard = StoreGuard(FaultyStore(store, faults), clock=clock, cool_down=0.0)  # type: ignore[arg-type]
    here = CircuitBreaker(3, name="amp", clock=clock, store=guard, share_ttl=0.0)
    for _ in range(3):  # (attempts' ages: the store judges them on its own clock)
        await there.on_failure(ServiceTimeout("amp"), duration=3.0)  # sent 3 s ago
    assert there.state is CircuitState.OPEN
    faults.down = True
    assert await here.admit() == 0  # the store out of reach: this process sees "closed"
    with listening() as heard:
        vendor_answered()
    await here.on_success(duration=5.0 if case == "sent before" else 2.0, heard=heard)
    faults.down = False
    if case == "failed since":  # told before this process's next failure is written
        await here.on_failure(ServiceUnavailable("amp", status=503), duration=0.1)
    else:
        await here.refresh(force=True)
    expected = "open" if case == "sent before" else "closed"
    view = await store.breaker_view("amp", 30.0)
    failures = {"answered after": 0, "sent before": 3, "failed since": 1}[case]
    assert view.state == expected and view.failures == failures
    assert here.state.value == expected


def test_a_failure_sent_before_an_answer_the_store_heard_is_not_in_a_row() -> None:
    """(simulate --seed 31, example 4035) A write whose answer was lost took the request
    limit to fail; a quick request sent after it was answered first. Judged in the order
    they were sent, the failure came before the answer: it does not start a streak with
    the failures after it. The rate rule's "open now" (threshold 1) is not a streak."""
    rec = new_record()
    rule_failure(3, 60.0)(rec, 100.0)
    rule_success(sent_ago=0.5)(rec, 102.0)  # sent at 101.5: the streak ends
    assert rule_failure(3, 60.0, sent_ago=3.0)(rec, 103.0) == (False, False)  # sent at 100
    for now in (104.0, 105.0):
        rule_failure(3, 60.0)(rec, now)
    assert rec["state"] == "closed" and rec["failures"] == 2
    assert rule_failure(1, 60.0, sent_ago=5.0)(rec, 106.0) == (True, True)


@pytest.mark.parametrize("where", ["store", "no store"])
async def test_a_slow_failure_that_ended_after_a_quick_answer_is_not_in_a_row(
    store: ResilienceStore, where: str
) -> None:
    clock = Clock()
    breaker = breaker_on(store if where == "store" else None, clock)
    with listening() as heard:
        vendor_answered()
    clock.now += 3.0
    await breaker.on_success(duration=0.1, heard=heard)  # sent 0.1 s ago
    await breaker.on_failure(ServiceTimeout("amp"), duration=2.5)  # sent 2.5 s ago
    for _ in range(2):
        await breaker.on_failure(ServiceUnavailable("amp", status=503), duration=0.1)
    assert breaker.state is CircuitState.CLOSED and breaker.failure_count == 2
    await breaker.on_failure(ServiceUnavailable("amp", status=503), duration=0.1)
    assert breaker.state is CircuitState.OPEN  # three in a row, in the order they were sent
