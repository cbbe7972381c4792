"""Whole turns, against a bare LiveKit agent (issue #29): what a caller's latency and a
host's CPU bill depend on.

Four agents hold the same conversation with the sandbox's scripted model and vendors (the
sandbox in a process of its own, so none of its work is counted):

* **bare, stock**: a plain ``livekit.agents.Agent`` with our instructions and our five
  tools' names, signatures and docstrings (cloned from :class:`PandaDocTrialistAgent`, so
  the model sees the same schemas), each tool making *the same vendor requests* ours made
  (recorded from the sandbox's journals in a calibration conversation and sent again with
  plain aiohttp, the vendor's own auth added), no protection at all; LiveKit's own
  ``openai.LLM`` client and schema builders;
* **bare, patched**: the same with our two LiveKit-level changes (the tool-schema cache,
  :mod:`src.tool_schemas`, and the chat client without the SDK's request walk,
  :mod:`src.openai_client`);
* **ours, stock**: the production agent and session (:func:`build_session`, a fresh SQLite
  resilience store per conversation, as a job has) with those two changes taken out;
* **ours, patched**: production as it runs.

Each round runs one conversation per agent, in a shuffled order (paired, interleaved
rounds), and each turn is timed: CPU of this process (``time.process_time``: the event
loop and any LiveKit thread), wall time, and time to the first assistant text. Ratios are
per round (ours ÷ bare in the same round), then the median over rounds with a bootstrap
95 % interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import os
import random
import statistics
import tempfile
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from livekit.agents import Agent, AgentSession, function_tool
from livekit.agents.llm import FunctionTool
from livekit.agents.voice.run_result import ChatMessageEvent, FunctionCallEvent
from livekit.plugins import openai

from bench.bare_agent import Replayer, ReplayingAgent, Request
from bench.common import Budget, Report, Rows
from src import heap, tool_schemas
from src.agent import INSTRUCTIONS, PandaDocTrialistAgent
from src.openai_client import chat_client
from src.sandbox.__main__ import service_urls_from_env
from src.sandbox.base import ADMIN_PREFIX
from src.sandbox.remote import SandboxProcess
from src.services.wiring import TrialistServices
from src.session import build_session
from src.settings import Settings, settings_from_env
from src.state import TrialistData
from src.store import FleetQuotaStore, FleetUsageCache, StoreGuard, open_store

# (kind, what the caller says): the tool turns call one tool each (the scripted model's
# keyword table), the plain ones none.
TURNS: tuple[tuple[str, str], ...] = (
    ("plain", "hi there"),
    ("usage", "how is my trial usage going?"),
    ("account", "who am I in your records, can you check my account?"),
    ("availability", "what demo times are available?"),
    ("summary", "please log a summary note of this call"),
    ("plain", "great, thanks a lot, bye"),
)
VARIANTS = (("bare", "stock"), ("bare", "patched"), ("ours", "stock"), ("ours", "patched"))
BOOTSTRAP = 2_000
TARGET_VS_PATCHED = 1.03
TARGET_VS_STOCK = 0.55


@dataclass
class TurnSample:
    kind: str
    cpu_ms: float
    wall_ms: float
    first_text_ms: float | None
    tools: tuple[str, ...]


@dataclass
class Samples:
    by_variant: dict[tuple[str, str], list[list[TurnSample]]] = field(
        default_factory=lambda: {v: [] for v in VARIANTS}
    )


# -- the bare agent ----------------------------------------------------------------------
def _bare_tool(original: FunctionTool) -> FunctionTool:
    """A tool with ``original``'s name, signature and docstring whose body replays what
    the production tool sent (so the model sees the same schema)."""
    func = original.__wrapped__  # type: ignore[attr-defined]
    name = original.info.name

    async def body(self: BareAgent, *args: Any, **kwargs: Any) -> str:
        return await self.replayer.run(name)

    body.__signature__ = inspect.signature(func)  # type: ignore[attr-defined]
    body.__annotations__ = typing.get_type_hints(func, include_extras=True)
    body.__doc__ = func.__doc__
    body.__name__ = body.__qualname__ = func.__name__
    return function_tool(body, name=name)  # type: ignore[no-any-return]


def _production_tools() -> dict[str, FunctionTool]:
    return {
        value.info.name: value
        for value in vars(PandaDocTrialistAgent).values()
        if isinstance(value, FunctionTool)
    }


class BareAgent(ReplayingAgent):
    """Our instructions and tool schemas (cloned below); no protection, no watchdogs, no
    filler."""

    def __init__(self, replayer: Replayer) -> None:
        super().__init__(INSTRUCTIONS, replayer)


for _name, _tool in _production_tools().items():
    setattr(BareAgent, _name, _bare_tool(_tool))


# -- one conversation ----------------------------------------------------------------------
def _llm(settings: Settings, patched: bool) -> openai.LLM:
    m = settings.models
    base_url = m.openai_base_url or None
    if not patched:
        return openai.LLM(model=m.llm_model, base_url=base_url, api_key=m.openai_api_key)
    built = openai.LLM(
        model=m.llm_model, client=chat_client(api_key=m.openai_api_key, base_url=base_url)
    )
    built._owns_client = True
    return built


async def _turn(session: AgentSession[Any], kind: str, text: str) -> TurnSample:
    wall = time.time()
    started, cpu = time.perf_counter(), time.process_time()
    result = await asyncio.wait_for(session.run(user_input=text), 30)
    cpu_ms = (time.process_time() - cpu) * 1e3
    wall_ms = (time.perf_counter() - started) * 1e3
    first: float | None = None
    tools: list[str] = []
    for event in result.events:
        if isinstance(event, FunctionCallEvent):
            tools.append(event.item.name)
        elif (
            isinstance(event, ChatMessageEvent) and event.item.role == "assistant" and first is None
        ):
            first = max(0.0, event.item.created_at - wall) * 1e3
    return TurnSample(kind, cpu_ms, wall_ms, first, tuple(tools))


async def conversation(
    variant: tuple[str, str], env: dict[str, str], replay: dict[str, list[Request]]
) -> list[TurnSample]:
    """One conversation of ``variant``; the turns' samples."""
    who, lk = variant
    patched = lk == "patched"
    settings = settings_from_env(env)
    email = env["TRIALIST_EMAIL"]
    stack = contextlib.AsyncExitStack()
    async with stack:
        if who == "ours":
            folder = stack.enter_context(tempfile.TemporaryDirectory())
            store = StoreGuard(open_store(f"sqlite:///{folder}/resilience.db"))
            stack.push_async_callback(store.store.aclose)
            services = TrialistServices.from_settings(
                settings, quota_store=FleetQuotaStore(store), usage_cache=FleetUsageCache(store)
            )
            stack.push_async_callback(services.aclose)
            agent: Agent = PandaDocTrialistAgent(services, settings, store=store)
            session = build_session(
                settings,
                userdata=TrialistData(email=email),
                llm_model=_llm(settings, patched),
                tts_model=None,
                stt_model=None,
            )
        else:
            replayer = await stack.enter_async_context(Replayer(env, replay))
            agent = BareAgent(replayer)
            session = AgentSession(llm=_llm(settings, patched), userdata=TrialistData(email=email))
        # build_session installs the schema cache; stock rows take it out again.
        tool_schemas.install() if patched else tool_schemas.uninstall()
        await session.start(agent)
        stack.push_async_callback(session.aclose)
        if isinstance(agent, PandaDocTrialistAgent):
            # What the entrypoint does before the caller's first turn (src/agent.py): the
            # call state out of GC scans, the opening words (the fleet's view of booking:
            # the store's first use in this job), then again once the call is up.
            heap.freeze_call_state()
            await agent.opening_words(None)
            heap.freeze_call_state()
        return [await _turn(session, kind, text) for kind, text in TURNS]
    raise AssertionError("unreachable")  # pragma: no cover (mypy: the with may swallow)


