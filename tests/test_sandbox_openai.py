"""The OpenAI stand-in against the REAL livekit-plugins-openai LLM, TTS and STT: scripted
and default turns, tool results the model received, faults surfacing as livekit's errors,
and one AgentSession run. Timeouts are fractions of a second; nothing sleeps."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from livekit import rtc
from livekit.agents import (
    Agent,
    AgentSession,
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    RunContext,
    function_tool,
)
from livekit.agents.llm import ChatChunk, ChatContext, FunctionCall, FunctionCallOutput
from livekit.plugins import openai

from src.sandbox.base import FaultKind
from src.sandbox.data import SANDBOX_CREDENTIALS, TRIAL_USERS
from src.sandbox.openai_server import (
    STAND_IN_NOTICE,
    OpenAIServer,
    ToolCall,
    ToolOutput,
    Turn,
    default_turn,
    keyword_tools,
)

KEY = SANDBOX_CREDENTIALS["OPENAI_API_KEY"]
JANE = TRIAL_USERS[0].email
NO_RETRY = APIConnectOptions(max_retry=0, timeout=1.0)
SHORT = APIConnectOptions(max_retry=0, timeout=0.3)
USAGE_TEXT = "You have created 14 documents and sent 9 of them."


@function_tool
async def get_trial_usage(email: str | None = None) -> str:
    """Look up the caller's PandaDoc trial usage."""
    return USAGE_TEXT


@function_tool
async def book_demo(option: int) -> str:
    """Book demo slot number ``option``."""
    return f"Booked option {option}."


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer() as srv:
        yield srv


@pytest.fixture
async def llm(server: OpenAIServer) -> AsyncIterator[openai.LLM]:
    model = openai.LLM(model="gpt-4o-mini", base_url=f"{server.base_url}/v1", api_key=KEY)
    yield model
    await model.aclose()


def user_says(text: str) -> ChatContext:
    ctx = ChatContext.empty()
    ctx.add_message(role="system", content="You help PandaDoc trialists.")
    ctx.add_message(role="user", content=text)
    return ctx


async def chunks_of(
    llm: openai.LLM, ctx: ChatContext, tools: list[Any] | None = None, **kw: Any
) -> list[ChatChunk]:
    return [chunk async for chunk in llm.chat(chat_ctx=ctx, tools=tools or [], **kw)]


def text_of(chunks: list[ChatChunk]) -> str:
    return "".join(c.delta.content for c in chunks if c.delta and c.delta.content)


# -- scripted turns through the real plugin ---------------------------------------------------


async def test_scripted_text_streams_in_pieces_with_usage(
    server: OpenAIServer, llm: openai.LLM
) -> None:
    reply = "Hi Jane, you have seven days left on your trial. Want a quick demo?"
    server.script.append(Turn(text=reply))

    chunks = await chunks_of(llm, user_says("hello"), conn_options=NO_RETRY)

    content = [c for c in chunks if c.delta and c.delta.content]
    assert text_of(chunks) == reply
    assert len(content) > 2  # streamed, not one blob
    assert any(c.usage and c.usage.total_tokens > 0 for c in chunks)
    assert not server.script  # the turn was consumed


async def test_scripted_tool_calls_arrive_whole(server: OpenAIServer, llm: openai.LLM) -> None:
    server.script.append(
        Turn(
            tool_calls=[
                ToolCall("get_trial_usage", {"email": JANE}),
                ToolCall("book_demo", {"option": 2}, id="call_fixed"),
            ]
        )
    )

    response = await llm.chat(
        chat_ctx=user_says("usage?"), tools=[get_trial_usage, book_demo], conn_options=NO_RETRY
    ).collect()

    assert [(c.name, json.loads(c.arguments)) for c in response.tool_calls] == [
        ("get_trial_usage", {"email": JANE}),
        ("book_demo", {"option": 2}),
    ]
    assert response.tool_calls[1].call_id == "call_fixed"
    assert response.text == ""
    sent_tools = [t["function"]["name"] for t in server.last_request["tools"]]
    assert sent_tools == ["get_trial_usage", "book_demo"]


