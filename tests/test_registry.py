"""The registry (issue #22): a vendor and a tool are declared once, everything else derives.

A small extra vendor, "billing", and a write tool for it, "extend trial" (``POST
/v1/trials/{email}/extend``, a write without a lookup), are added here through the public
declarations only (:data:`src.registry.VENDORS`, :func:`src.registry.declared`), with no
list in ``src/`` edited, and get: a breaker, a bulkhead and a retry budget; settings from
the env under their prefix; a sandbox stand-in on the next port; the capability notice
while the circuit is open; the write contract over real HTTP (a 503 retried once; a 500,
a timeout or a reset never re-sent; an unknown outcome remembered across conversations
through the resilience store).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from livekit.agents import RunContext, function_tool, llm
from livekit.agents.llm import ToolError

from src.agent import PandaDocTrialistAgent
from src.drill.harness import StandInRunContext
from src.error_recovery import CircuitState
from src.phrases import WRITE_NOT_CONFIRMED
from src.registry import (
    VENDORS,
    WRITE_WITHOUT_LOOKUP,
    Capability,
    ClientContext,
    Vendor,
    VendorEnv,
    declaration_of,
    declared,
    undeclare,
)
from src.sandbox import Sandbox, service_names, service_port
from src.sandbox.base import FaultKind, SandboxServer, bearer_token, json_error
from src.sandbox.openai_server import default_turn
from src.services.http import HttpOptions, ServiceHttp
from src.services.wiring import TrialistServices
from src.settings import Settings, SettingsError, settings_from_env
from src.state import TrialistData
from src.store import MemoryStore, StoreGuard, open_store
from src.tools.degraded import degraded_request
from src.tools.unknown import UnknownWrites, write_key

# -- what a new vendor brings: client, settings section, stand-in (here, not in src/) -----

BILLING_KEY = "sandbox-billing-key"
EXTEND_FALLBACK = "I can't extend your trial right now, but the team can do it for you."
EXTENDED = "Done: your trial now runs {days} more days."
BILLING_DOWN_NOTE = "Right now trials cannot be extended. Do not offer or promise it."
JANE = "jane.doe@acme.example.com"
SAM = "sam.lee@globex.example.com"


@dataclasses.dataclass(frozen=True)
class BillingSettings:
    api_key: str = ""
    base_url: str = "https://billing.example.invalid"

    @property
    def configured(self) -> bool:
        return bool(self.api_key)

    @classmethod
    def from_env(cls, env: VendorEnv) -> BillingSettings:
        return cls(api_key=env.secret("API_KEY"), base_url=env.url("BASE_URL", cls.base_url))


class BillingClient:
    def __init__(
        self,
        api_key: str,
        base_url: str,
        *,
        options: HttpOptions,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._http = ServiceHttp("billing", base_url, options=options, session=session)
        self._headers = {"Authorization": f"Bearer {api_key}"}

    async def extend_trial(self, email: str, days: int) -> int:
        data = await self._http.request(
            "POST",
            f"/v1/trials/{quote(email, safe='')}/extend",
            json_body={"days": days},
            headers=self._headers,
        )
        return int(data["extended_days"])

    async def aclose(self) -> None:
        await self._http.aclose()


def billing_client(section: BillingSettings, ctx: ClientContext) -> BillingClient:
    return BillingClient(
        section.api_key, section.base_url, options=ctx.options, session=ctx.session
    )


class BillingServer(SandboxServer):
    name = "billing"

    def __init__(self) -> None:
        super().__init__()
        self.extended: list[tuple[str, int]] = []

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/trials/{email}/extend", self._extend)

    async def _extend(self, request: web.Request) -> web.Response:
        if bearer_token(request) != BILLING_KEY:
            return json_error(401, "Unauthorized")
        days = int((await request.json())["days"])
        self.extended.append((request.match_info["email"], days))
        return web.json_response({"extended_days": days})


BILLING = Vendor(
    "billing",
    env_prefix="BILLING",
    section=BillingSettings.from_env,
    client=billing_client,
    stand_in=BillingServer,
    sandbox_env=lambda: {"BILLING_API_KEY": BILLING_KEY},
    max_response_bytes=64 * 1024,
    capability=Capability("trial extensions", BILLING_DOWN_NOTE),
)


async def extend(agent: PandaDocTrialistAgent, data: TrialistData, days: int) -> str:
    """The tool body: one write without a lookup, for the caller's own email."""
    client = agent.services.billing
    if client is None or not data.email:
        raise ToolError(EXTEND_FALLBACK)
    email = data.email
    granted = await agent.protected(
        "billing",
        lambda: client.extend_trial(email, days),
        EXTEND_FALLBACK,
        kind=WRITE_WITHOUT_LOOKUP,
        once_for=("extend_trial", email),
    )
    return EXTENDED.format(days=granted)


