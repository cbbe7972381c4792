"""The OpenAI client the chat models use: the SDK's, minus a per-request CPU cost.

Before it sends a chat request, the OpenAI SDK walks the whole request against its typed
parameter definitions (``async_maybe_transform``) to apply key aliases and value formats
(dates, base64 files). The chat-completions parameters declare none, so for the plain
dicts and lists LiveKit sends, the walk changes nothing but dropping omitted values. It
is not cheap: every message is walked once per member of the message union, and every
tool schema value by value. Measured in the load drill, it was the largest CPU cost
left on the event loop: about 4 ms per model request, a third of the loop's CPU.

:class:`TrialistOpenAI` is ``openai.AsyncOpenAI`` whose streamed
``chat.completions.create`` posts the same body without the walk
(:func:`streamed_chat_body`); anything else (a non-streamed request, a parameter that
is not a plain JSON value) goes through the SDK unchanged. ``tests/test_openai_client.py``
checks the body is the one the SDK's transform gives, for the requests LiveKit makes.
:func:`chat_client` builds it with the settings LiveKit's plugin uses for its own client.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import httpx2 as httpx  # the HTTP package of the OpenAI SDK and LiveKit's plugin
import openai
from openai._base_client import make_request_options
from openai._streaming import AsyncStream
from openai._utils import is_given
from openai.resources.chat import AsyncChat
from openai.resources.chat.completions import AsyncCompletions
from openai.resources.chat.completions.completions import validate_response_format
from openai.types.chat import ChatCompletion, ChatCompletionChunk

__all__ = ["TrialistOpenAI", "chat_client", "streamed_chat_body"]

_JSON_SCALARS = (str, int, float, bool, type(None))
_REQUEST_OPTIONS = ("extra_headers", "extra_query", "extra_body", "timeout")


def _plain(value: Any) -> bool:
    """A JSON value built of dicts (str keys), lists and scalars only."""
    if isinstance(value, _JSON_SCALARS):
        return True
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def streamed_chat_body(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The request body for ``params`` (without the request options), or ``None`` when a
    value is not plain JSON and the SDK's own transform must handle it."""
    body = {key: value for key, value in params.items() if is_given(value)}
    return body if _plain(body) else None


class _Completions(AsyncCompletions):
    async def create(self, **params: Any) -> Any:
        options = {key: params.pop(key) for key in _REQUEST_OPTIONS if key in params}
        body = streamed_chat_body(params) if params.get("stream") is True else None
        if body is None:
            return await super().create(**params, **options)
        validate_response_format(params.get("response_format", openai.omit))
        return await self._post(
            "/chat/completions",
            body=body,
            options=make_request_options(
                extra_headers=options.get("extra_headers"),
                extra_query=options.get("extra_query"),
                extra_body=options.get("extra_body"),
                timeout=options.get("timeout", openai.NOT_GIVEN),
                security={"bearer_auth": True},
            ),
            cast_to=ChatCompletion,
            stream=True,
            stream_cls=AsyncStream[ChatCompletionChunk],
        )


class _Chat(AsyncChat):
    @functools.cached_property
    def completions(self) -> AsyncCompletions:
        return _Completions(self._client)


class TrialistOpenAI(openai.AsyncOpenAI):
    """``openai.AsyncOpenAI`` with the streamed chat request above."""

    @functools.cached_property
    def chat(self) -> AsyncChat:
        return _Chat(self)


def chat_client(*, api_key: str | None, base_url: str | None) -> TrialistOpenAI:
    """The client LiveKit's ``openai.LLM`` would build for itself (no SDK retries: the
    session's connect options retry; the same timeouts and connection limits)."""
    return TrialistOpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        http_client=httpx.AsyncClient(
            timeout=httpx.Timeout(connect=15.0, read=5.0, write=5.0, pool=5.0),
            follow_redirects=True,
            limits=httpx.Limits(
                max_connections=50, max_keepalive_connections=50, keepalive_expiry=120
            ),
        ),
    )
