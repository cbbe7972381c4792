"""Watchdogs on the model streams, so a stalled model never leaves the caller in silence.

LiveKit's per-attempt timeouts (``LLM_TIMEOUT``) are between bytes and only end an attempt
after seconds; a model that accepts the request and sends nothing, or stops mid-sentence,
would keep the caller waiting that long. :func:`watch_llm` sits in the agent's
``llm_node`` between the model and the speech:

* **first token**: no chunk ``LLM_FIRST_TOKEN_TIMEOUT`` seconds after the request, the
  caller hears :data:`~src.phrases.MODEL_WAIT_FILLER` while the model (and LiveKit's retry
  or ``FallbackAdapter``) keeps going. A model that stays dead ends, as before, in
  LiveKit's error event and the spoken apology (``SessionErrorHandler``).
* **stall**: after the first chunk, no chunk for ``LLM_STALL_TIMEOUT`` seconds and the
  caller hears :data:`~src.phrases.MODEL_STALL_BRIDGE`; the stream is given up to
  ``LLM_TIMEOUT`` more (LiveKit's OpenAI stream is silent while a tool call's arguments
  arrive, and such a call must not be dropped). Still nothing: the stream is closed and
  :data:`~src.phrases.MODEL_STALL_REPAIR` is said, so the half sentence is closed
  naturally and reads to the model as unfinished.

:func:`watch_tts` sits in the agent's ``tts_node``: once the TTS owes audio (it has text
and has not finished) and sends none for ``TTS_NO_AUDIO_TIMEOUT`` seconds, the stalled
stream is dropped and the ``rescue`` audio is played instead (the pre-rendered apology),
rather than waiting for the plugin's own read timeout (30 s for OpenAI). Without rescue
audio (not rendered yet) the stream is left to the TTS's own timeout and fallback, since
dropping it would be silence LiveKit takes for a finished reply.

The clock is the event loop's (``asyncio.wait`` timeouts); tests shrink the timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, TypeVar

from src.phrases import MODEL_STALL_BRIDGE, MODEL_STALL_REPAIR, MODEL_WAIT_FILLER
from src.redaction import get_logger

__all__ = ["watch_llm", "watch_tts"]

logger = get_logger("pandadoc.watchdogs")

T = TypeVar("T")


async def watch_llm(
    chunks: AsyncIterable[T],
    *,
    first_token_timeout: float,
    stall_timeout: float,
    give_up_timeout: float | None = None,
    filler: str = MODEL_WAIT_FILLER,
    bridge: str = MODEL_STALL_BRIDGE,
    repair: str = MODEL_STALL_REPAIR,
) -> AsyncIterator[T | str]:
    """``chunks`` passed through, with a spoken filler when the first one is late; when
    the stream goes quiet after it started, a short bridge ("One moment.") and a further
    wait of ``give_up_timeout`` seconds (default: ``stall_timeout``) before the reply is
    closed with ``repair`` (see the module doc). The wait matters: LiveKit's OpenAI
    stream sends nothing while a tool call's arguments arrive, so a quiet stream may be a
    long tool call on its way, which must not be dropped."""
    iterator = aiter(chunks)
    pending: asyncio.Task[Any] | None = None
    started = False
    filled = False
    bridged = False
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            if not started:
                timeout: float | None = None if filled else first_token_timeout
            elif bridged:
                timeout = stall_timeout if give_up_timeout is None else give_up_timeout
            else:
                timeout = stall_timeout
            done, _ = await asyncio.wait({pending}, timeout=timeout)
            if not done:
                if not started:
                    logger.warning(
                        "Model sent nothing for %.1fs; the caller hears a filler", timeout
                    )
                    filled = True
                    yield filler + " "
                    continue
                if not bridged:
                    logger.warning(
                        "Model stream quiet for %.1fs mid-answer; the caller hears a bridge",
                        timeout,
                    )
                    bridged = True
                    yield " " + bridge
                    continue
                logger.warning("Model stream stalled mid-answer; the reply is closed")
                yield " " + repair
                return
            task, pending = pending, None
            try:
                chunk = task.result()
            except StopAsyncIteration:
                return
            except Exception as exc:
                if not bridged:
                    raise
                # The caller heard "One moment." and the model then failed (LiveKit's own
                # timeout): close the half answer naturally rather than leave it hanging.
                logger.warning("Model stream failed after a stall (%s)", type(exc).__name__)
                yield " " + repair
                return
            started = True
            bridged = False  # it came back: a later pause gets its own bridge
            yield chunk
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
        closer = getattr(iterator, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


F = TypeVar("F")


async def watch_tts(
    text: AsyncIterable[str],
    synthesize: Callable[[AsyncIterable[str]], AsyncIterable[F]],
    *,
    no_audio_timeout: float,
    rescue: Callable[[], AsyncIterable[F]] | None = None,
) -> AsyncIterator[F]:
    """Frames of ``synthesize(text)``; when the TTS owes audio and sends none for
    ``no_audio_timeout`` seconds, the rest of its stream is dropped and ``rescue()``'s
    frames are played instead. Without rescue audio the stream passes through untouched.

    "Owes audio": text has arrived and the stream has not ended. The timer restarts on
    every frame and every piece of text, so a slow model (its own watchdog speaks) or a
    pause between sentences does not trip it."""
    if rescue is None:
        # Nothing to play instead: dropping the stream would be silence that LiveKit takes
        # for a finished reply. The TTS's own timeout (and fallback adapter) decide.
        async for frame in synthesize(text):
            yield frame
        return
    loop = asyncio.get_running_loop()
    last_activity = loop.time()
    got_text = False
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def pump() -> None:
        nonlocal last_activity, got_text
        try:
            async for piece in text:
                got_text = got_text or bool(piece.strip())
                last_activity = loop.time()
                queue.put_nowait(piece)
        finally:
            queue.put_nowait(None)

    async def forwarded() -> AsyncIterator[str]:
        while (piece := await queue.get()) is not None:
            yield piece

    pumping = asyncio.create_task(pump())
    frames = aiter(synthesize(forwarded()))
    pending: asyncio.Task[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(frames))
            wait = no_audio_timeout
            if got_text:
                wait = max(0.0, last_activity + no_audio_timeout - loop.time())
            done, _ = await asyncio.wait({pending}, timeout=wait)
            if done:
                task, pending = pending, None
                try:
                    frame = task.result()
                except StopAsyncIteration:
                    return
                last_activity = loop.time()
                yield frame
                continue
            if got_text and loop.time() - last_activity >= no_audio_timeout:
                logger.warning(
                    "TTS sent no audio for %.1fs; playing the rescue audio instead",
                    no_audio_timeout,
                )
                break
        if rescue is not None:
            async for frame in rescue():
                yield frame
    finally:
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pumping
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
        closer = getattr(frames, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()