# -- calibration: what ours sends, per tool ---------------------------------------------------
async def _journal(http: aiohttp.ClientSession, url: str, clear: bool = False) -> list[Any]:
    if clear:
        async with http.delete(f"{url}{ADMIN_PREFIX}/journal"):
            return []
    async with http.get(f"{url}{ADMIN_PREFIX}/journal") as response:
        return list(await response.json())


async def record_requests(
    env: dict[str, str], texts: Sequence[str] = tuple(text for _, text in TURNS)
) -> dict[str, list[Request]]:
    """Tool name -> the vendor requests the production tool made for it in a
    conversation of ``texts`` (the first time that tool was called), in order."""
    urls = {k: v for k, v in service_urls_from_env(env).items() if k != "openai"}
    settings = settings_from_env(env)
    calls: dict[str, list[Request]] = {}
    async with aiohttp.ClientSession() as http:
        services = TrialistServices.from_settings(settings)
        agent = PandaDocTrialistAgent(services, settings)
        session = build_session(
            settings,
            userdata=TrialistData(email=env["TRIALIST_EMAIL"]),
            tts_model=None,
            stt_model=None,
        )
        try:
            await session.start(agent)
            for text in texts:
                for url in urls.values():
                    await _journal(http, url, clear=True)
                result = await asyncio.wait_for(session.run(user_input=text), 30)
                names = [e.item.name for e in result.events if isinstance(e, FunctionCallEvent)]
                if len(names) != 1 or names[0] in calls:
                    continue
                sent = calls.setdefault(names[0], [])
                for service, url in urls.items():
                    for e in await _journal(http, url):
                        sent.append(
                            Request(
                                service,
                                e["method"],
                                e["path"],
                                e["query"],
                                e["headers"],
                                e["body"],
                            )
                        )
        finally:
            await session.aclose()
            await services.aclose()
    return calls


