"""Benchmark of the error-recovery layer against peer libraries, all measured in one run.

Run from the repository root (peers live in the ``bench`` dependency group only)::

    uv run --group bench python bench/run.py

It prints a table and writes ``bench/results.json`` (with CPU model, cores, Python version
and date). Every figure is measured in this run; nothing is typed in by hand.

1. Overhead per successful call: ns/call (median of repeated runs) and the ratio to a bare
   ``await`` of the same coroutine, for our breaker, our retry + breaker call, our tool
   wrapper around it, and the same protection built from aiobreaker, purgatory,
   circuitbreaker, tenacity and (if it can run on asyncio) pybreaker.
2. Fail-fast latency while the circuit is open (call to fallback / rejection).
3. Time to resolution when Amplitude hangs or refuses connections: our voice budget
   (real ``AmplitudeClient`` against the sandbox, defaults of ``ResilienceSettings``),
   LiveKit's default ``APIConnectOptions`` retry loop, and a naive ``asyncio.wait_for``
   pattern. Wall clock of the real event loop; the hang cases run concurrently so the
   ~44 s LiveKit case overlaps the others.
4. Requests reaching a dead service over 20 sequential conversations (a fresh agent, and
   so fresh breakers, per conversation as in LiveKit's process-per-job model), with and
   without the breaker. Backoff sleeps are recorded instead of slept; "waiting" is the
   measured request time plus the recorded backoff.
5. Memory per agent instance and per 1,000 ``CircuitBreaker`` objects (tracemalloc).

Library log records are dropped (a ``NullHandler``) so warnings do not flood the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import gc
import json
import logging
import os
import platform
import random
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from src.agent import USAGE_FALLBACK, PandaDocTrialistAgent, TrialistData, TrialistServices
from src.error_recovery import CircuitBreaker, ErrorRecoveryMixin, retry_with_exponential_backoff
from src.errors import CircuitOpenError, InvalidRequest, NotFound, ServiceError
from src.harness import StandInRunContext
from src.sandbox import FaultKind, Sandbox
from src.sandbox.data import TRIAL_USERS
from src.services.amplitude import AmplitudeClient
from src.services.http import HttpOptions
from src.settings import ResilienceSettings, Settings, settings_from_env

RESULTS = Path(__file__).with_name("results.json")
EMAIL = TRIAL_USERS[0].email
CALLS = 20_000  # calls per timed run (overhead)
FAST_CALLS = 5_000  # calls per timed run (slow wrappers and fail-fast)
RUNS = 9  # timed rounds; the median is reported
CONVERSATIONS = 20
LOOKUPS = (3, 6)  # usage lookups per conversation (3 asked; 6 shows when the breaker pays)
AGENTS = 50  # instances for the memory figure
BREAKERS = 1_000

Factory = Callable[[], Awaitable[Any]]


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


async def work() -> int:
    """The protected coroutine: returns at once, so only the wrapper's cost is measured."""
    return 1


async def boom() -> int:
    raise ConnectionError("down")


@dataclass
class SmallState:
    email: str | None = "a@example.com"
    facts: list[str] = field(default_factory=lambda: ["on trial"])


class BenchAgent(ErrorRecoveryMixin):
    def __init__(self, breaker: CircuitBreaker) -> None:
        self.circuit_breakers = {"svc": breaker}
        self.error_rng = random.Random(1)


async def time_cases(cases: list[tuple[Callable[[], Factory], int]]) -> list[float]:
    """Median ns per call for each ``(make, calls)``: ``RUNS`` rounds, each timing
    ``calls`` awaits of a fresh ``make()`` per case after 200 warm-up calls. Cases are
    interleaved round by round so machine drift affects them all alike."""
    per_call: list[list[float]] = [[] for _ in cases]
    for _ in range(RUNS):
        for i, (make, calls) in enumerate(cases):
            call = make()
            for _ in range(200):  # warm-up (fail-fast cases: opens the circuit)
                await call()
            gc.collect()
            start = time.perf_counter_ns()
            for _ in range(calls):
                await call()
            per_call[i].append((time.perf_counter_ns() - start) / calls)
    return [statistics.median(runs) for runs in per_call]


def swallow(factory: Factory, *errors: type[BaseException]) -> Factory:
    async def call() -> Any:
        try:
            return await factory()
        except errors:
            return None

    return call


# --------------------------------------------------------------------------------------
# Peers (each returns a factory, or raises with the reason it cannot be used)
# --------------------------------------------------------------------------------------