def billing_agent_class() -> type[PandaDocTrialistAgent]:
    class BillingAgent(PandaDocTrialistAgent):
        @function_tool()
        @declared(
            uses=("billing",),
            kind=WRITE_WITHOUT_LOOKUP,
            fallback=EXTEND_FALLBACK,
            hidden_while_down=True,
            keywords=("extend", "extension"),
            ask_about="extending your trial",
        )
        async def extend_trial(self, context: RunContext[TrialistData], days: int = 14) -> str:
            """Extend the caller's trial by up to 14 days.

            Args:
                days: How many days to add, 1 to 14.
            """
            days = max(1, min(14, int(days)))
            return await self.run_tool(
                context, "extend_trial", lambda: extend(self, context.userdata, days)
            )

    return BillingAgent


@pytest.fixture
def billing() -> Iterator[type[PandaDocTrialistAgent]]:
    """The registry with billing, and the agent with its tool, for one test."""
    with VENDORS.extended(BILLING):
        try:
            yield billing_agent_class()
        finally:
            undeclare("extend_trial")


class NoSleep:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


def fast(settings: Settings) -> Settings:
    resilience = dataclasses.replace(
        settings.resilience, service_timeout=0.3, tool_deadline=1.5, jitter=False
    )
    return dataclasses.replace(settings, resilience=resilience)


@dataclasses.dataclass
class Rig:
    sandbox: Sandbox
    settings: Settings
    services: list[TrialistServices]
    agent_class: type[PandaDocTrialistAgent]

    @property
    def server(self) -> BillingServer:
        server = self.sandbox.servers["billing"]
        assert isinstance(server, BillingServer)
        return server

    def agent(self, store: StoreGuard | None = None) -> PandaDocTrialistAgent:
        """A new conversation (its own clients and breakers), sharing ``store``."""
        services = TrialistServices.from_settings(self.settings)
        self.services.append(services)
        agent = self.agent_class(services, self.settings, store=store, sleep=NoSleep())
        for name in agent.circuit_breakers:  # a fresh process's view for each conversation
            agent.circuit_breakers[name].reset()
        return agent


@pytest.fixture
async def rig(billing: type[PandaDocTrialistAgent]) -> AsyncIterator[Rig]:
    async with Sandbox() as sandbox:
        rig = Rig(sandbox, fast(settings_from_env(sandbox.env())), [], billing)
        try:
            yield rig
        finally:
            for services in rig.services:
                await services.aclose()


async def call_extend(agent: PandaDocTrialistAgent, email: str = JANE) -> str:
    ctx: Any = StandInRunContext(TrialistData(email=email))
    try:
        result: str = await agent.extend_trial(ctx, days=14)  # type: ignore[attr-defined]
    except ToolError as exc:
        return exc.message
    return result


# -- protection, settings, stand-in, notice: derived ---------------------------------------


def test_the_new_vendor_gets_a_breaker_bulkhead_and_retry_budget(
    billing: type[PandaDocTrialistAgent],
) -> None:
    agent = billing(TrialistServices())
    for protection in (agent.circuit_breakers, agent.bulkheads, agent.retry_budgets):
        assert tuple(protection) == VENDORS.names()
        assert "billing" in protection
    assert agent.circuit_breakers["billing"].name == "billing"
    # the spec's four are still created in __init__
    assert {"amplitude", "salesforce", "chilipiper", "hubspot"} <= set(agent.circuit_breakers)


def test_its_settings_come_from_env_under_its_prefix(
    billing: type[PandaDocTrialistAgent],
) -> None:
    settings = settings_from_env(
        {
            "BILLING_API_KEY": "k-1",
            "BILLING_BASE_URL": "http://127.0.0.1:9/",
            "BILLING_MAX_RESPONSE_BYTES": "4096",
        }
    )
    assert settings.billing == BillingSettings(api_key="k-1", base_url="http://127.0.0.1:9")
    assert settings.response_limits.billing == 4096
    assert settings_from_env({}).response_limits.billing == BILLING.max_response_bytes
    assert not Settings().billing.configured
    with pytest.raises(SettingsError, match="BILLING_BASE_URL") as info:
        settings_from_env({"BILLING_BASE_URL": "ftp://secret-host"})
    assert "secret-host" not in str(info.value)
    services = TrialistServices.from_settings(settings)
    assert isinstance(services.billing, BillingClient)
    assert services.configured() == ["billing"]


