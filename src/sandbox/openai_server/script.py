"""The script of the stand-in model: :class:`Turn` and :class:`ToolCall` (what it answers),
:class:`ToolOutput` (the tool results it was given), and :func:`default_turn`, its answer
when the script is empty (the keyword table :func:`keyword_tools`, from the tools'
declarations: :func:`src.registry.declared`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...registry.tools import load_agent_tools

__all__ = [
    "STAND_IN_NOTICE",
    "ToolCall",
    "ToolOutput",
    "Turn",
    "content_text",
    "default_turn",
    "keyword_tools",
]

STAND_IN_NOTICE = "This is the sandbox stand-in model, not a real one."


def keyword_tools() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The default script's keyword table: (tool name, words in the last user message
    that call it), from each tool's declared ``keywords``, matched on whole words,
    case-insensitively. The first row whose words match *and* whose tool the request
    offers wins; tools declared later are the later steps of a call (booking after
    availability, the summary last), so they come first.

    Arguments it sends follow the tool's JSON schema: ``email`` (the first address in
    the message), whole numbers (the first number, or first/second/third, default 1), an
    enum (its middle value), ``summary`` and other strings (the user message)."""
    return tuple(
        (tool.name, tool.keywords) for tool in reversed(load_agent_tools()) if tool.keywords
    )


def _ask_about() -> dict[str, str]:
    return {tool.name: tool.ask_about for tool in load_agent_tools() if tool.keywords}


_ORDINALS = {"first": 1, "second": 2, "third": 3}
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_NUMBER = re.compile(r"\b(\d+)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TOOL_REPLY_MAX_CHARS = 280


@dataclass(frozen=True)
class ToolCall:
    """One function call the stand-in model makes.

    ``arguments`` is sent JSON-encoded; pass a ``str`` to send it verbatim (e.g. broken
    JSON to test the agent). ``id`` defaults to a generated ``call_sandbox_<n>``.
    """

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    @property
    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments), separators=(",", ":"))


@dataclass(frozen=True)
class Turn:
    """One scripted model answer: ``text`` first (if any), then ``tool_calls`` (if any).

    ``finish_reason`` is ``"tool_calls"`` when there are tool calls, else ``"stop"``. A
    scripted turn is sent as written, even when the request did not offer the tool.
    """

    text: str = ""
    tool_calls: Sequence[ToolCall] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


@dataclass(frozen=True)
class ToolOutput:
    """A tool result the model received: ``name`` comes from the matching assistant call
    (``""`` if none), ``content`` is the text the agent sent as the tool's output."""

    name: str
    call_id: str
    content: str


# -- the default keyword script ------------------------------------------------------------


def default_turn(body: Mapping[str, Any]) -> Turn:
    """What the stand-in model says when the script is empty, from the request ``body``.

    After tool results: a short spoken sentence built from them. After a user message:
    a tool call picked with :func:`keyword_tools` (only tools the request offers), or a
    text reply saying this is the stand-in and what one can ask. Otherwise a greeting.
    """
    messages = [m for m in body.get("messages") or () if isinstance(m, Mapping)]
    offered = _offered_tools(body)
    # Filler speech said while a tool ran lands after its result: look past plain
    # assistant text (no tool calls) to find what the model is answering.
    while (
        len(messages) > 1
        and messages[-1].get("role") == "assistant"
        and not messages[-1].get("tool_calls")
    ):
        messages.pop()
    if messages and messages[-1].get("role") == "tool":
        outputs: list[str] = []
        for message in reversed(messages):
            if message.get("role") != "tool":
                break
            outputs.insert(0, content_text(message.get("content")))
        return Turn(text=_spoken_tool_reply(outputs))
    if messages and messages[-1].get("role") == "user":
        said = content_text(messages[-1].get("content"))
        words = set(re.findall(r"[a-z]+", said.lower()))
        for name, keywords in keyword_tools():
            if name in offered and words.intersection(keywords):
                arguments = _keyword_arguments(name, said, offered[name])
                return Turn(tool_calls=[ToolCall(name, arguments)])
        return Turn(text=_help_text(offered))
    return Turn(text=f"Hi! {STAND_IN_NOTICE} How can I help with your PandaDoc trial?")


def _offered_tools(body: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Function name -> its JSON-schema ``parameters`` for each tool in the request."""
    offered: dict[str, Mapping[str, Any]] = {}
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            parameters = function.get("parameters")
            offered[function["name"]] = parameters if isinstance(parameters, Mapping) else {}
    return offered


def _keyword_arguments(name: str, said: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments for tool ``name`` from the message, for the parameters its schema
    declares (required or not)."""
    properties = schema.get("properties")
    declared = properties if isinstance(properties, Mapping) else {}
    arguments: dict[str, Any] = {}
    for key, spec in declared.items():
        spec = spec if isinstance(spec, Mapping) else {}
        choices = spec.get("enum")
        if key == "email":
            if email := _EMAIL.search(said):
                arguments[key] = email.group(0)
        elif isinstance(choices, list) and choices:
            arguments[key] = choices[len(choices) // 2]
        elif spec.get("type") == "integer":
            arguments[key] = _option_number(said)
        elif spec.get("type") == "string" and "default" not in spec:
            arguments[key] = said
    return arguments


def _option_number(said: str) -> int:
    if number := _NUMBER.search(said):
        return int(number.group(1))
    for word in re.findall(r"[a-z]+", said.lower()):
        if word in _ORDINALS:
            return _ORDINALS[word]
    return 1


def _help_text(offered: Mapping[str, Any]) -> str:
    ask_about = _ask_about()
    topics = [ask_about[name] for name, _ in keyword_tools() if name in offered]
    if not topics:
        return f"{STAND_IN_NOTICE} I can chat, but no tools are available right now."
    listed = topics[0] if len(topics) == 1 else ", ".join(topics[:-1]) + f", or {topics[-1]}"
    return f"{STAND_IN_NOTICE} You can ask me about {listed}."


def _spoken_tool_reply(outputs: Sequence[str]) -> str:
    """Tool outputs as one or two plain sentences: no braces, quotes or JSON syntax."""
    text = " ".join(_plain(output) for output in outputs if output.strip())
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        return "Done."
    sentences = _SENTENCE_END.split(text)
    reply = " ".join(sentences[:2])
    if len(reply) > _TOOL_REPLY_MAX_CHARS:
        reply = reply[:_TOOL_REPLY_MAX_CHARS].rsplit(" ", 1)[0] + "."
    return reply


def _plain(output: str) -> str:
    try:
        value = json.loads(output)
    except ValueError:
        return re.sub(r"[{}\[\]\"`]", "", output)
    if isinstance(value, Mapping):
        for key in ("message", "summary", "text", "result"):
            if isinstance(value.get(key), str):
                return str(value[key])
        facts = [
            f"{str(k).replace('_', ' ')} {v}"
            for k, v in value.items()
            if isinstance(v, str | int | float | bool)
        ]
        return (", ".join(facts[:6]) + ".") if facts else ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value if isinstance(v, str | int | float)) + "."
    return str(value)


def content_text(content: Any) -> str:
    """Message ``content`` as text: a plain string or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""
