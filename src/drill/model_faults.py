"""Drill steps for model faults that a text conversation cannot reach by itself.

Without a LiveKit room the session has no audio input, so its STT is never asked. The
``stt-down`` step uses the real ``openai.STT`` plugin against the downed stand-in and hands
its own unrecoverable ``STTError`` to the session's ``"error"`` event, as LiveKit's audio
pipeline does; what is measured is the agent's answer to that event.
"""

from __future__ import annotations

import asyncio
import time

from livekit import rtc
from livekit.agents.stt import STTError
from livekit.agents.voice.events import ConversationItemAddedEvent, ErrorEvent
from livekit.plugins import openai

from src.drill.harness import Conversation, TurnResult
from src.sandbox.data import SANDBOX_CREDENTIALS

__all__ = ["stt_down_turn"]


async def stt_down_turn(conv: Conversation, *, wait_s: float = 5.0) -> TurnResult:
    """Recognition fails for real; ``first_words_s`` is from the failure reaching the
    session to the agent's sentence (``total_s`` includes LiveKit's STT retries)."""
    stt = openai.STT(
        base_url=conv.sandbox.env()["OPENAI_BASE_URL"],
        api_key=SANDBOX_CREDENTIALS["OPENAI_API_KEY"],
    )
    errors: list[STTError] = []
    stt.on("error", errors.append)
    result = TurnResult(user_text="(the caller speaks; recognition fails)")
    before = len(conv.assistant_history())
    started = time.perf_counter()
    frame = rtc.AudioFrame(b"\x00\x00" * 1600, 16000, 1, 1600)
    try:
        await stt.recognize([frame], conn_options=conv.session.conn_options.stt_conn_options)
    except Exception as exc:  # expected: the endpoint is down
        result.failure = None if errors else type(exc).__name__
    if not errors:
        result.failure = result.failure or "no STT error event"
        result.total_s = time.perf_counter() - started
        return result
    spoke = asyncio.Event()

    def on_item(event: ConversationItemAddedEvent) -> None:
        if getattr(event.item, "role", None) == "assistant":
            spoke.set()

    conv.session.on("conversation_item_added", on_item)
    failed_at = time.perf_counter()
    final = errors[-1].model_copy(update={"recoverable": False})
    conv.session.emit("error", ErrorEvent(error=final, source=stt))
    try:
        await asyncio.wait_for(spoke.wait(), wait_s)
        result.first_words_s = time.perf_counter() - failed_at
        # One sentence, said whole: the caller's silence is the wait for it.
        result.longest_silence_s = result.first_words_s
    except TimeoutError:
        pass
    finally:
        conv.session.off("conversation_item_added", on_item)
    await asyncio.sleep(0.1)  # let the sentence finish landing in the history
    result.said = conv.assistant_history()[before:]
    result.total_s = time.perf_counter() - started
    return result
