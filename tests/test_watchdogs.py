"""Model watchdogs: a late first token gets a filler, a stream that stalls mid-answer is
closed with a natural sentence (unit, then through a real AgentSession on the stand-in)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from livekit.agents import APIConnectionError
from livekit.agents.llm import ChatMessage
from livekit.agents.stt import STTError
from livekit.agents.voice.events import ErrorEvent
from livekit.plugins import openai

from src.drill.harness import Conversation
from src.phrases import (
    GOODBYE,
    MODEL_STALL_BRIDGE,
    MODEL_STALL_REPAIR,
    MODEL_WAIT_FILLER,
    TROUBLE_HEARING,
)
from src.sandbox import FaultKind
from src.sandbox.data import SANDBOX_CREDENTIALS
from src.watchdogs import watch_llm, watch_tts

FAST = {"first_token_timeout": 0.05, "stall_timeout": 0.05}


class Source:
    """An async stream that waits on events the test controls."""

    def __init__(self, *chunks: str) -> None:
        self.chunks = list(chunks)
        self.release: list[asyncio.Event] = [asyncio.Event() for _ in chunks]
        self.closed = False

    async def stream(self) -> AsyncIterator[str]:
        try:
            for chunk, gate in zip(self.chunks, self.release, strict=True):
                await gate.wait()
                yield chunk
        finally:
            self.closed = True


async def collect(it: AsyncIterator[Any]) -> list[Any]:
    return [chunk async for chunk in it]


async def test_prompt_stream_passes_through_untouched() -> None:
    src = Source("Hello", " there.")
    for gate in src.release:
        gate.set()
    assert await collect(watch_llm(src.stream(), **FAST)) == ["Hello", " there."]


async def test_late_first_token_gets_one_filler_then_the_answer() -> None:
    src = Source("Sure,", " here it is.")
    out: list[Any] = []

    async def read() -> None:
        async for chunk in watch_llm(src.stream(), **FAST):
            out.append(chunk)
            if chunk.startswith(MODEL_WAIT_FILLER):
                for gate in src.release:  # the model answers after the filler
                    gate.set()

    await asyncio.wait_for(read(), 5.0)
    assert out == [MODEL_WAIT_FILLER + " ", "Sure,", " here it is."]


async def test_mid_stream_stall_closes_the_reply_naturally() -> None:
    src = Source("Let me check th", "at for you.")
    src.release[0].set()  # the second chunk never comes
    out = await asyncio.wait_for(collect(watch_llm(src.stream(), **FAST)), 5.0)
    assert out == ["Let me check th", " " + MODEL_STALL_BRIDGE, " " + MODEL_STALL_REPAIR]
    assert src.closed  # the stalled model stream was closed, not left running


async def test_a_quiet_stream_that_resumes_is_not_cut() -> None:
    """LiveKit's OpenAI stream is silent while a tool call's arguments arrive: a pause
    after the first words gets a bridge, and what follows (the tool call) still comes."""
    src = Source("Let me save that for you.", "<tool call>")
    src.release[0].set()
    out: list[Any] = []

    async def read() -> None:
        async for chunk in watch_llm(src.stream(), **FAST, give_up_timeout=5.0):
            out.append(chunk)
            if chunk == " " + MODEL_STALL_BRIDGE:
                src.release[1].set()  # the arguments are complete: the call arrives

    await asyncio.wait_for(read(), 5.0)
    assert out == ["Let me save that for you.", " " + MODEL_STALL_BRIDGE, "<tool call>"]


async def test_model_errors_still_surface() -> None:
    async def broken() -> AsyncIterator[str]:
        yield "Hel"
        raise ConnectionError("reset")

    try:
        await collect(watch_llm(broken(), **FAST))
    except ConnectionError:
        pass
    else:  # pragma: no cover - the assertion message
        raise AssertionError("the model's error was swallowed")


# -- through a real AgentSession ----------------------------------------------------------

OVERRIDES: dict[str, Any] = {
    "service_timeout": 0.3,
    "tool_deadline": 1.0,
    "jitter": False,
    "llm_timeout": 1.0,
    "model_retry_interval": 0.05,
    "llm_first_token_timeout": 0.2,
    "llm_stall_timeout": 0.2,
}


async def test_model_that_sends_nothing_first_gets_a_filler() -> None:
    """The first attempt is accepted and gets no answer: the caller hears the filler
    long before LiveKit's attempt timeout, then the retried answer."""
    async with Conversation(overrides=OVERRIDES, skip_sleeps=True) as conv:
        conv.sandbox.openai.inject("/v1/chat/completions", FaultKind.HANG, count=1)
        conv.sandbox.openai.say("Hello! How can I help with your trial?")
        turn = await conv.turn("hello there")
        assert turn.failure is None
        spoken = turn.spoken
        assert spoken.startswith(MODEL_WAIT_FILLER), turn.said
        assert "How can I help" in spoken


async def test_mid_stream_stall_is_closed_and_reads_as_unfinished() -> None:
    async with Conversation(overrides=OVERRIDES, skip_sleeps=True) as conv:
        conv.sandbox.openai.stall_after_first_chunk(1)
        conv.sandbox.openai.say("Let me check that for you right now.")
        turn = await conv.turn("hello there")
        assert turn.failure is None
        assert turn.said and turn.said[-1].endswith(MODEL_STALL_REPAIR), turn.said
        # What the model reads next turn: the fragment is followed by the repair.
        conv.sandbox.openai.say("Of course.")
        await conv.turn("how is it going")
        messages = conv.sandbox.openai.last_request["messages"]
        assistant = [m for m in messages if m.get("role") == "assistant" and m.get("content")]
        assert any(MODEL_STALL_REPAIR in str(m["content"]) for m in assistant)
        history = [i for i in conv.session.history.items if isinstance(i, ChatMessage)]
        assert any(MODEL_STALL_REPAIR in (i.text_content or "") for i in history)