# -- figures -----------------------------------------------------------------------------------
def _median_ci(values: Sequence[float], rng: random.Random) -> tuple[float, float, float]:
    """Median and its bootstrap 95 % interval."""
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(BOOTSTRAP)
    )
    low, high = medians[int(0.025 * BOOTSTRAP)], medians[int(0.975 * BOOTSTRAP) - 1]
    return statistics.median(values), low, high


def _per_round(
    samples: Samples, variant: tuple[str, str], pick: Callable[[TurnSample], bool]
) -> list[float]:
    """CPU ms per round summed over the turns ``pick`` selects."""
    return [sum(t.cpu_ms for t in conv if pick(t)) for conv in samples.by_variant[variant]]


def _is_tool(t: TurnSample) -> bool:
    return t.kind != "plain"


def _is_plain(t: TurnSample) -> bool:
    return t.kind == "plain"


def figures(samples: Samples, seed: int = 29) -> tuple[Rows, Rows, dict[str, Any]]:
    """The per-turn table, the ratio table and the results.json figures."""
    rng = random.Random(seed)
    per_turn: Rows = []
    for index, (kind, text) in enumerate(TURNS):
        row: dict[str, Any] = {"turn": f"{index + 1}. {kind}", "caller says": text}
        for variant in VARIANTS:
            convs = samples.by_variant[variant]
            label = f"{variant[0]}/{variant[1]}"
            row[f"{label} CPU ms"] = round(statistics.median(c[index].cpu_ms for c in convs), 2)
        ours = samples.by_variant[("ours", "patched")]
        row["ours wall ms"] = round(statistics.median(c[index].wall_ms for c in ours), 1)
        firsts = [c[index].first_text_ms for c in ours if c[index].first_text_ms is not None]
        row["ours first text ms"] = round(statistics.median(firsts), 1) if firsts else "-"
        per_turn.append(row)
    ratios: Rows = []
    extra: dict[str, Any] = {}
    pairs = (
        ("tool turns", _is_tool, ("bare", "patched"), "turn_cpu_vs_bare_patched"),
        ("tool turns", _is_tool, ("bare", "stock"), "turn_cpu_vs_bare_stock"),
        ("plain turns", _is_plain, ("bare", "patched"), None),
        ("plain turns", _is_plain, ("bare", "stock"), None),
    )
    ours_rounds = {
        pick: _per_round(samples, ("ours", "patched"), pick) for pick in (_is_tool, _is_plain)
    }
    for label, pick, against, key in pairs:
        bare = _per_round(samples, against, pick)
        per_round = [o / b for o, b in zip(ours_rounds[pick], bare, strict=True) if b > 0]
        median, low, high = _median_ci(per_round, rng)
        target = {"turn_cpu_vs_bare_patched": TARGET_VS_PATCHED}.get(key or "")
        target = target or {"turn_cpu_vs_bare_stock": TARGET_VS_STOCK}.get(key or "")
        ratios.append(
            {
                "CPU per conversation": label,
                "ours ÷": f"bare, {against[1]} LiveKit",
                "median": round(median, 3),
                "95 % interval": f"{low:.3f} to {high:.3f}",
                "rounds": len(per_round),
                "target": f"≤ {target}" if target else "-",
                "met": ("yes" if high <= target else "median only" if median <= target else "NO")
                if target
                else "-",
            }
        )
        if key:
            extra[key] = round(median, 3)
            extra[f"{key}_interval"] = [round(low, 3), round(high, 3)]
    return per_turn, ratios, extra