def peer_versions() -> dict[str, str]:
    from importlib import metadata

    out: dict[str, str] = {}
    for name in ("aiobreaker", "purgatory", "circuitbreaker", "tenacity", "pybreaker"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def aiobreaker_call(fail_max: int = 3, func: Factory = work) -> tuple[Factory, Any]:
    import aiobreaker

    breaker = aiobreaker.CircuitBreaker(fail_max=fail_max, timeout_duration=dt.timedelta(hours=1))

    async def call() -> Any:
        return await breaker.call_async(func)

    return call, breaker


def purgatory_call(threshold: int = 3, func: Factory = work) -> Factory:
    from purgatory import AsyncCircuitBreakerFactory

    factory = AsyncCircuitBreakerFactory(default_threshold=threshold, default_ttl=3600)

    @factory("svc")
    async def call() -> Any:
        return await func()

    return call  # type: ignore[no-any-return]


def circuitbreaker_call(threshold: int = 3, func: Factory = work) -> Factory:
    from circuitbreaker import CircuitBreaker as CB

    @CB(failure_threshold=threshold, recovery_timeout=3600, name=f"svc-{random.random()}")
    async def call() -> Any:
        return await func()

    return call  # type: ignore[no-any-return]


def tenacity_call(func: Factory = work) -> Factory:
    from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
    from tenacity import wait_random_exponential as wre

    async def call() -> Any:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(3),
            wait=wre(multiplier=0.5, max=3.0),
            retry=retry_if_exception_type((TimeoutError, ConnectionError)),
            reraise=True,
        ):
            with attempt:
                return await func()
        return None  # pragma: no cover - AsyncRetrying either returns or raises

    return call


def tenacity_aiobreaker_call() -> Factory:
    """Retry + breaker from peers: the nearest equivalent of our combined call."""
    inner, _ = aiobreaker_call()
    return tenacity_call(inner)


def pybreaker_call() -> Factory:
    import pybreaker

    breaker = pybreaker.CircuitBreaker(fail_max=3, reset_timeout=3600)

    async def call() -> Any:
        return await breaker.call_async(work)

    return call


async def pybreaker_verdict() -> str | None:
    """``None`` if pybreaker can protect a coroutine on asyncio, else the reason."""
    import pybreaker

    if not getattr(pybreaker, "HAS_TORNADO_SUPPORT", False):
        try:
            await pybreaker_call()()
        except Exception as exc:
            return (
                "pybreaker's call_async is built on tornado.gen.coroutine; tornado is not "
                f"installed, so it fails with {type(exc).__name__}: {exc}. Its sync call() "
                "on an async def only creates the coroutine (counted as a success before "
                "it runs), so it gives no protection on asyncio."
            )
        return "pybreaker call_async ran without tornado (unexpected); not compared"
    return None


# --------------------------------------------------------------------------------------
# 1 + 2: overhead and fail-fast
# --------------------------------------------------------------------------------------


async def bench_overhead(dropped: dict[str, str]) -> list[dict[str, Any]]:
    def ours_breaker() -> Factory:
        breaker = CircuitBreaker(3, 30.0, name="svc")
        return lambda: breaker.call(work)

    def ours_retry() -> Factory:
        agent = BenchAgent(CircuitBreaker(3, 30.0, name="svc"))
        return lambda: agent.call_with_retry_and_circuit_breaker("svc", work, "fallback")

    def ours_tool() -> Factory:
        agent = BenchAgent(CircuitBreaker(3, 30.0, name="svc"))
        ctx = StandInRunContext(SmallState())

        def call() -> Awaitable[Any]:
            return agent.handle_tool_with_error_recovery(
                ctx,
                "usage",
                lambda: agent.call_with_retry_and_circuit_breaker("svc", work, "fallback"),
            )

        return call

    cases: list[tuple[str, Callable[[], Factory], int]] = [
        ("bare await", lambda: work, CALLS),
        ("ours: CircuitBreaker.call", ours_breaker, CALLS),
        ("ours: call_with_retry_and_circuit_breaker", ours_retry, CALLS),
        ("ours: handle_tool(call_with_retry...)", ours_tool, FAST_CALLS),
        ("aiobreaker: call_async", lambda: aiobreaker_call()[0], CALLS),
        ("purgatory: factory decorator", purgatory_call, FAST_CALLS),
        ("circuitbreaker: @circuit on async def", circuitbreaker_call, CALLS),
        ("tenacity: AsyncRetrying", tenacity_call, FAST_CALLS),
        ("tenacity + aiobreaker", tenacity_aiobreaker_call, FAST_CALLS),
    ]
    verdict = await pybreaker_verdict()
    if verdict is None:
        cases.append(("pybreaker: call_async", pybreaker_call, FAST_CALLS))
    else:
        dropped["pybreaker"] = verdict

    medians = await time_cases([(make, calls) for _, make, calls in cases])
    bare = medians[0]
    return [
        {"case": name, "ns_per_call": round(ns, 1), "x_bare": round(ns / bare, 2)}
        for (name, _, _), ns in zip(cases, medians, strict=True)
    ]


