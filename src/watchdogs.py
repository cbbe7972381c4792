"""Watchdogs on the model streams, so a stalled model never leaves the caller in silence.

LiveKit's per-attempt timeouts (``LLM_TIMEOUT``) are between bytes and only end an attempt
after seconds; a model that accepts the request and sends nothing, or stops mid-sentence,
would keep the caller waiting that long. :func:`watch_llm` sits in the agent's
``llm_node`` between the model and the speech:

* **first token**: no chunk ``LLM_FIRST_TOKEN_TIMEOUT`` seconds after the request, the
  caller hears :data:`~src.phrases.MODEL_WAIT_FILLER` while the model keeps going. Still
  nothing ``LLM_SWITCH_TIMEOUT`` seconds later and a fallback model is configured: the
  silent stream is abandoned for the fallback model (LiveKit's ``FallbackAdapter`` does
  not switch on a stream that opened and then sent nothing). Still no model answering
  ``LLM_ANSWER_TIMEOUT`` seconds after the filler: the agent reports an unrecoverable
  model error, and the session's handler says the apology (``SessionErrorHandler``), so
  the caller never waits out LiveKit's own timeouts in silence.
* **stall**: after the first chunk, no chunk for ``LLM_STALL_TIMEOUT`` seconds and the
  caller hears :data:`~src.phrases.MODEL_STALL_BRIDGE`; the stream is given up to
  ``LLM_ANSWER_TIMEOUT`` more (LiveKit's OpenAI stream is silent while a tool call's
  arguments arrive, and such a call must not be dropped). Still nothing: the stream is
  closed and :data:`~src.phrases.MODEL_STALL_REPAIR` is said, so the half sentence is
  closed naturally and reads to the model as unfinished.

:func:`watch_tts` sits in the agent's ``tts_node``: once the TTS owes audio (it has text
and has not finished) and sends none for ``TTS_NO_AUDIO_TIMEOUT`` seconds, the stalled
stream is dropped and the ``rescue`` audio is played instead (the pre-rendered apology),
rather than waiting for the plugin's own read timeout (30 s for OpenAI). Without rescue
audio (not rendered yet) the stream is left to the TTS's own timeout and fallback, since
dropping it would be silence LiveKit takes for a finished reply.

:func:`watch_llm` keeps one timer, re-armed by moving its deadline on each chunk; its
clock is the event loop's, or one a test passes. The stream is read by one task of its
own: a due timer cannot interrupt a read in the reader's task, since cancelling it would
close LiveKit's stream (its chunks pass through async generators, ``aio.itertools.tee``).
:func:`watch_tts` waits with ``asyncio.wait`` timeouts; tests shrink them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, TypeVar

from src.phrases import MODEL_STALL_BRIDGE, MODEL_STALL_REPAIR, MODEL_WAIT_FILLER
from src.redaction import get_logger

__all__ = ["watch_llm", "watch_tts"]

logger = get_logger("pandadoc.watchdogs")

T = TypeVar("T")


class _Timer:
    """One timer for a whole stream. Arming moves a deadline (an assignment per chunk);
    the loop's timer is only scheduled again when it fires before the deadline, so a
    steady stream costs no timer handle per chunk. When due it calls ``fire``."""

    __slots__ = ("_call_later", "_clock", "_fire", "_handle", "_handle_at", "deadline")

    def __init__(
        self,
        fire: Callable[[], None],
        *,
        clock: Callable[[], float],
        call_later: Callable[[float, Callable[[], None]], Any],
    ) -> None:
        self._fire = fire
        self._clock = clock
        self._call_later = call_later
        self._handle: Any = None
        self._handle_at = 0.0
        self.deadline: float | None = None

    def arm(self, seconds: float | None) -> None:
        """Due ``seconds`` from now (``None``: never)."""
        if seconds is None:
            self.deadline = None
            return
        self.deadline = self._clock() + seconds
        if self._handle is None or self._handle_at > self.deadline:
            self._schedule(self.deadline)

    def due(self) -> bool:
        return self.deadline is not None and self._clock() >= self.deadline

    def cancel(self) -> None:
        self.deadline = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle_at = at
        self._handle = self._call_later(max(0.0, at - self._clock()), self._on_time)

    def _on_time(self) -> None:
        self._handle = None
        if self.deadline is None:
            return
        if self._clock() < self.deadline:  # re-armed since: sleep on
            self._schedule(self.deadline)
            return
        self._fire()


_TICK = object()  # the timer is due
_END = object()  # the stream ended


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


class _Pump:
    """Reads one stream in one task of its own (not a task and a wait per chunk) into a
    deque the watcher takes from; a due timer adds a tick. One future at a time wakes
    the watcher (lighter than an ``asyncio.Queue`` per chunk)."""

    __slots__ = ("_waiter", "items", "iterator", "task")

    def __init__(self, chunks: AsyncIterable[Any]) -> None:
        self.items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self.iterator = aiter(chunks)
        self.task = asyncio.create_task(self._run())

    def put(self, item: Any) -> None:
        self.items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _run(self) -> None:
        put = self.put
        try:
            while True:
                put(await anext(self.iterator))
        except StopAsyncIteration:
            put(_END)
        except Exception as exc:
            put(_Failed(exc))

    def tick(self) -> None:
        self.put(_TICK)

    async def get(self) -> Any:
        items = self.items
        while not items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return items.popleft()

    async def aclose(self) -> None:
        if not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        closer = getattr(self.iterator, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


async def watch_llm(
    chunks: AsyncIterable[T],
    *,
    first_token_timeout: float,
    stall_timeout: float,
    give_up_timeout: float | None = None,
    answer_timeout: float | None = None,
    switch_timeout: float | None = None,
    fallback: Callable[[], AsyncIterable[T]] | None = None,
    on_give_up: Callable[[], None] | None = None,
    speaking: Callable[[], bool] | None = None,
    filler: str = MODEL_WAIT_FILLER,
    bridge: str = MODEL_STALL_BRIDGE,
    repair: str = MODEL_STALL_REPAIR,
    clock: Callable[[], float] | None = None,
    call_later: Callable[[float, Callable[[], None]], Any] | None = None,
) -> AsyncIterator[T | str]:
    """``chunks`` passed through, with a spoken filler when the first one is late; when
    the stream goes quiet after it started, a short bridge ("One moment.") and a further
    wait of ``give_up_timeout`` seconds (default: ``stall_timeout``) before the reply is
    closed with ``repair`` (see the module doc). The wait matters: LiveKit's OpenAI
    stream sends nothing while a tool call's arguments arrive, so a quiet stream may be a
    long tool call on its way, which must not be dropped.

    With ``answer_timeout``, a model that has still sent nothing that many seconds after
    the filler is given up: ``on_give_up()`` is called (the agent reports an unrecoverable
    model error, so the session's handler says the apology) and the reply ends. With a
    ``fallback`` (a stream from the next model), the silent stream is abandoned
    ``switch_timeout`` seconds after the filler and the fallback gets the rest of
    ``answer_timeout``. Without ``answer_timeout`` the model is waited for (LiveKit's own
    timeouts decide).

    ``speaking()`` says whether the caller is hearing the agent right now (a tool's
    progress sentence still playing): then the filler is not added to it; the first-token
    wait starts again (for up to ``answer_timeout`` more).

    ``clock`` and ``call_later`` (default: the event loop's) drive the one timer the
    stream has; tests pass virtual ones."""
    loop = asyncio.get_running_loop()
    source = _Pump(chunks)
    timer = _Timer(
        lambda: source.tick(),
        clock=clock or loop.time,
        call_later=call_later or loop.call_later,
    )
    stall_left = stall_timeout if give_up_timeout is None else give_up_timeout
    switch = fallback is not None and switch_timeout is not None
    if switch and answer_timeout is not None and switch_timeout is not None:
        switch = switch_timeout < answer_timeout
    started = filled = bridged = switched = False
    now = clock or loop.time
    # The filler waits for speech the caller is hearing, but not for ever.
    hold_until = now() + first_token_timeout + (answer_timeout or first_token_timeout)
    timer.arm(first_token_timeout)
    try:
        while True:
            item = await source.get()
            if item is _TICK:
                if not timer.due():
                    continue  # a chunk came first and re-armed the timer
                if not started:
                    hearing = speaking is not None and speaking()
                    if not filled and hearing and now() < hold_until:
                        timer.arm(first_token_timeout)  # not over speech: look again
                        continue
                    if not filled:
                        logger.warning(
                            "Model sent nothing for %.1fs; the caller hears a filler",
                            first_token_timeout,
                        )
                        filled = True
                        timer.arm(switch_timeout if switch else answer_timeout)
                        yield filler + " "
                        continue
                    if switch and not switched and fallback is not None:
                        logger.warning(
                            "Model sent nothing %.1fs after the filler; switching to the "
                            "fallback model",
                            switch_timeout,
                        )
                        switched = True
                        await source.aclose()  # the abandoned stream's last word unread
                        source = _Pump(fallback())
                        rest = (
                            None
                            if answer_timeout is None
                            else answer_timeout - (switch_timeout or 0.0)
                        )
                        timer.arm(rest)
                        continue
                    logger.warning(
                        "No model answered %.1fs after the filler; the caller hears the apology",
                        answer_timeout,
                    )
                    if on_give_up is not None:
                        on_give_up()
                    return
                if not bridged:
                    logger.warning(
                        "Model stream quiet for %.1fs mid-answer; the caller hears a bridge",
                        stall_timeout,
                    )
                    bridged = True
                    timer.arm(stall_left)
                    yield " " + bridge
                    continue
                logger.warning("Model stream stalled mid-answer; the reply is closed")
                yield " " + repair
                return
            if item is _END:
                return
            if isinstance(item, _Failed):
                if bridged:
                    # The caller heard "One moment." and the model then failed (LiveKit's
                    # own timeout): close the half answer naturally, not leave it hanging.
                    logger.warning(
                        "Model stream failed after a stall (%s)", type(item.exc).__name__
                    )
                    yield " " + repair
                    return
                if switched and not started:
                    # The fallback model failed on its own (the session's adapter never
                    # saw this request, so nobody else would tell the caller).
                    logger.warning(
                        "The fallback model failed before answering (%s)",
                        type(item.exc).__name__,
                    )
                    if on_give_up is not None:
                        on_give_up()
                    return
                raise item.exc
            started = True
            bridged = False  # it came back: a later pause gets its own bridge
            timer.arm(stall_timeout)
            yield item
    finally:
        timer.cancel()
        await source.aclose()


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
