"""`python -m src.sandbox` and the Sandbox class: env lines, serving until SIGTERM, and the
fault / clear / journal subcommands against a running sandbox's admin API."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from dotenv import dotenv_values

from src.registry import VENDORS
from src.sandbox import MODEL, OpenAIServer, Sandbox, service_names, service_port
from src.sandbox.__main__ import main, merge_env_file, service_urls_from_env
from src.sandbox.base import FaultKind
from src.sandbox.data import SANDBOX_CREDENTIALS, TRIAL_USERS

REPO = Path(__file__).resolve().parents[1]
# Every registered vendor's address and credentials, and the model's (from the registry).
ENV_KEYS = {
    *(vendor.url_key for vendor in VENDORS),
    *(key for vendor in VENDORS for key in vendor.sandbox_env()),
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "TRIALIST_EMAIL",
}
AUTH = {"Authorization": f"Bearer {SANDBOX_CREDENTIALS['OPENAI_API_KEY']}"}


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox() as running:
        yield running


@pytest.fixture
def env_file(sandbox: Sandbox, tmp_path: Path) -> Path:
    path = tmp_path / ".env.local"
    merge_env_file(path, sandbox.env())
    return path


async def cli(*argv: str) -> int:
    """Run the command line in a thread: its blocking HTTP must not stall our servers."""
    return await asyncio.to_thread(main, list(argv))


async def chat_status(openai_base_url: str) -> int:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{openai_base_url}/chat/completions", json=body, headers=AUTH) as resp,
    ):
        return resp.status


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the Sandbox class ------------------------------------------------------------------------


async def test_env_points_at_every_running_server(sandbox: Sandbox) -> None:
    env = sandbox.env()

    assert set(env) == ENV_KEYS
    assert env["OPENAI_BASE_URL"] == f"{sandbox.openai.base_url}/v1"
    assert env["TRIALIST_EMAIL"] in {u.email for u in TRIAL_USERS}
    assert service_urls_from_env(env) == {n: s.base_url for n, s in sandbox.servers.items()}
    assert isinstance(sandbox.openai, OpenAIServer)
    assert len({s.port for s in sandbox.servers.values()}) == len(service_names())
    assert set(sandbox.servers) == {*VENDORS.names(), MODEL}


async def test_env_before_start_and_bad_port_base_are_errors() -> None:
    with pytest.raises(RuntimeError, match="start the sandbox"):
        Sandbox().env()
    with pytest.raises(ValueError, match="port_base"):
        Sandbox(port_base=-1)
    with pytest.raises(ValueError, match="unknown service"):
        service_port("pandadoc", 8701)
    names = service_names()
    assert [service_port(s, 8701) for s in names] == list(range(8701, 8701 + len(names)))
    assert service_port(MODEL, 8701) == 8705  # the model keeps its port whatever is added


async def test_taken_port_names_the_service_and_stops_the_rest() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        base = taken.getsockname()[1] - service_names().index("hubspot")
        assert base >= 1  # ephemeral ports start far above 1024 on every OS we run on
        sandbox = Sandbox(port_base=base)
        # hubspot's port is taken (a neighbour of an ephemeral port could be, too)
        with pytest.raises(OSError, match=r"sandbox \w+ cannot listen on 127\.0\.0\.1:\d+"):
            await sandbox.start()
    assert all(s._runner is None for s in sandbox.servers.values())


def test_merge_env_file_keeps_other_lines(tmp_path: Path) -> None:
    path = tmp_path / ".env.local"
    path.write_text("LIVEKIT_URL=wss://example.livekit.cloud\nexport OPENAI_API_KEY=sk-real\n")

    merge_env_file(path, {"OPENAI_API_KEY": "sandbox", "OPENAI_BASE_URL": "http://h/v1"})

    assert dotenv_values(path) == {
        "LIVEKIT_URL": "wss://example.livekit.cloud",
        "OPENAI_API_KEY": "sandbox",
        "OPENAI_BASE_URL": "http://h/v1",
    }


# -- fault / clear / journal ------------------------------------------------------------------


async def test_fault_takes_effect_and_clear_removes_it(
    sandbox: Sandbox, env_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    openai_url = sandbox.env()["OPENAI_BASE_URL"]

    assert await cli("fault", "openai", "500", "--count", "2", "--env-file", str(env_file)) == 0
    assert "openai: 500 on * for the next 2 request(s)" in capsys.readouterr().out
    assert await chat_status(openai_url) == 500

    assert await cli("clear", "all", "--env-file", str(env_file)) == 0
    assert await chat_status(openai_url) == 200
    assert all(not s.faults for s in sandbox.servers.values())

    assert await cli("journal", "openai", "--env-file", str(env_file)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("/v1/chat/completions  500  [fault: 500]" in line for line in lines)
    assert lines[-1].endswith("/v1/chat/completions  200")


async def test_fault_options_reach_the_server(sandbox: Sandbox, env_file: Path) -> None:
    argv = ["--endpoint", "/crm/*", "--retry-after", "2.5", "--env-file", str(env_file)]
    assert await cli("fault", "hubspot", "429", *argv) == 0
    assert await cli("fault", "openai", "stall", "--count", "1", "--env-file", str(env_file)) == 0

    (fault,) = sandbox.hubspot.faults
    assert (fault.kind, fault.endpoint, fault.retry_after, fault.count) == (
        FaultKind.RATE_LIMITED,
        "/crm/*",
        2.5,
        None,
    )
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{sandbox.openai.base_url}/__sandbox/stall") as resp,
    ):
        assert await resp.json() == [{"endpoint": "/v1/chat/completions", "count": 1}]


@pytest.mark.parametrize(
    "argv",
    [
        ["fault", "openai", "teapot"],
        ["fault", "pandadoc", "500"],
        ["fault", "openai", "500", "--count", "0"],
        ["fault", "openai", "slow", "--delay-ms", "soon"],
        ["clear"],
        ["--port-base", "70000"],
        ["--port-base", "8800", "--ephemeral"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


async def test_stall_is_openai_only(env_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("fault", "hubspot", "stall", "--env-file", str(env_file)) == 1
    assert "stall is an openai fault" in capsys.readouterr().err


def test_no_sandbox_running_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["clear", "openai", "--port-base", str(free_port())]) == 1
    assert "no sandbox answering at http://127.0.0.1:" in capsys.readouterr().err


# -- serving from the command line ------------------------------------------------------------


async def test_serve_prints_env_writes_it_and_stops_on_sigterm(tmp_path: Path) -> None:
    env_path = tmp_path / ".env.local"
    env_path.write_text("LIVEKIT_URL=wss://example.livekit.cloud\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "src.sandbox",
        "--ephemeral",
        "--write-env",
        str(env_path),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    try:
        banner: list[str] = []
        async with asyncio.timeout(10):
            while not banner or not banner[-1].startswith("# Press Ctrl+C"):
                line = (await proc.stdout.readline()).decode()
                assert line, (await proc.stderr.read()).decode() if proc.stderr else "no output"
                banner.append(line.rstrip("\n"))

        printed = dict(line.split("=", 1) for line in banner if not line.startswith("#"))
        assert set(printed) == ENV_KEYS
        assert dotenv_values(env_path) == {
            "LIVEKIT_URL": "wss://example.livekit.cloud",
            **printed,
        }
        assert any("src/agent.py console --text" in line for line in banner)

        assert await cli("fault", "openai", "503", "--env-file", str(env_path)) == 0
        assert await chat_status(printed["OPENAI_BASE_URL"]) == 503
        assert await cli("clear", "openai", "--env-file", str(env_path)) == 0
        assert await chat_status(printed["OPENAI_BASE_URL"]) == 200
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            rest = (await proc.stdout.read()).decode()
            code = await proc.wait()
    assert code == 0
    assert "# Sandbox stopped." in rest


async def test_clearing_one_endpoint_releases_only_its_hung_requests() -> None:
    import aiohttp

    from src.sandbox.base import FaultKind
    from src.sandbox.hubspot import HubSpotServer

    async with HubSpotServer() as server:
        server.inject("/crm/v3/objects/notes", FaultKind.HANG)
        server.inject("/crm/v3/objects/contacts/search", FaultKind.HANG)
        async with aiohttp.ClientSession() as http:
            notes = asyncio.create_task(http.post(f"{server.base_url}/crm/v3/objects/notes"))
            search = asyncio.create_task(
                http.post(f"{server.base_url}/crm/v3/objects/contacts/search")
            )
            await asyncio.sleep(0.1)
            server.clear("/crm/v3/objects/notes")
            released = await asyncio.wait_for(notes, 2)
            assert released.status == 503
            await asyncio.sleep(0.1)
            assert not search.done()  # still held by its own fault
            server.clear()
            assert (await asyncio.wait_for(search, 2)).status == 503


async def test_flapping_lets_older_faults_apply_on_its_passing_turns() -> None:
    from src.sandbox.base import FaultKind
    from src.sandbox.hubspot import HubSpotServer

    server = HubSpotServer()
    server.inject("*", FaultKind.UNAUTHORIZED)
    server.inject("*", FaultKind.FLAPPING, every=2)
    kinds = [getattr(server._match_fault("/x"), "kind", None) for _ in range(4)]
    assert kinds == [FaultKind.UNAUTHORIZED, FaultKind.FLAPPING] * 2


async def test_journal_hides_secret_form_fields() -> None:
    import aiohttp

    from src.sandbox.salesforce import SalesforceServer

    async with SalesforceServer() as server, aiohttp.ClientSession() as http:
        form = {"grant_type": "client_credentials", "client_id": "id", "client_secret": "s3cr3t"}
        await http.post(f"{server.base_url}/services/oauth2/token", data=form)
        [entry] = server.journal
        assert entry.body["client_secret"] == "<redacted>"
        assert entry.body["grant_type"] == "client_credentials"
