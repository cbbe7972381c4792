"""A real Prometheus server scrapes the worker's ``/metrics`` (LiveKit's own endpoint over
the multiprocess directory, as ``PROMETHEUS_PORT`` runs it) and sees a series that a job
process changed. ``prometheus`` comes with Debian's package (``.ci/setup-system``); the
test starts it on a free port in a temp dir and stops it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fleet_helpers import free_port

SCRAPE_INTERVAL = "300ms"
OPENED = 'pandadoc_circuit_transitions_total{service="amplitude",to_state="open"}'


class PrometheusServer:
    """``prometheus`` on a free port, scraping ``targets`` every :data:`SCRAPE_INTERVAL`."""

    def __init__(self, workdir: Path, targets: list[str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed: run .ci/setup-system")
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL}\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL}\n"
            "scrape_configs:\n"
            "  - job_name: agent\n"
            "    static_configs:\n"
            f"      - targets: [{', '.join(repr(t) for t in targets)}]\n"
        )
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def query(self, http: aiohttp.ClientSession, promql: str) -> list[dict[str, Any]]:
        async with http.get(f"{self.url}/api/v1/query", params={"query": promql}) as resp:
            body = await resp.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def wait_for(
        self, http: aiohttp.ClientSession, promql: str, timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        """The query's result once it is not empty (``AssertionError`` after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                result = await self.query(http, promql)
                if result:
                    return result
            assert time.monotonic() < deadline, f"Prometheus never showed {promql}"
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """As the worker sets it up before job processes start."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    yield directory


@pytest.fixture
async def worker_metrics(metrics_dir: Path) -> AsyncIterator[str]:
    """The worker's metrics endpoint (LiveKit's ``HttpServer``, as PROMETHEUS_PORT starts
    it); yields its ``host:port``."""
    from livekit.agents.telemetry.http_server import HttpServer

    port = free_port()
    server = HttpServer("127.0.0.1", port)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.aclose()


# A job process's part, as the agent runs it when a breaker opens and when a call ends:
# the breaker's metrics listener and the per-call report. A fresh interpreter (LiveKit's
# job processes start from a forkserver the worker starts after setting the directory).
JOB = """
from src import metrics
from src.report import CallReport

metrics.record_transition("amplitude", "closed", "open")
report = CallReport(trust="verified")
report.on_fallback("amplitude", "circuit_open")
report.finish()
"""
CALLS = 'pandadoc_calls_total{trust="verified",heard="fallback"}'


async def test_prometheus_scrapes_series_changed_in_a_job_process(
    worker_metrics: str, tmp_path: Path
) -> None:
    prometheus = PrometheusServer(tmp_path, [worker_metrics])
    try:
        async with aiohttp.ClientSession() as http:
            up = await prometheus.wait_for(http, 'up{job="agent"} == 1')
            assert up[0]["metric"]["instance"] == worker_metrics
            assert await prometheus.query(http, OPENED) == []  # nothing opened yet
            job = await asyncio.create_subprocess_exec(
                sys.executable, "-c", JOB, cwd=Path(__file__).resolve().parent.parent
            )
            assert await job.wait() == 0
            [opened] = await prometheus.wait_for(http, OPENED)
            [calls] = await prometheus.wait_for(http, CALLS)
            [refusals] = await prometheus.wait_for(
                http, 'pandadoc_call_breaker_refusals_total{service="amplitude"}'
            )
    finally:
        prometheus.stop()
    assert opened["metric"]["instance"] == worker_metrics
    assert float(opened["value"][1]) == 1.0
    assert float(calls["value"][1]) == 1.0
    assert float(refusals["value"][1]) == 1.0
