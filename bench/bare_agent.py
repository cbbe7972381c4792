"""A bare LiveKit agent: what the turn and job-memory benchmarks measure ours against.

It imports nothing of ours (``src``), so a job process that runs it holds LiveKit, its
plugins and this file only. Its tools make the vendor requests the production tools made
(:class:`Request`, recorded from the sandbox's journals by :mod:`bench.turn`) with plain
aiohttp and each vendor's own auth, and answer with a short text of the JSON they got:
no retries, no breaker, no timeouts of their own, no filler.

Run as a job's main file (:mod:`bench.memory_fork`), :func:`conversation` holds a text
conversation with the spec in ``BARE_AGENT_SPEC`` (a JSON file: the instructions, the
tools' raw schemas, the recorded requests, the turns).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from livekit.agents import Agent, AgentSession, function_tool
from livekit.plugins import openai

__all__ = ["Replayer", "ReplayingAgent", "Request", "conversation"]

# Where each vendor lives in the sandbox's env lines (a bare agent knows its vendors).
URL_KEYS = {
    "amplitude": "AMPLITUDE_BASE_URL",
    "salesforce": "SALESFORCE_INSTANCE_URL",
    "hubspot": "HUBSPOT_BASE_URL",
    "chilipiper": "CHILIPIPER_BASE_URL",
}
_DROP_HEADERS = {"host", "content-length", "user-agent", "accept-encoding", "connection"}
_TOKEN_PATH = "/services/oauth2/token"


@dataclass(frozen=True)
class Request:
    """One vendor request a production tool made."""

    service: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Replayer:
    """Sends a tool's recorded requests with plain aiohttp and the vendors' own auth
    (an async context manager: one HTTP session per conversation, as a job has)."""

    def __init__(self, env: dict[str, str], calls: dict[str, list[Request]]) -> None:
        self.env = env
        self.calls = calls
        self.urls = {k: env[v].rstrip("/") for k, v in URL_KEYS.items() if env.get(v)}
        self.http: aiohttp.ClientSession | None = None
        self.salesforce_token: str | None = None

    async def __aenter__(self) -> Replayer:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.http is not None:
            await self.http.close()

    def _auth(self, service: str) -> dict[str, str]:
        e = self.env
        if service == "amplitude":
            basic = aiohttp.BasicAuth(e["AMPLITUDE_API_KEY"], e["AMPLITUDE_SECRET_KEY"])
            return {"Authorization": basic.encode()}
        if service == "hubspot":
            return {"Authorization": f"Bearer {e['HUBSPOT_ACCESS_TOKEN']}"}
        if service == "chilipiper":
            return {"Authorization": f"Bearer {e['CHILIPIPER_API_KEY']}"}
        if service == "salesforce" and self.salesforce_token:
            return {"Authorization": f"Bearer {self.salesforce_token}"}
        return {}

    async def run(self, tool: str) -> str:
        """Send what ``tool`` sent; a short text of the answers."""
        assert self.http is not None, "enter the Replayer first"
        said: list[str] = []
        for r in self.calls.get(tool, []):
            headers = {
                k: v
                for k, v in r.headers.items()
                if k.lower() not in _DROP_HEADERS and v != "<redacted>"
            }
            headers.update(self._auth(r.service))
            kwargs: dict[str, Any] = {"params": r.query, "headers": headers}
            if r.path.endswith(_TOKEN_PATH):
                kwargs["data"] = {
                    "grant_type": "client_credentials",
                    "client_id": self.env["SALESFORCE_CLIENT_ID"],
                    "client_secret": self.env["SALESFORCE_CLIENT_SECRET"],
                }
            elif r.body is not None:
                kwargs["json"] = r.body
            url = self.urls[r.service] + r.path
            async with self.http.request(r.method, url, **kwargs) as response:
                data = await response.json(content_type=None)
            if r.path.endswith(_TOKEN_PATH) and isinstance(data, dict):
                self.salesforce_token = data.get("access_token")
                continue
            said.append(json.dumps(data)[:240])
        return " ".join(said) or "Done."


class ReplayingAgent(Agent):
    """A plain ``Agent`` whose tools send what a :class:`Replayer` recorded."""

    def __init__(self, instructions: str, replayer: Replayer, tools: list[Any] | None = None):
        super().__init__(instructions=instructions, tools=tools or [])
        self.replayer = replayer


def _raw_tool(schema: dict[str, Any]) -> Any:
    name = schema["name"]

    async def call(raw_arguments: dict[str, object], context: Any) -> str:
        agent = context.session.current_agent
        assert isinstance(agent, ReplayingAgent)
        return await agent.replayer.run(name)

    return function_tool(call, raw_schema=schema)


async def conversation(spec_path: str | None = None) -> int:
    """The spec's turns through a bare session; returns the tool calls made."""
    spec = json.loads(Path(spec_path or os.environ["BARE_AGENT_SPEC"]).read_text())
    env = dict(os.environ)
    calls = {k: [Request(**r) for r in v] for k, v in spec["calls"].items()}
    tools = [_raw_tool(s) for s in spec["tools"]]
    made = 0
    async with Replayer(env, calls) as replayer:
        agent = ReplayingAgent(spec["instructions"], replayer, tools)
        session: AgentSession[Any] = AgentSession(
            llm=openai.LLM(model=env.get("LLM_MODEL", "gpt-4o-mini"))
        )
        await session.start(agent)
        try:
            for text in spec["turns"]:
                result = await session.run(user_input=text)
                made += sum(1 for e in result.events if e.type == "function_call")
        finally:
            await session.aclose()
    return made