async def collect(rounds: int, *, seed: int = 29) -> Samples:
    """Warm-up (one conversation per variant, not kept), then ``rounds`` paired rounds."""
    rng = random.Random(seed)
    samples = Samples()
    async with SandboxProcess() as sandbox:
        env = {**os.environ, **sandbox.env(), "RESILIENCE_STORE_URL": "memory://"}
        replay = await record_requests(env)
        for variant in VARIANTS:
            await conversation(variant, env, replay)
        # A job process starts from LiveKit's forkserver, which collects and freezes what it
        # imported (livekit.agents.ipc._preload_freeze), and holds one call: each
        # conversation starts from a collected heap, as a fresh job would (not timed).
        heap.freeze_preloaded()
        for _ in range(rounds):
            order = list(VARIANTS)
            rng.shuffle(order)
            for variant in order:
                gc.collect()
                samples.by_variant[variant].append(await conversation(variant, env, replay))
    tool_schemas.install()  # leave the process as production runs
    return samples


async def measure(budget: Budget) -> Report:
    rounds = 4 if budget.quick else 24
    samples = await collect(rounds)
    per_turn, ratios, extra = figures(samples)
    data = {
        "rounds": rounds,
        "turns": [kind for kind, _ in TURNS],
        "per_turn": per_turn,
        "ratios": ratios,
        "raw_cpu_ms": {
            f"{v[0]}/{v[1]}": [[round(t.cpu_ms, 3) for t in conv] for conv in convs]
            for v, convs in samples.by_variant.items()
        },
    }
    return Report(
        key="turn",
        data=data,
        tables=[
            ("Whole turns: CPU ÷ a bare LiveKit agent (paired rounds)", ratios),
            ("Whole turns: median per turn", per_turn),
        ],
        notes=[
            f"turns: {rounds} paired rounds of one {len(TURNS)}-turn conversation per agent, "
            "shuffled order; CPU is this process's (the sandbox runs in its own); the bare "
            "agent sends the requests ours sent (recorded from the sandbox journals)"
        ],
        extra=extra,
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=24)
    args = parser.parse_args()

    async def _main() -> None:
        from bench.common import production_logging, table

        production_logging()
        samples = await collect(args.rounds)
        per_turn, ratios, extra = figures(samples)
        print(table("Whole turns: CPU ÷ a bare LiveKit agent (paired rounds)", ratios))
        print(table("Whole turns: median per turn", per_turn))
        print(json.dumps(extra))

    asyncio.run(_main())
