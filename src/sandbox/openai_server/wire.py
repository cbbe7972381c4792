"""Wire pieces every endpoint shares: OpenAI's error body, SSE framing, a token estimate."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn

from aiohttp import web

__all__ = ["Stall", "estimate_tokens", "openai_error", "sse"]

Stall = Callable[[web.Request], Awaitable[NoReturn]]
"""What a stream awaits once its first chunk(s) are out when it is to stall (see
``OpenAIServer.stall_after_first_chunk``): it waits until the fault is cleared, then drops
the connection and never returns."""


def openai_error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> web.Response:
    """A JSON error response in OpenAI's shape: ``{"error": {message, type, param, code}}``."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status)


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def sse(payload: Mapping[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()
