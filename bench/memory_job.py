"""The child process of the memory measurement: one job process's life, with its RSS read
from ``/proc/self/status`` after each stage. Run by :mod:`bench.memory` with the sandbox's
environment (``python -m bench.memory_job``); prints one JSON line.

Stages: a bare interpreter; ``import src.agent`` (what a LiveKit job process imports:
livekit-agents, the plugins, our code; settings load from the environment); ``prewarm``
(the production function: LiveKit's native VAD, ``src.vad.build_vad``); a 10-turn text
conversation through the production ``build_session`` and agent against the sandbox's
scripted model and vendors (no room, no audio I/O: text in, text out).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

TURNS = (
    "hi there",
    "how is my trial usage going?",
    "who am I in your records, can you check my account?",
    "what demo times are available?",
    "book the first option please",
    "what documents have I sent so far in the trial?",
    "thanks, can you check the account again?",
    "are there other demo slots available?",
    "please log a summary note of this call",
    "great, that's all, bye",
)


def rss_kib() -> dict[str, int]:
    """Current and peak resident set size (KiB) of this process, from /proc."""
    out: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


async def talk(session: Any, agent: Any, stages: dict[str, Any] | None = None) -> int:
    """Start ``session`` with ``agent``, hold the ten turns, close it; the tool calls
    made. With ``stages``, the RSS once the session has started."""
    from livekit.agents.voice.run_result import FunctionCallEvent

    tools = 0
    try:
        await session.start(agent)
        if stages is not None:
            stages["after session start"] = rss_kib()
        for text in TURNS:
            result = await asyncio.wait_for(session.run(user_input=text), 30)
            tools += sum(isinstance(e, FunctionCallEvent) for e in result.events)
    finally:
        await session.aclose()
    return tools


async def conversation(vad: Any, stages: dict[str, Any]) -> int:
    """Ten user turns through the production session; returns the tool calls made and
    records the RSS once the session has started, before the first turn."""
    from src.agent import PandaDocTrialistAgent
    from src.services.wiring import TrialistServices
    from src.session import build_session
    from src.settings import settings_from_env
    from src.state import TrialistData

    settings = settings_from_env(dict(os.environ))
    services = TrialistServices.from_settings(settings)
    agent = PandaDocTrialistAgent(services, settings)
    session = build_session(
        settings,
        userdata=TrialistData(email=os.environ["TRIALIST_EMAIL"]),
        tts_model=None,
        stt_model=None,
        vad_model=vad,
    )
    stages["after build_session"] = rss_kib()
    try:
        return await talk(session, agent, stages)
    finally:
        await services.aclose()


def main() -> None:
    stages: dict[str, Any] = {"interpreter": rss_kib()}
    import src.agent as agent_module

    stages["after import"] = rss_kib()

    proc = SimpleNamespace(userdata={})  # the one attribute of JobProcess prewarm uses
    agent_module.prewarm(proc)  # type: ignore[arg-type]
    stages["after prewarm (VAD)"] = rss_kib()
    tools = asyncio.run(conversation(proc.userdata["vad"], stages))
    stages[f"after a {len(TURNS)}-turn conversation"] = rss_kib()
    print(json.dumps({"stages": stages, "turns": len(TURNS), "tool_calls": tools}))


if __name__ == "__main__":
    main()