async def test_wire_format_matches_openai_stream(server: OpenAIServer) -> None:
    server.say(Turn(tool_calls=[ToolCall("get_trial_usage", {"email": JANE})]))
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "usage"}],
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.base_url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {KEY}"},
        ) as resp,
    ):
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()

    lines = [line for line in raw.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert {e["object"] for e in events} == {"chat.completion.chunk"}
    assert len({e["id"] for e in events}) == 1
    first = events[0]["choices"][0]["delta"]
    assert first["role"] == "assistant"
    assert first["tool_calls"][0] == {
        "index": 0,
        "id": first["tool_calls"][0]["id"],
        "type": "function",
        "function": {"name": "get_trial_usage", "arguments": ""},
    }
    pieces = [
        e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for e in events[1:-2]
    ]
    assert len(pieces) > 1 and json.loads("".join(pieces)) == {"email": JANE}
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] > 0
    assert all(e["usage"] is None for e in events[:-1])


async def test_non_streaming_request_gets_one_completion(server: OpenAIServer) -> None:
    server.say("Plain answer.")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{server.base_url}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {KEY}"},
        ) as resp,
    ):
        completion = await resp.json()
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == "Plain answer."
    assert completion["choices"][0]["finish_reason"] == "stop"


async def test_model_receives_tool_outputs_and_speaks_them(
    server: OpenAIServer, llm: openai.LLM
) -> None:
    ctx = user_says("How is my trial going?")
    ctx.insert(
        [
            FunctionCall(call_id="call_1", name="get_trial_usage", arguments="{}"),
            FunctionCallOutput(
                call_id="call_1", name="get_trial_usage", output=USAGE_TEXT, is_error=False
            ),
        ]
    )

    chunks = await chunks_of(llm, ctx, tools=[get_trial_usage], conn_options=NO_RETRY)

    assert server.tool_outputs() == [ToolOutput("get_trial_usage", "call_1", USAGE_TEXT)]
    assert text_of(chunks) == USAGE_TEXT


# -- the default keyword script ---------------------------------------------------------------


# The parameters as LiveKit describes the agent's tools (the script reads types from them).
_PARAMETERS: dict[str, dict[str, Any]] = {
    "email": {"type": "string", "default": ""},
    "option": {"type": "integer"},
    "summary": {"type": "string"},
    "interest": {"type": "string", "enum": ["low", "medium", "high"], "default": "medium"},
}


def _schema(*properties: str) -> dict[str, Any]:
    return {"type": "object", "properties": {p: _PARAMETERS[p] for p in properties}}


ALL_TOOLS = [
    {"type": "function", "function": {"name": "get_trial_usage", "parameters": _schema("email")}},
    {"type": "function", "function": {"name": "lookup_account", "parameters": _schema("email")}},
    {"type": "function", "function": {"name": "check_demo_availability", "parameters": _schema()}},
    {"type": "function", "function": {"name": "book_demo", "parameters": _schema("option")}},
    {
        "type": "function",
        "function": {"name": "log_call_summary", "parameters": _schema("summary", "interest")},
    },
]


def _ask(text: str, tools: list[dict[str, Any]] = ALL_TOOLS) -> Turn:
    return default_turn({"messages": [{"role": "user", "content": text}], "tools": tools})


@pytest.mark.parametrize(
    ("said", "tool", "arguments"),
    [
        ("How many documents have I sent?", "get_trial_usage", {}),
        (f"Show my trial usage for {JANE}", "get_trial_usage", {"email": JANE}),
        ("Who am I in your CRM?", "lookup_account", {}),
        (f"Find the account record for {JANE}.", "lookup_account", {"email": JANE}),
        ("What times are available for a demo?", "check_demo_availability", {}),
        ("Please book the second one", "book_demo", {"option": 2}),
        ("Option 3 works", "book_demo", {"option": 3}),
        ("Schedule it", "book_demo", {"option": 1}),
        (
            "Log a note that I loved templates",
            "log_call_summary",
            {"summary": "Log a note that I loved templates", "interest": "medium"},
        ),
    ],
)
def test_default_script_calls_the_matching_tool(
    said: str, tool: str, arguments: dict[str, Any]
) -> None:
    turn = _ask(said)
    assert [(c.name, c.arguments) for c in turn.tool_calls] == [(tool, arguments)]
    assert turn.text == ""


