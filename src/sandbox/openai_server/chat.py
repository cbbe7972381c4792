"""``POST /v1/chat/completions``: a scripted :class:`~.script.Turn` as OpenAI sends it, a
``chat.completion.chunk`` SSE stream or one ``chat.completion`` object."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from aiohttp import web

from .script import ToolCall, Turn
from .wire import Stall, estimate_tokens, sse

__all__ = ["chat_completion", "chat_usage", "stream_chat"]

_WORDS_PER_CHUNK = 3
_ARGUMENT_PIECES = 3


def chat_usage(messages: Any, turn: Turn, calls: Sequence[ToolCall]) -> dict[str, Any]:
    """The ``usage`` object: token counts estimated from the request's ``messages`` and the
    answer."""
    prompt_tokens = estimate_tokens(json.dumps(messages))
    completion_tokens = estimate_tokens(turn.text + "".join(c.arguments_json for c in calls))
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


async def stream_chat(
    request: web.Request,
    body: Mapping[str, Any],
    turn: Turn,
    calls: Sequence[ToolCall],
    *,
    completion_id: str,
    usage: Mapping[str, Any],
    request_id: str,
    stall: Stall | None,
) -> web.StreamResponse:
    """Stream ``turn`` (with ``calls``, their ids assigned) as ``chat.completion.chunk`` SSE
    events; with ``stall``, stop after the role chunk and the first content/tool chunk."""
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "x-request-id": request_id,
        }
    )
    await response.prepare(request)
    base = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body["model"],
        "system_fingerprint": "fp_sandbox",
    }
    for n, choices in enumerate(_chunk_choices(turn, calls)):
        chunk: dict[str, Any] = {**base, "choices": choices}
        if include_usage:
            chunk["usage"] = None
        await response.write(sse(chunk))
        if stall and n >= 1:  # role chunk + first content/tool chunk are out
            await stall(request)
    if include_usage:
        await response.write(sse({**base, "choices": [], "usage": usage}))
    await response.write(sse("[DONE]"))
    await response.write_eof()
    return response


def _chunk_choices(turn: Turn, calls: Sequence[ToolCall]) -> Iterator[list[dict[str, Any]]]:
    """The ``choices`` of each streamed chunk, as OpenAI orders them."""

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    def header(index: int, call: ToolCall) -> dict[str, Any]:
        function = {"name": call.name, "arguments": ""}
        return {"index": index, "id": call.id, "type": "function", "function": function}

    first_call = 0
    if turn.text or not calls:
        yield choice({"role": "assistant", "content": "", "refusal": None})
        for piece in _text_pieces(turn.text):
            yield choice({"content": piece})
    else:
        # A tool-only answer carries the first call's header in the role chunk.
        yield choice(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [header(0, calls[0])],
                "refusal": None,
            }
        )
        yield from (
            choice({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in _argument_pieces(calls[0].arguments_json)
        )
        first_call = 1
    for index, call in enumerate(calls[first_call:], start=first_call):
        yield choice({"tool_calls": [header(index, call)]})
        for piece in _argument_pieces(call.arguments_json):
            yield choice({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield choice({}, turn.finish_reason)


def chat_completion(
    completion_id: str,
    model: str,
    turn: Turn,
    calls: Sequence[ToolCall],
    usage: Mapping[str, Any],
) -> dict[str, Any]:
    """The non-streaming answer: one ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": turn.text or None, "refusal": None}
    if calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments_json},
            }
            for c in calls
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_sandbox",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": turn.finish_reason,
            }
        ],
        "usage": dict(usage),
    }


def _text_pieces(text: str) -> list[str]:
    """``text`` in a few pieces of about three words that join back to exactly ``text``."""
    words = re.findall(r"\s*\S+\s*", text) or ([text] if text else [])
    return [
        "".join(words[i : i + _WORDS_PER_CHUNK]) for i in range(0, len(words), _WORDS_PER_CHUNK)
    ]


def _argument_pieces(arguments: str) -> list[str]:
    if not arguments:
        return []
    size = max(1, math.ceil(len(arguments) / _ARGUMENT_PIECES))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]
