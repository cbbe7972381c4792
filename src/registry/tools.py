"""One declaration per tool, written next to its ``@function_tool`` in :mod:`src.agent`::

    @function_tool()
    @declared(uses=("usage",), kind=READ, keywords=("usage", "trial"),
              ask_about="your trial usage", fallback=USAGE_FALLBACK)
    async def get_trial_usage(self, context, email: str = "") -> str: ...

Everything else about a tool is derived from it: the filler it speaks while slow
(:meth:`~src.tools.runtime.ToolRuntime.run_tool`), whether it answers at once while its
vendors' circuits are open and whether the model is offered it meanwhile
(:mod:`src.tools.degraded`), and the sandbox model's keyword table
(:mod:`src.sandbox.openai_server.script`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..phrases import FILLER, FILLER_WRITE
from ..redaction import get_logger
from .kinds import OperationKind
from .vendors import VENDORS

__all__ = [
    "ToolDeclaration",
    "declaration_of",
    "declared",
    "declared_tools",
    "load_agent_tools",
    "undeclare",
]

F = TypeVar("F", bound=Callable[..., Any])

_TOOLS: dict[str, ToolDeclaration] = {}
AGENT_MODULE = "src.agent"


@dataclass(frozen=True)
class ToolDeclaration:
    """What the rest of the code knows about one tool.

    Attributes:
        name: the tool's function name (what the model calls).
        uses: what the tool calls: registry names of vendors, or of capabilities
            (``"account"``: every vendor behind it, in registry order), so a vendor
            added behind a capability is covered by its tools' declarations at once.
        kind: its vendor operation (:mod:`.kinds`): a read or a write.
        filler: the sentence spoken when the caller would otherwise wait in silence
            (default: :data:`~src.phrases.FILLER`, for writes
            :data:`~src.phrases.FILLER_WRITE`).
        capability: the capability it belongs to (default: the one it uses, or its
            vendors' one; ``""``: none). While that capability is down the model is told
            so and, with ``hidden_while_down``, is not offered the tool.
        fallback: the sentence it answers at once, with no request, while every one of
            its configured vendors' circuits is open (``None``: it runs as usual).
        hidden_while_down: not offered to the model while its capability is down.
        keywords: words of a caller's message that make the sandbox model call it.
        ask_about: how the sandbox model's help text names it ("your trial usage").
    """

    name: str
    uses: tuple[str, ...]
    kind: OperationKind
    filler: str
    capability: str | None = None
    fallback: str | None = None
    hidden_while_down: bool = False
    keywords: tuple[str, ...] = ()
    ask_about: str = ""

    def __post_init__(self) -> None:
        if not self.uses:
            raise ValueError(f"tool {self.name!r} must use at least one vendor")
        if self.keywords and not self.ask_about:
            raise ValueError(f"tool {self.name!r} has keywords but no ask_about")

    def vendors(self) -> tuple[str, ...]:
        """The registry names of the vendors it calls (capabilities resolved now)."""
        names: list[str] = []
        for used in self.uses:
            for name in (used,) if used in VENDORS else VENDORS.behind(used):
                if name not in names:
                    names.append(name)
        return tuple(names)

    def capability_name(self) -> str | None:
        """The capability it belongs to, or ``None``."""
        if self.capability is not None:
            return self.capability or None
        for used in self.uses:
            if used in VENDORS:
                cap = VENDORS[used].capability
                if cap is not None:
                    return cap.name
            elif VENDORS.behind(used):
                return used
        return None


def declared(
    *,
    uses: tuple[str, ...],
    kind: OperationKind,
    filler: str | None = None,
    capability: str | None = None,
    fallback: str | None = None,
    hidden_while_down: bool = False,
    keywords: tuple[str, ...] = (),
    ask_about: str = "",
) -> Callable[[F], F]:
    """Declare the tool defined by the decorated function (place it under
    ``@function_tool()``). Declaring a name again replaces the declaration."""

    def register(func: F) -> F:
        declaration = ToolDeclaration(
            name=func.__name__,
            uses=tuple(uses),
            kind=kind,
            filler=filler or (FILLER_WRITE if kind.is_write else FILLER),
            capability=capability,
            fallback=fallback,
            hidden_while_down=hidden_while_down,
            keywords=tuple(keywords),
            ask_about=ask_about,
        )
        _TOOLS[declaration.name] = declaration
        func.__tool_declaration__ = declaration  # type: ignore[attr-defined]
        return func

    return register


def declaration_of(tool_name: str) -> ToolDeclaration | None:
    """The declaration of ``tool_name`` (``None``: an undeclared tool)."""
    return _TOOLS.get(tool_name)


def declared_tools() -> tuple[ToolDeclaration, ...]:
    """Every declared tool, in declaration order."""
    return tuple(_TOOLS.values())


def undeclare(tool_name: str) -> None:
    """Forget a declaration (a test's extra tool)."""
    _TOOLS.pop(tool_name, None)


def load_agent_tools() -> tuple[ToolDeclaration, ...]:
    """The agent's declared tools, importing :mod:`src.agent` first if nobody has (the
    sandbox model runs in its own process). A configuration the agent refuses leaves no
    declarations (the sandbox model then only chats), logged once."""
    if not _TOOLS:
        try:
            importlib.import_module(AGENT_MODULE)
        except Exception as exc:  # the sandbox must run whatever the agent's settings say
            get_logger("pandadoc.sandbox").warning(
                "Could not read the agent's tool declarations (%s)", type(exc).__name__
            )
    return declared_tools()