# -- TTS ------------------------------------------------------------------------------------


async def text_stream(*pieces: str, gap: float = 0.0) -> AsyncIterator[str]:
    for piece in pieces:
        if gap:
            await asyncio.sleep(gap)
        yield piece


def tts_that(stall_after: int | None) -> Any:
    """A fake TTS: one frame per text piece received (``"a:<text>"``); with
    ``stall_after``, it sends that many frames and then nothing, ever."""

    async def synthesize(text: AsyncIterator[str]) -> AsyncIterator[str]:
        sent = 0
        async for piece in text:
            if stall_after is not None and sent >= stall_after:
                await asyncio.Event().wait()
            sent += 1
            yield f"a:{piece}"

    return synthesize


async def rescue() -> AsyncIterator[str]:
    yield "apology-1"
    yield "apology-2"


async def test_healthy_tts_passes_through() -> None:
    out = await asyncio.wait_for(
        collect(
            watch_tts(
                text_stream("Hi.", " There."),
                tts_that(None),
                no_audio_timeout=0.1,
                rescue=rescue,
            )
        ),
        5.0,
    )
    assert out == ["a:Hi.", "a: There."]


async def test_stalled_tts_is_replaced_by_the_rescue_audio() -> None:
    started = asyncio.get_running_loop().time()
    out = await asyncio.wait_for(
        collect(
            watch_tts(
                text_stream("Hi.", " There."),
                tts_that(stall_after=1),
                no_audio_timeout=0.1,
                rescue=rescue,
            )
        ),
        5.0,
    )
    assert out == ["a:Hi.", "apology-1", "apology-2"]
    assert asyncio.get_running_loop().time() - started < 2.0  # upper bound only


async def test_without_rescue_audio_a_slow_tts_is_not_cut_into_silence() -> None:
    """No pre-rendered audio yet (the greeting, or a failed pre-render): dropping the
    stream would be silence LiveKit takes for a finished reply, so it is left alone."""

    async def slow(text: AsyncIterator[str]) -> AsyncIterator[str]:
        async for piece in text:
            await asyncio.sleep(0.2)  # twice the watchdog's timeout, then audio
            yield f"a:{piece}"

    out = await asyncio.wait_for(
        collect(watch_tts(text_stream("Hi.", " There."), slow, no_audio_timeout=0.1)), 5.0
    )
    assert out == ["a:Hi.", "a: There."]


async def test_slow_text_does_not_trip_the_tts_watchdog() -> None:
    """No text yet (the model is thinking) is not a TTS stall."""
    out = await asyncio.wait_for(
        collect(
            watch_tts(
                text_stream("Hi.", gap=0.3),
                tts_that(None),
                no_audio_timeout=0.1,
                rescue=rescue,
            )
        ),
        5.0,
    )
    assert out == ["a:Hi."]


async def test_stalled_tts_in_a_real_session_plays_the_rescue_audio() -> None:
    """Production TTS against the stand-in, whose speech stream stops after its first
    chunk: the session's audio output gets the pre-rendered apology, not silence until
    the plugin's own read timeout."""
    overrides = {**OVERRIDES, "tts_no_audio_timeout": 0.3, "tts_timeout": 5.0}
    async with Conversation(overrides=overrides, skip_sleeps=True, audio=True) as conv:
        sink, rescue = conv.audio_sink, conv.agent.tts_rescue
        assert sink is not None and rescue is not None and rescue.frames
        conv.sandbox.openai.stall_after_first_chunk(endpoint="/v1/audio/speech")
        conv.sandbox.openai.say("Happy to help with your trial.")
        before = len(sink.arrivals)
        turn = await conv.turn("hello there")
        assert turn.failure is None
        assert turn.first_audio_s is not None
        assert len(sink.arrivals) - before == len(rescue.frames)  # the apology, whole
        assert turn.total_s < 4.0  # upper bound: far below the 5 s attempt timeout


async def test_stt_failures_say_so_then_the_goodbye_logic_still_ends_the_call() -> None:
    """Each unrecoverable STT failure makes the agent say it has trouble hearing; at
    MAX_UNRECOVERABLE_ERRORS in a row it says goodbye and ends the session, as before."""
    overrides = {**OVERRIDES, "max_unrecoverable_errors": 2}
    async with Conversation(overrides=overrides, skip_sleeps=True) as conv:
        stt = openai.STT(
            base_url=conv.sandbox.env()["OPENAI_BASE_URL"],
            api_key=SANDBOX_CREDENTIALS["OPENAI_API_KEY"],
        )
        closed = asyncio.Event()
        conv.session.on("close", lambda _: closed.set())
        before = len(conv.assistant_history())

        def fail() -> None:
            error = STTError(
                timestamp=time.time(),
                label=stt.label,
                error=APIConnectionError(),
                recoverable=False,
            )
            conv.session.emit("error", ErrorEvent(error=error, source=stt))

        fail()
        for _ in range(200):  # the sentence is spoken by a task; wait for it
            if len(conv.assistant_history()) > before:
                break
            await asyncio.sleep(0.01)
        fail()
        await asyncio.wait_for(closed.wait(), 5.0)
        said = conv.assistant_history()[before:]
        assert said[0].startswith(TROUBLE_HEARING), said
        assert said[-1] == GOODBYE, said