def test_default_script_only_calls_offered_tools_and_only_declared_arguments() -> None:
    both = _ask("Can I book a demo?")  # matches two rows: the earlier one wins
    assert [c.name for c in both.tool_calls] == ["book_demo"]
    without_booking = [t for t in ALL_TOOLS if t["function"]["name"] != "book_demo"]
    fallback = _ask("Can I book a demo?", tools=without_booking)
    assert [c.name for c in fallback.tool_calls] == ["check_demo_availability"]

    no_tools = _ask(f"What's my trial usage, {JANE}?", tools=[])
    assert not no_tools.tool_calls and STAND_IN_NOTICE in no_tools.text

    bare = [{"type": "function", "function": {"name": "get_trial_usage"}}]
    assert _ask(f"usage for {JANE}", tools=bare).tool_calls[0].arguments == {}


@pytest.mark.parametrize(("tool", "keywords"), keyword_tools())
def test_every_keyword_reaches_its_tool(tool: str, keywords: tuple[str, ...]) -> None:
    offered = [t for t in ALL_TOOLS if t["function"]["name"] == tool]
    for word in keywords:
        assert [c.name for c in _ask(f"About the {word.upper()}?", offered).tool_calls] == [tool]


def test_default_script_without_keywords_explains_itself() -> None:
    turn = _ask("Tell me a joke")
    assert STAND_IN_NOTICE in turn.text
    assert "trial usage" in turn.text and "booking a demo option" in turn.text
    assert not turn.tool_calls


@pytest.mark.parametrize(
    ("outputs", "spoken"),
    [
        (['{"documents_created": 14, "documents_sent": 9}'], "documents created 14"),
        (['{"message": "Booked Tuesday at 3 PM."}'], "Booked Tuesday at 3 PM."),
        (["One. Two. Three. Four."], "One. Two."),
        (["Slots: first.", "Booked."], "Slots: first. Booked."),
    ],
)
def test_default_script_speaks_tool_results_plainly(outputs: list[str], spoken: str) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    messages += [
        {"role": "tool", "tool_call_id": f"c{i}", "content": o} for i, o in enumerate(outputs)
    ]
    text = default_turn({"messages": messages}).text
    assert text.startswith(spoken)
    assert not set(text) & set('{}[]"')


async def test_default_script_end_to_end(server: OpenAIServer, llm: openai.LLM) -> None:
    response = await llm.chat(
        chat_ctx=user_says(f"What does my trial usage look like? I'm {JANE}"),
        tools=[get_trial_usage],
        conn_options=NO_RETRY,
    ).collect()

    assert [(c.name, json.loads(c.arguments)) for c in response.tool_calls] == [
        ("get_trial_usage", {"email": JANE})
    ]


# -- faults surface as livekit's errors -------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        (FaultKind.SERVER_ERROR, APIStatusError),
        (FaultKind.RATE_LIMITED, APIStatusError),
        (FaultKind.REFUSE, APIConnectionError),
        (FaultKind.HANG, APITimeoutError),
    ],
)
async def test_faults_raise_livekit_errors(
    server: OpenAIServer, llm: openai.LLM, kind: FaultKind, error: type[Exception]
) -> None:
    server.inject("/v1/chat/completions", kind, count=1)

    with pytest.raises(error) as raised:
        await chunks_of(llm, user_says("hi"), conn_options=SHORT)

    if isinstance(raised.value, APIStatusError):
        assert raised.value.status_code == int(kind.value)
    assert server.requests_seen == []  # the fault answered, not the model
    assert text_of(await chunks_of(llm, user_says("hi"), conn_options=SHORT))  # count=1: healed


async def test_server_down_is_a_connection_error(server: OpenAIServer, llm: openai.LLM) -> None:
    await server.go_down()
    with pytest.raises(APIConnectionError):
        await chunks_of(llm, user_says("hi"), conn_options=SHORT)


async def test_stall_after_first_chunk_times_out_mid_stream(
    server: OpenAIServer, llm: openai.LLM
) -> None:
    server.stall_after_first_chunk(count=1)
    server.say("First words then a long silence that never ends.")
    received: list[str] = []

    with pytest.raises(APITimeoutError) as raised:
        async for chunk in llm.chat(chat_ctx=user_says("hi"), conn_options=SHORT):
            if chunk.delta and chunk.delta.content:
                received.append(chunk.delta.content)

    assert received == ["First words then "]
    assert raised.value.retryable is False  # text already went out: livekit must not retry
    server.say("Back again.")
    assert text_of(await chunks_of(llm, user_says("hi"), conn_options=SHORT)) == "Back again."


