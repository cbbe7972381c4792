"""src/openai_client.py: the streamed chat body is the one the SDK's transform gives,
and the requests really go out (to the sandbox's stand-in) through the faster path."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from livekit.agents.llm import ChatContext, FunctionCall, FunctionCallOutput, ToolContext
from openai._utils import async_maybe_transform
from openai.types.chat import completion_create_params

from src.agent import PandaDocTrialistAgent
from src.openai_client import TrialistOpenAI, chat_client, streamed_chat_body
from src.sandbox import Sandbox
from src.services.wiring import TrialistServices


def _livekit_request() -> dict[str, Any]:
    """The keyword arguments LiveKit's OpenAI stream passes for a reply after a tool."""
    ctx = ChatContext()
    ctx.add_message(role="system", content="You are the PandaDoc trial assistant.")
    ctx.add_message(role="user", content='how is my trial usage? {"not": "json"}')
    ctx.insert(
        FunctionCall(call_id="c1", name="get_trial_usage", arguments='{"days": 7}'),
    )
    ctx.insert(
        FunctionCallOutput(
            call_id="c1", name="get_trial_usage", output="3 documents", is_error=False
        )
    )
    ctx.add_message(role="assistant", content="You sent three documents.")
    messages, _ = ctx.to_provider_format(format="openai")
    tools = ToolContext(PandaDocTrialistAgent(TrialistServices()).tools)
    return {
        "messages": messages,
        "tools": tools.parse_function_tools("openai", strict=True),
        "model": "gpt-4o-mini",
        "stream_options": {"include_usage": True},
        "stream": True,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "temperature": 0.4,
        "user": openai.omit,
        "metadata": openai.NOT_GIVEN,
    }


async def test_the_body_is_what_the_sdk_transform_gives() -> None:
    params = _livekit_request()
    ours = streamed_chat_body(params)
    sdk = await async_maybe_transform(
        params, completion_create_params.CompletionCreateParamsStreaming
    )
    assert ours == sdk
    assert ours is not None and "user" not in ours and "metadata" not in ours
    assert json.loads(json.dumps(ours)) == ours  # plain JSON, as sent


def test_values_that_are_not_plain_json_go_through_the_sdk() -> None:
    params = _livekit_request()
    assert streamed_chat_body({**params, "messages": tuple(params["messages"])}) is None
    assert streamed_chat_body({**params, "stop": {"a", "b"}}) is None
    assert streamed_chat_body({**params, "metadata": {1: "x"}}) is None


async def test_requests_reach_the_model_through_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A streamed request does not run the SDK's transform; a non-streamed one does."""
    import openai.resources.chat.completions.completions as completions

    walked: list[bool] = []
    original = completions.async_maybe_transform

    async def counting(data: Any, expected: Any) -> Any:
        walked.append(True)
        return await original(data, expected)

    monkeypatch.setattr(completions, "async_maybe_transform", counting)
    async with Sandbox() as sandbox:
        env = sandbox.env()
        client = chat_client(api_key=env["OPENAI_API_KEY"], base_url=env["OPENAI_BASE_URL"])
        assert isinstance(client, TrialistOpenAI)
        try:
            stream = await client.chat.completions.create(
                messages=[{"role": "user", "content": "hello"}],
                model="gpt-4o-mini",
                stream=True,
                extra_headers={"X-Trace": "t1"},
            )
            chunks = [chunk async for chunk in stream]
            assert chunks and not walked
            request = sandbox.openai.journal[-1]
            assert request.path.endswith("/chat/completions")
            plain = await client.chat.completions.create(
                messages=[{"role": "user", "content": "hello"}], model="gpt-4o-mini"
            )
            assert plain.choices and walked == [True]
        finally:
            await client.close()


async def test_the_client_is_configured_as_livekits_plugin_would_configure_its_own() -> None:
    """chat_client repeats the plugin's client settings; this fails if LiveKit's change."""
    from livekit.plugins import openai as lk_openai

    theirs = lk_openai.LLM(model="gpt-4o-mini", api_key="sk-x", base_url="http://127.0.0.1:9/v1")
    ours = chat_client(api_key="sk-x", base_url="http://127.0.0.1:9/v1")
    try:
        mine, plugin = ours._client, theirs._client._client
        assert ours.max_retries == theirs._client.max_retries == 0
        assert mine.timeout == plugin.timeout
        assert mine.follow_redirects == plugin.follow_redirects
        pool, plugin_pool = mine._transport._pool, plugin._transport._pool
        assert pool._max_connections == plugin_pool._max_connections
        assert pool._max_keepalive_connections == plugin_pool._max_keepalive_connections
        assert pool._keepalive_expiry == plugin_pool._keepalive_expiry
        assert str(ours.base_url) == str(theirs._client.base_url)
    finally:
        await ours.close()
        await theirs.aclose()