async def test_its_stand_in_takes_the_next_port_and_env_lines(
    billing: type[PandaDocTrialistAgent],
) -> None:
    names = service_names()
    assert names[-1] == "billing"
    # the four vendors keep 8701-8704, the model 8705; billing takes the next free port
    assert [service_port(n, 8701) for n in names] == list(range(8701, 8707))
    assert service_port("openai", 8701) == 8705 and service_port("billing", 8701) == 8706
    async with Sandbox() as sandbox:
        server = sandbox.servers["billing"]
        assert isinstance(server, BillingServer) and sandbox.billing is server
        env = sandbox.env()
        assert env["BILLING_BASE_URL"] == server.base_url
        assert env["BILLING_API_KEY"] == BILLING_KEY
        assert settings_from_env(env).billing.configured


async def test_the_model_is_told_while_its_circuit_is_open(
    billing: type[PandaDocTrialistAgent],
) -> None:
    agent = billing(TrialistServices(billing=object()))
    assert agent.down_capabilities() == []
    breaker = agent.circuit_breakers["billing"]
    for _ in range(breaker.failure_threshold):
        breaker.record_failure(ConnectionError("down"))
    assert breaker.state is CircuitState.OPEN
    down = agent.down_capabilities()
    assert [cap.name for cap in down] == ["trial extensions"]
    assert down[0].hidden_tools == ("extend_trial",)
    ctx = llm.ChatContext([llm.ChatMessage(role="system", content=["You are Ava."])])
    chat, tools = degraded_request(ctx, agent.tools, down)
    assert BILLING_DOWN_NOTE in str(chat.items[1].content)
    offered = {getattr(getattr(t, "info", None), "name", None) for t in tools}
    assert "extend_trial" not in offered and "get_trial_usage" in offered
    # the tool declared a fallback: it answers at once, without a request
    assert agent.refused_by_open_circuits("extend_trial") == EXTEND_FALLBACK


def test_the_declaration_is_all_the_sandbox_model_needs(
    billing: type[PandaDocTrialistAgent],
) -> None:
    declaration = declaration_of("extend_trial")
    assert declaration is not None and declaration.vendors() == ("billing",)
    assert declaration.capability_name() == "trial extensions"
    tools = [
        {
            "type": "function",
            "function": {
                "name": "extend_trial",
                "parameters": {"type": "object", "properties": {"days": {"type": "integer"}}},
            },
        }
    ]
    said = {"role": "user", "content": "Could you extend my trial by 7 days?"}
    turn = default_turn({"messages": [said], "tools": tools})
    assert [(c.name, c.arguments) for c in turn.tool_calls] == [("extend_trial", {"days": 7})]
    help_text = default_turn(
        {"messages": [{"role": "user", "content": "hello"}], "tools": tools}
    ).text
    assert "extending your trial" in help_text


# -- the write contract, over real HTTP --------------------------------------------------


async def test_a_healthy_write_is_sent_once(rig: Rig) -> None:
    assert await call_extend(rig.agent()) == EXTENDED.format(days=14)
    assert rig.server.extended == [(JANE, 14)]


async def test_a_503_is_retried_once(rig: Rig) -> None:
    rig.server.inject("*", FaultKind.SERVICE_UNAVAILABLE, count=1)
    assert await call_extend(rig.agent()) == EXTENDED.format(days=14)
    assert len(rig.server.journal) == 2 and rig.server.extended == [(JANE, 14)]

    rig.server.journal.clear()
    rig.server.inject("*", FaultKind.SERVICE_UNAVAILABLE)  # it stays down
    assert await call_extend(rig.agent(), SAM) == EXTEND_FALLBACK
    assert len(rig.server.journal) == 2  # once, then one retry: never a third