async def bench_fail_fast() -> list[dict[str, Any]]:
    def ours_breaker() -> Factory:
        breaker = CircuitBreaker(1, 3600.0, name="svc")
        return swallow(lambda: breaker.call(boom), ConnectionError, CircuitOpenError)

    def ours_retry() -> Factory:
        agent = BenchAgent(CircuitBreaker(1, 3600.0, name="svc"))
        agent.retry_sleep = _no_sleep
        return lambda: agent.call_with_retry_and_circuit_breaker("svc", boom, "fallback")

    def aio() -> Factory:
        import aiobreaker

        call, _ = aiobreaker_call(1, boom)
        return swallow(call, ConnectionError, aiobreaker.CircuitBreakerError)

    def purg() -> Factory:
        from purgatory.domain.model import OpenedState

        return swallow(purgatory_call(1, boom), ConnectionError, OpenedState)

    def cb() -> Factory:
        from circuitbreaker import CircuitBreakerError

        return swallow(circuitbreaker_call(1, boom), ConnectionError, CircuitBreakerError)

    cases: list[tuple[str, Callable[[], Factory]]] = [
        ("ours: CircuitBreaker.call -> CircuitOpenError", ours_breaker),
        ("ours: call_with_retry... -> fallback string", ours_retry),
        ("aiobreaker -> CircuitBreakerError", aio),
        ("purgatory -> OpenedState", purg),
        ("circuitbreaker -> CircuitBreakerError", cb),
    ]
    # Threshold 1: the first warm-up call fails and opens the circuit; every timed call
    # is then rejected without touching the service.
    medians = await time_cases([(make, FAST_CALLS) for _, make in cases])
    return [
        {"case": name, "ns_to_fallback": round(ns, 1)}
        for (name, _), ns in zip(cases, medians, strict=True)
    ]


async def _no_sleep(_: float) -> None:
    return None


# --------------------------------------------------------------------------------------
# 3: time to resolution against a hanging / refusing Amplitude
# --------------------------------------------------------------------------------------


async def policy_ours(settings: Settings) -> tuple[str, int]:
    """The real tool path: handle_tool -> _trial_usage -> breaker + retries in budget."""
    services = TrialistServices.from_settings(settings)
    agent = PandaDocTrialistAgent(services, settings)
    agent.error_rng = random.Random(3)
    attempts = 0
    client = services.amplitude
    assert client is not None
    original = client.get_trial_usage

    async def counted(email: str) -> Any:
        nonlocal attempts
        attempts += 1
        return await original(email)

    client.get_trial_usage = counted  # type: ignore[method-assign]
    ctx = StandInRunContext(TrialistData(email=EMAIL))
    try:
        await agent.handle_tool_with_error_recovery(
            ctx, "get_trial_usage", lambda: agent._trial_usage(ctx, "")
        )
        return "answered", attempts
    except Exception as exc:
        return f"fallback ({type(exc).__name__})", attempts
    finally:
        await services.aclose()


async def policy_livekit(base_url: str) -> tuple[str, int]:
    """LiveKit's default APIConnectOptions loop (as in its LLM/STT/TTS streams): up to
    1 + max_retry attempts of ``timeout`` each, sleeping ``_interval_for_retry(i)``."""
    from livekit.agents import APIConnectOptions

    opts = APIConnectOptions()
    client = _client(base_url, opts.timeout)
    attempts = 0
    try:
        for i in range(opts.max_retry + 1):
            attempts += 1
            try:
                async with asyncio.timeout(opts.timeout):
                    await client.get_trial_usage(EMAIL)
                return "answered", attempts
            except (ServiceError, TimeoutError) as exc:
                retryable = getattr(exc, "retryable", True)
                if i == opts.max_retry or not retryable:
                    return f"raised ({type(exc).__name__})", attempts
                await asyncio.sleep(opts._interval_for_retry(i))
        return "exhausted", attempts
    finally:
        await client.aclose()


