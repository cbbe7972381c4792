"""The degraded-capability notice (issue #15): while a capability's circuits are open the
model is told it is unavailable, so it stops calling its tools and does not promise it.

Each model request (:meth:`~src.agent.PandaDocTrialistAgent.llm_node`) gets, while a
capability is down, a system note right after the agent's instructions and, for a
capability whose tools cannot answer at all, a tool list without them. A capability is
down while every configured service behind it has an open circuit that is not yet due
for its probe, so once the recovery timeout passes the tools are offered again and the
next call is the probe that closes the circuit; then the note goes away.

The capabilities come from the vendor registry (:data:`src.registry.VENDORS`: each
vendor's capability and its note); the tools a capability withholds from the model are
those declared ``hidden_while_down`` (:func:`src.registry.declared`). Trial usage keeps
its tool while its vendor is down (the usage cache may still answer); the model only gets
the note.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from livekit.agents import llm

from src.error_recovery import CircuitBreaker, CircuitState
from src.redaction import get_logger
from src.registry import VENDORS, declared_tools

__all__ = ["Capability", "capabilities", "degraded_request", "down_capabilities"]

logger = get_logger("pandadoc.agent")


@dataclass(frozen=True)
class Capability:
    name: str
    services: tuple[str, ...]  # down when every configured one is refused
    hidden_tools: tuple[str, ...]  # not offered to the model while down
    note: str


def __getattr__(name: str) -> Any:
    if name == "CAPABILITIES":  # kept for older callers: capabilities(), as of now
        return capabilities()
    raise AttributeError(name)


def capabilities() -> tuple[Capability, ...]:
    """Every capability of the registered vendors, with the declared tools it hides."""
    tools = declared_tools()
    return tuple(
        Capability(
            cap.name,
            VENDORS.behind(cap.name),
            tuple(t.name for t in tools if t.hidden_while_down and t.capability_name() == cap.name),
            cap.note,
        )
        for cap in VENDORS.capabilities()
    )


def _refused(breaker: CircuitBreaker | None) -> bool:
    return breaker is not None and breaker.state is CircuitState.OPEN and breaker.retry_in() > 0


def down_capabilities(
    breakers: Mapping[str, CircuitBreaker], configured: Iterable[str]
) -> list[Capability]:
    """The capabilities whose every configured service is refused by an open circuit."""
    have = set(configured)
    down = []
    for cap in capabilities():
        mine = [s for s in cap.services if s in have]
        if mine and all(_refused(breakers.get(s)) for s in mine):
            down.append(cap)
    return down


def _tool_name(tool: Any) -> str | None:
    info = getattr(tool, "info", None)
    name = getattr(info, "name", None)
    return name if isinstance(name, str) else None


def degraded_request(
    chat_ctx: llm.ChatContext, tools: Sequence[llm.Tool], down: Sequence[Capability]
) -> tuple[llm.ChatContext, list[llm.Tool]]:
    """``chat_ctx`` with the notes of ``down`` after its leading system messages, and
    ``tools`` without the hidden ones (the inputs are not changed)."""
    if not down:
        return chat_ctx, list(tools)
    hidden = {name for cap in down for name in cap.hidden_tools}
    kept = [t for t in tools if _tool_name(t) not in hidden]
    note = llm.ChatMessage(role="system", content=[" ".join(cap.note for cap in down)])
    items = list(chat_ctx.items)
    at = 0
    while at < len(items) and getattr(items[at], "role", None) in ("system", "developer"):
        at += 1
    items.insert(at, note)
    return llm.ChatContext(items), kept


class DegradedLog:
    """Logs each change of what is down, once per conversation (not per request)."""

    def __init__(self) -> None:
        self._down: frozenset[str] = frozenset()

    def update(self, down: Sequence[Capability]) -> None:
        now = frozenset(cap.name for cap in down)
        for name in sorted(now - self._down):
            logger.info("Degraded: the model is told %s is unavailable", name)
        for name in sorted(self._down - now):
            logger.info("Restored: the model is told %s is available again", name)
        self._down = now