async def test_wrong_key_is_401_in_openai_shape(server: OpenAIServer) -> None:
    wrong = openai.LLM(model="gpt-4o-mini", base_url=f"{server.base_url}/v1", api_key="sk-wrong")
    try:
        with pytest.raises(APIStatusError) as raised:
            await chunks_of(wrong, user_says("hi"), conn_options=NO_RETRY)
    finally:
        await wrong.aclose()
    assert raised.value.status_code == 401
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["code"] == "invalid_api_key"
    assert "sk-wrong" not in json.dumps(raised.value.body)


# -- speech and transcription -----------------------------------------------------------------


async def _speak(server: OpenAIServer, text: str, **options: Any) -> float:
    tts = openai.TTS(
        base_url=f"{server.base_url}/v1", api_key=options.pop("api_key", KEY), **options
    )
    try:
        frames = [event.frame async for event in tts.synthesize(text, conn_options=NO_RETRY)]
    finally:
        await tts.aclose()
    assert all(f.sample_rate == 24_000 and f.num_channels == 1 for f in frames)
    return sum(f.duration for f in frames)


@pytest.mark.parametrize("options", [{"response_format": "pcm"}, {}, {"response_format": "wav"}])
async def test_tts_audio_lasts_with_the_text(server: OpenAIServer, options: dict[str, str]) -> None:
    short, long = "Hello there.", "Let me check your trial usage for you right now."

    short_s = await _speak(server, short, **options)
    long_s = await _speak(server, long, **options)

    assert short_s == pytest.approx(server.speech_duration(short), abs=0.02)
    assert long_s == pytest.approx(server.speech_duration(long), abs=0.02)
    assert long_s > 3 * short_s > 0
    requested = {r.body["response_format"] for r in server.requests("/v1/audio/speech")}
    assert requested == {options.get("response_format", "mp3")}


async def test_tts_wrong_key_is_401(server: OpenAIServer) -> None:
    with pytest.raises(APIStatusError) as raised:
        await _speak(server, "Hello", api_key="sk-wrong", response_format="pcm")
    assert raised.value.status_code == 401


async def test_stt_returns_scripted_transcripts(server: OpenAIServer) -> None:
    server.transcripts.append("book the second option")
    stt = openai.STT(base_url=f"{server.base_url}/v1", api_key=KEY)
    frame = rtc.AudioFrame(
        b"\0\0" * 2400, sample_rate=24_000, num_channels=1, samples_per_channel=2400
    )
    try:
        event = await stt.recognize([frame], conn_options=NO_RETRY)
    finally:
        await stt.aclose()
    assert event.alternatives[0].text == "book the second option"


# -- a whole AgentSession turn ----------------------------------------------------------------


class TrialAgent(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="You help PandaDoc trialists.")

    @function_tool
    async def get_trial_usage(self, context: RunContext, email: str | None = None) -> str:
        """Look up the caller's PandaDoc trial usage."""
        return USAGE_TEXT


async def test_agent_session_runs_against_the_sandbox(
    server: OpenAIServer, llm: openai.LLM
) -> None:
    async with AgentSession(llm=llm) as session:
        await session.start(TrialAgent())

        hello = await session.run(user_input="hello")
        hello.expect.next_event().is_message(role="assistant")
        hello.expect.no_more_events()

        usage = await session.run(user_input="How is my trial usage?")
        usage.expect.next_event().is_function_call(name="get_trial_usage")
        usage.expect.next_event().is_function_call_output(output=USAGE_TEXT)
        message = usage.expect.next_event().is_message(role="assistant").event().item
        assert message.text_content == USAGE_TEXT

    assert server.tool_outputs()[0].content == USAGE_TEXT


def test_default_turn_answers_the_tool_result_behind_filler_speech() -> None:
    from src.sandbox.openai_server import default_turn

    body = {
        "messages": [
            {"role": "user", "content": "how is my usage?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_trial_usage", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "You've created two documents."},
            {"role": "assistant", "content": "One moment while I pull that up."},
        ]
    }
    assert "two documents" in default_turn(body).text