async def policy_naive(base_url: str) -> tuple[str, int]:
    """asyncio.wait_for(5 s) per attempt, 2 retries, no backoff."""
    client = _client(base_url, 10.0)
    attempts = 0
    try:
        for _ in range(3):
            attempts += 1
            try:
                await asyncio.wait_for(client.get_trial_usage(EMAIL), 5.0)
                return "answered", attempts
            except (ServiceError, TimeoutError):
                continue
        return "raised", attempts
    finally:
        await client.aclose()


def _client(base_url: str, timeout: float) -> AmplitudeClient:
    from src.sandbox.data import SANDBOX_CREDENTIALS as C

    return AmplitudeClient(
        C["AMPLITUDE_API_KEY"],
        C["AMPLITUDE_SECRET_KEY"],
        base_url,
        options=HttpOptions(timeout=timeout, connect_timeout=timeout),
    )


async def timed(label: str, fault: str, coro: Awaitable[tuple[str, int]]) -> dict[str, Any]:
    start = time.perf_counter()
    outcome, attempts = await coro
    return {
        "policy": label,
        "fault": fault,
        "seconds": round(time.perf_counter() - start, 3),
        "attempts": attempts,
        "outcome": outcome,
    }


async def bench_resolution() -> list[dict[str, Any]]:
    async with Sandbox() as hang, Sandbox() as down:
        hang.amplitude.inject("*", FaultKind.HANG)
        await down.amplitude.go_down()
        hs, ds = settings_from_env(hang.env()), settings_from_env(down.env())
        r = hs.resilience
        ours = (
            f"ours ({r.service_timeout}s/attempt, {r.max_retries} retries, "
            f"{r.tool_deadline}s deadline)"
        )
        lk = "LiveKit APIConnectOptions default (10s, 3 retries)"
        naive = "naive wait_for(5s), 2 retries"
        rows = await asyncio.gather(
            timed(ours, "hang", policy_ours(hs)),
            timed(lk, "hang", policy_livekit(hang.amplitude.base_url)),
            timed(naive, "hang", policy_naive(hang.amplitude.base_url)),
            timed(ours, "refused", policy_ours(ds)),
            timed(lk, "refused", policy_livekit(down.amplitude.base_url)),
            timed(naive, "refused", policy_naive(down.amplitude.base_url)),
        )
        hang.amplitude.clear()
    return list(rows)


# --------------------------------------------------------------------------------------
# 4: requests reaching a dead service over many conversations
# --------------------------------------------------------------------------------------


class RecordingSleep:
    def __init__(self) -> None:
        self.total = 0.0

    async def __call__(self, seconds: float) -> None:
        self.total += seconds


async def conversations(
    settings: Settings, lookups: int, *, breaker: bool, sandbox: Sandbox
) -> dict[str, Any]:
    sleep = RecordingSleep()
    attempts = 0
    start = time.perf_counter()
    r = settings.resilience
    rng = random.Random(11)
    for _ in range(CONVERSATIONS):
        services = TrialistServices.from_settings(settings)
        agent = PandaDocTrialistAgent(services, settings, sleep=sleep)
        agent.error_rng = rng
        client = services.amplitude
        assert client is not None

        async def lookup(client: AmplitudeClient = client) -> Any:
            nonlocal attempts
            attempts += 1
            return await client.get_trial_usage(EMAIL)

        for _ in range(lookups):
            if breaker:
                await agent.call_with_retry_and_circuit_breaker(
                    "amplitude",
                    lookup,
                    USAGE_FALLBACK,
                    max_retries=r.max_retries,
                    deadline=r.tool_deadline,
                    reraise=(NotFound, InvalidRequest),
                )
            else:
                with contextlib.suppress(ServiceError):
                    await retry_with_exponential_backoff(
                        lookup,
                        max_retries=r.max_retries,
                        base_delay=r.base_delay,
                        max_delay=r.max_delay,
                        deadline=r.tool_deadline,
                        sleep=sleep,
                        rng=rng,
                    )
        await services.aclose()
    request_s = time.perf_counter() - start
    return {
        "attempts": attempts,
        "requests_received": len(sandbox.amplitude.requests()),
        "request_seconds": round(request_s, 3),
        "backoff_seconds_recorded": round(sleep.total, 3),
        "waiting_seconds": round(request_s + sleep.total, 3),
    }


async def bench_dead_service() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for fault in ("503", "refused"):
        for lookups in LOOKUPS:
            for breaker in (True, False):
                async with Sandbox() as sandbox:
                    if fault == "503":
                        sandbox.amplitude.inject("*", FaultKind.SERVICE_UNAVAILABLE)
                    else:
                        await sandbox.amplitude.go_down()
                    settings = settings_from_env(sandbox.env())
                    result = await conversations(
                        settings, lookups, breaker=breaker, sandbox=sandbox
                    )
                rows.append(
                    {
                        "fault": fault,
                        "lookups_per_conversation": lookups,
                        "policy": "per-agent breaker + retries" if breaker else "retries only",
                        **result,
                    }
                )
    return rows