@pytest.mark.parametrize("fault", [FaultKind.SERVER_ERROR, FaultKind.HANG, FaultKind.REFUSE])
async def test_an_unknown_outcome_is_never_sent_again(rig: Rig, fault: FaultKind) -> None:
    """A 500, a timeout and a reset after sending: the caller hears it is not confirmed;
    the same person asking again (this call or the next) gets no second request."""
    rig.server.inject("*", fault, count=1)
    agent = rig.agent()
    assert await call_extend(agent) == WRITE_NOT_CONFIRMED
    assert len(rig.server.journal) == 1
    rig.server.clear()
    assert await call_extend(agent) == WRITE_NOT_CONFIRMED
    assert len(rig.server.journal) == 1
    assert await call_extend(agent, SAM) == EXTENDED.format(days=14)  # someone else: sent
    assert len(rig.server.journal) == 2


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_an_unknown_outcome_is_remembered_across_conversations(
    rig: Rig, tmp_path: Path, backend: str
) -> None:
    """Two conversations (two job processes: two guards over one store) of the same
    person: the second one does not repeat a write whose outcome the first lost."""
    if backend == "memory":
        shared = MemoryStore()
        first, second = StoreGuard(shared), StoreGuard(shared)
    else:
        url = f"sqlite:///{tmp_path / 'fleet.db'}"
        first, second = StoreGuard(open_store(url)), StoreGuard(open_store(url))
    rig.server.inject("*", FaultKind.SERVER_ERROR, count=1)
    assert await call_extend(rig.agent(first)) == WRITE_NOT_CONFIRMED
    assert await call_extend(rig.agent(second)) == WRITE_NOT_CONFIRMED
    assert len(rig.server.journal) == 1 and rig.server.extended == []
    assert await call_extend(rig.agent(second), SAM) == EXTENDED.format(days=14)
    for guard in (first, second):
        await guard.store.aclose()


async def test_a_write_without_lookup_must_name_who_it_is_for(rig: Rig) -> None:
    agent = rig.agent()

    async def never() -> int:
        raise AssertionError("not sent")

    with pytest.raises(ValueError, match="once_for"):
        await agent.protected("billing", never, EXTEND_FALLBACK, kind=WRITE_WITHOUT_LOOKUP)


# -- one place names the vendors ----------------------------------------------------------


def test_only_the_registry_names_every_vendor() -> None:
    """Outside the drill, at most one file of ``src/`` names every registered vendor:
    the registry. Everything else iterates over it."""
    src = Path(__file__).resolve().parents[1] / "src"
    names = [name.lower() for name in VENDORS.names()]
    naming_all = sorted(
        str(path.relative_to(src))
        for path in src.rglob("*.py")
        if "drill" not in path.relative_to(src).parts
        and all(name in path.read_text().lower() for name in names)
    )
    assert naming_all == ["registry/vendors.py"]


class DownStore(MemoryStore):
    async def cache_get(self, key: str) -> dict[str, Any] | None:
        raise OSError("store down")

    async def cache_put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        raise OSError("store down")


async def test_unknown_writes_are_kept_in_the_process_while_the_store_is_down() -> None:
    now = [0.0]
    guard = StoreGuard(DownStore(), cool_down=0.0)
    writes = UnknownWrites(guard, ttl_s=10.0, clock=lambda: now[0])
    key = write_key("extend_trial", " Jane.Doe@Acme.example.com ")
    assert key == write_key("extend_trial", JANE)  # who, normalised; never the address
    assert JANE not in key and len(key) == 32
    assert not await writes.seen(key)
    await writes.remember(key)  # the store fails: remembered here only
    assert await writes.seen(key)
    now[0] = 11.0  # past the TTL
    assert not await writes.seen(key)
    assert not await UnknownWrites().seen(key)  # no store, nothing remembered


async def test_a_write_cut_off_in_flight_is_remembered(rig: Rig) -> None:
    """The caller interrupts while the write is in flight: it may have applied, so it
    is not sent again, in this conversation or (through the store) the next."""
    import asyncio

    store = StoreGuard(MemoryStore())
    rig.server.inject("*", FaultKind.HANG)
    agent = rig.agent(store)
    task = asyncio.create_task(call_extend(agent))
    for _ in range(500):  # until the request reached the stand-in (at most 5 s)
        if rig.server.journal:
            break
        await asyncio.sleep(0.01)
    assert rig.server.journal
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rig.server.clear()
    await asyncio.sleep(0.05)  # the store write runs in the background
    assert await call_extend(rig.agent(store)) == WRITE_NOT_CONFIRMED
    assert len(rig.server.journal) == 1
