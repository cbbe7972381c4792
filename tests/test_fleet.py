"""Fleet scope with real processes (one per conversation, as LiveKit runs jobs) sharing a
real store: a SQLite file, or a real redis-server. Kept few: each spawns processes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from src.drill.fleet import FleetJob, run_fleet_async
from src.phrases import NOTE_QUEUED, USAGE_FALLBACK
from src.sandbox import FaultKind, Sandbox
from src.store import open_store
from tests.fleet_helpers import free_port


@pytest.fixture(scope="module", autouse=True)
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """As the worker does before it starts job processes: a Prometheus multiprocess
    directory in the environment the (forkserver) job processes start from."""
    directory = tmp_path_factory.mktemp("metrics")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
        yield directory


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox() as s:
        yield s


async def test_two_processes_share_a_circuit(sandbox: Sandbox, store_url: str) -> None:
    sandbox.amplitude.inject("*", FaultKind.SERVICE_UNAVAILABLE)
    env = {**sandbox.env(), "RESILIENCE_STORE_URL": store_url}
    [first] = await run_fleet_async([FleetJob(env, lookups=1)])
    assert first.said == [USAGE_FALLBACK] and first.states["amplitude"] == "open"
    sent = len(sandbox.amplitude.requests())
    assert sent == 3  # one call: three failed attempts open the shared circuit
    [second] = await run_fleet_async([FleetJob(env, lookups=2)])
    assert second.said == [USAGE_FALLBACK, USAGE_FALLBACK]
    assert second.states["amplitude"] == "open"
    assert len(sandbox.amplitude.requests()) == sent  # refused without a request


async def test_exactly_one_probe_among_ten_processes(sandbox: Sandbox, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    store = open_store(url)
    for _ in range(3):  # the circuit is open, and its recovery timeout (0 s) is over
        await store.breaker_failure("amplitude", 3, 0.0)
    await store.aclose()
    sandbox.amplitude.inject("*", FaultKind.HANG)  # the probe is held until the timeout
    env = {
        **sandbox.env(),
        "RESILIENCE_STORE_URL": url,
        "CIRCUIT_RECOVERY_TIMEOUT": "0",
        "SERVICE_TIMEOUT": "3",
    }
    await run_fleet_async([FleetJob(env, lookups=0)])  # the forkserver is warm now
    start_at = time.time() + 0.5
    results = await run_fleet_async(
        [FleetJob(env, lookups=1, start_at=start_at) for _ in range(10)], at_once=10
    )
    assert len(sandbox.amplitude.requests()) == 1
    assert all(r.said == [USAGE_FALLBACK] for r in results)
    sandbox.amplitude.clear()


async def test_a_summary_queued_in_a_job_that_exits_is_delivered_by_another(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    env = {**sandbox.env(), "RESILIENCE_STORE_URL": url}
    sandbox.salesforce.inject("*/sobjects/Task", FaultKind.SERVICE_UNAVAILABLE)
    [first] = await run_fleet_async([FleetJob(env, lookups=0, summary="Wants a demo.")])
    assert first.said == [NOTE_QUEUED] and first.pending_after == 1
    assert sandbox.salesforce.tasks == []  # its process has exited; the write waits
    sandbox.salesforce.clear()
    [second] = await run_fleet_async([FleetJob(env, lookups=0)])
    assert second.pending_after == 0
    [task] = sandbox.salesforce.tasks
    assert "Wants a demo." in task["Description"]
    [again] = await run_fleet_async([FleetJob(env, lookups=0)])  # nothing is sent twice
    assert again.pending_after == 0 and len(sandbox.salesforce.tasks) == 1


async def test_metrics_scrape_shows_a_transition_made_in_a_job_process(
    sandbox: Sandbox, tmp_path: Path, metrics_dir: Path
) -> None:
    """As the worker runs it: a multiprocess directory set before job processes start,
    LiveKit's own /metrics endpoint in the worker process."""
    from livekit.agents.telemetry.http_server import HttpServer

    for stale in metrics_dir.iterdir():  # the worker empties it at start
        stale.unlink()
    sandbox.amplitude.inject("*", FaultKind.SERVICE_UNAVAILABLE)
    env = {**sandbox.env(), "RESILIENCE_STORE_URL": f"sqlite:///{tmp_path / 'fleet.db'}"}
    [job] = await run_fleet_async([FleetJob(env, lookups=1)])
    assert job.states["amplitude"] == "open"
    port = free_port()
    server = HttpServer("127.0.0.1", port)
    await server.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            text = await resp.text()
    finally:
        await server.aclose()
    assert 'pandadoc_circuit_transitions_total{service="amplitude",to_state="open"} 1.0' in text
    # The job ended, so it no longer counts among jobs with an open circuit.
    assert 'pandadoc_circuits_open{service="amplitude"} 1.0' not in text