# --------------------------------------------------------------------------------------
# 5: memory
# --------------------------------------------------------------------------------------


def _grown(make: Callable[[], Any]) -> tuple[Any, int]:
    """Bytes allocated and still alive after ``make()``, tracemalloc's own excluded."""
    own = [tracemalloc.Filter(False, tracemalloc.__file__)]
    gc.collect()
    before = tracemalloc.take_snapshot().filter_traces(own)
    kept = make()
    gc.collect()
    after = tracemalloc.take_snapshot().filter_traces(own)
    return kept, sum(s.size_diff for s in after.compare_to(before, "filename"))


def bench_memory() -> dict[str, Any]:
    settings = Settings()
    PandaDocTrialistAgent(TrialistServices(), settings)  # warm caches (tool discovery etc.)
    tracemalloc.start()
    agents, agent_bytes = _grown(
        lambda: [PandaDocTrialistAgent(TrialistServices(), settings) for _ in range(AGENTS)]
    )
    breakers, breaker_bytes = _grown(
        lambda: [CircuitBreaker(name=f"svc{i}") for i in range(BREAKERS)]
    )
    tracemalloc.stop()
    per_agent = agent_bytes / AGENTS
    per_1000 = breaker_bytes * 1000 / BREAKERS
    del agents, breakers
    return {
        "agents_measured": AGENTS,
        "bytes_per_agent": round(per_agent),
        "bytes_per_1000_breakers": round(per_1000),
        "note": "agent without vendor clients (services None): agent + its 4 breakers",
    }


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def table(title: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f"\n{title}\n(no rows)\n"
    keys = list(rows[0])
    cells = [[str(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = "| " + " | ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) + " |"
        for cell in cells
    ]
    return "\n".join([f"\n### {title}\n", line, sep, *body])


async def main() -> None:
    for name in ("pandadoc", "aiohttp", "circuitbreaker", "purgatory", "aiobreaker"):
        log = logging.getLogger(name)
        log.addHandler(logging.NullHandler())
        log.propagate = False
    started = time.perf_counter()
    dropped: dict[str, str] = {}
    info = machine()
    versions = peer_versions()
    for name, version in versions.items():
        if version == "not installed":
            dropped[name] = "not installed (run with --group bench)"

    # CPU-bound loops first, alone on the loop; then the ~44 s hang waits overlap with the
    # (I/O-bound) dead-service conversations.
    overhead = await bench_overhead(dropped)
    fail_fast = await bench_fail_fast()
    resolution, dead = await asyncio.gather(bench_resolution(), bench_dead_service())
    memory = bench_memory()
    elapsed = round(time.perf_counter() - started, 1)

    results = {
        "machine": info,
        "peers": versions,
        "dropped": dropped,
        "resilience_defaults": dataclasses.asdict(ResilienceSettings()),
        "overhead_ns_per_call": overhead,
        "fail_fast_ns": fail_fast,
        "time_to_resolution_s": resolution,
        "dead_service_conversations": dead,
        "memory": memory,
        "bench_seconds": elapsed,
        "notes": [
            "overhead and fail-fast: median of 9 interleaved rounds, nothing else on the loop",
            "time to resolution: all six policy/fault cases ran concurrently (one run each), "
            "overlapping the dead-service conversations",
            "dead service: each conversation is a new agent with closed breakers "
            "(LiveKit runs each job in its own process); backoff sleeps are recorded, "
            "not slept; waiting = measured request time + recorded backoff",
            "refused: requests never reach the sandbox journal, so 'attempts' counts them",
        ],
    }
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")

    print(f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, {info['date']}")
    print("Peers: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(table("1. Overhead per successful call", overhead))
    print(table("2. Fail-fast while open", fail_fast))
    print(table("3. Time to resolution (wall clock, sandbox Amplitude)", resolution))
    print(table(f"4. Dead service, {CONVERSATIONS} conversations (fresh agent each)", dead))
    print(table("5. Memory (tracemalloc)", [memory]))
    for name, reason in dropped.items():
        print(f"\nDropped {name}: {reason}")
    print(f"\nTotal bench time: {elapsed} s; results in {RESULTS.relative_to(Path.cwd())}")


if __name__ == "__main__":
    asyncio.run(main())
