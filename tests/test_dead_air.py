"""No dead air (issue #27): a slow turn's second progress sentence, the stalled-model
switch and give-up on an injected clock, the one re-armed timer of the model watchdog,
and the drill's longest-silence measure. Real-session checks use short timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

from src.drill.harness import Conversation, longest_silence
from src.phrases import APOLOGY, FILLER, GOODBYE, MODEL_WAIT_FILLER, PROGRESS
from src.sandbox import FaultKind
from src.tools.turn import TurnBook
from src.watchdogs import watch_llm

# --------------------------------------------------------------------------------------
# Clocks
# --------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Handle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualTime:
    """``clock`` and ``call_later`` for :func:`watch_llm`: time moves only in
    :meth:`advance`, which runs the timers that fall due and lets the loop settle."""

    def __init__(self) -> None:
        self.now = 0.0
        self.handles: list[_Handle] = []
        self.scheduled = 0

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle(self.now + delay, callback)
        self.handles.append(handle)
        self.scheduled += 1
        return handle

    async def advance(self, seconds: float) -> None:
        await settle()  # what is ready runs (and arms its timers) at the current time
        target = self.now + seconds
        while True:
            due = [h for h in self.handles if not h.cancelled and h.when <= target]
            if not due:
                break
            handle = min(due, key=lambda h: h.when)
            self.handles.remove(handle)
            self.now = max(self.now, handle.when)
            handle.callback()
            await settle()
        self.now = target
        await settle()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class Source:
    """A model stream the test releases chunk by chunk (or fails)."""

    def __init__(self, *chunks: str) -> None:
        self.chunks = list(chunks)
        self.gates = [asyncio.Event() for _ in chunks]
        self.fail: BaseException | None = None
        self.opened = False
        self.closed = False

    def release(self) -> None:
        for gate in self.gates:
            gate.set()

    async def stream(self) -> AsyncIterator[str]:
        self.opened = True
        try:
            for chunk, gate in zip(self.chunks, self.gates, strict=True):
                await gate.wait()
                if self.fail is not None:
                    raise self.fail
                yield chunk
        finally:
            self.closed = True


class Watched:
    """Runs :func:`watch_llm` on virtual time and keeps what it said."""

    def __init__(self, primary: Source, time: VirtualTime, **kwargs: Any) -> None:
        self.out: list[str] = []
        self.gave_up = 0
        stream = watch_llm(
            primary.stream(),
            first_token_timeout=1.0,
            stall_timeout=1.0,
            answer_timeout=2.5,
            on_give_up=self._give_up,
            clock=time.clock,
            call_later=time.call_later,
            **kwargs,
        )
        self.task = asyncio.create_task(self._read(stream))

    def _give_up(self) -> None:
        self.gave_up += 1

    async def _read(self, stream: AsyncIterator[Any]) -> None:
        async for chunk in stream:
            self.out.append(chunk)


# --------------------------------------------------------------------------------------
# The second progress sentence
# --------------------------------------------------------------------------------------


class Handle:
    """Stands in for the reply's SpeechHandle (weakly referenced by the turn book)."""

    num_steps = 0


def _turn(book: TurnBook, handle: Handle | None = None) -> Any:
    return book.turn_for(SimpleNamespace(speech_handle=handle or Handle()), 6.0)


def test_second_fire_says_a_progress_sentence_then_nothing_more() -> None:
    clock = FakeClock()
    turn = _turn(TurnBook(clock, progress_after=1.0))
    source = turn.claim_filler(FILLER)
    assert source(0) == FILLER
    clock.now += 2.0  # LiveKit's scheduler fires again (interval + dwell)
    assert source(1) == PROGRESS[0]
    clock.now += 2.0
    assert source(2) is None  # at most two per turn
    assert source(2) is None


def test_at_most_two_per_turn_whichever_tool_fires() -> None:
    clock = FakeClock()
    turn = _turn(TurnBook(clock, progress_after=1.0))
    usage, account, calendar = (turn.claim_filler(FILLER) for _ in range(3))
    assert usage(0) == FILLER
    assert account(0) is None  # a sibling's scheduler firing with the filler's
    clock.now += 2.0
    assert account(0) == PROGRESS[0]
    assert [usage(1), calendar(0), account(1)] == [None, None, None]


def test_never_after_the_answer_is_ready() -> None:
    clock = FakeClock()
    turn = _turn(TurnBook(clock, progress_after=1.0))
    source = turn.claim_filler(FILLER)
    assert source(0) == FILLER
    source.answered()  # the tool's answer is ready while its scheduler winds down
    clock.now += 2.0
    assert source(1) is None
    quick = _turn(TurnBook(clock)).claim_filler(FILLER)
    quick.answered()
    assert quick(0) is None  # not even the filler


def test_never_the_same_progress_sentence_twice_in_a_call() -> None:
    clock = FakeClock()
    book = TurnBook(clock, progress=("Still checking.", "Almost there."), progress_after=1.0)
    heard: list[str | None] = []
    for _ in range(3):  # three slow turns in one call
        source = _turn(book).claim_filler(FILLER)
        assert source(0) == FILLER
        clock.now += 2.0
        heard.append(source(1))
    assert heard == ["Still checking.", "Almost there.", None]
    # Another call (another agent) starts afresh.
    assert (
        _turn(TurnBook(clock, progress=("Still checking.",), progress_after=0.0)).claim_filler(
            FILLER
        )(0)
        == FILLER
    )


def test_a_later_step_of_the_reply_gets_its_own_two() -> None:
    clock = FakeClock()
    book = TurnBook(clock, progress_after=1.0)
    handle = Handle()
    handle.num_steps = 1
    first = _turn(book, handle).claim_filler(FILLER)
    assert first(0) == FILLER
    clock.now += 2.0
    assert first(1) == PROGRESS[0]
    handle.num_steps = 2
    second = _turn(book, handle).claim_filler(FILLER)
    assert second(0) == FILLER
    clock.now += 2.0
    assert second(1) == PROGRESS[1]  # not the one this call already heard


async def test_a_slow_tool_turn_hears_the_filler_then_one_progress_sentence() -> None:
    """Through a real session: usage answers after 1.2 s; with the filler at 0.2 s and
    the progress sentence due 0.6 s in, the caller hears both, once, then the data."""
    overrides = {"filler_delay": 0.2, "progress_delay": 0.6}
    async with Conversation(overrides=overrides) as conv:
        conv.sandbox.amplitude.inject("*", FaultKind.SLOW, delay_ms=600)
        turn = await conv.turn("how is my trial usage?")
        assert turn.said[:2] == [FILLER, PROGRESS[0]]
        assert len(turn.said) == 3 and "documents" in turn.said[2]
        assert turn.longest_silence_s is not None and turn.longest_silence_s < 1.0
        conv.sandbox.amplitude.clear()
        quick = await conv.turn("how is my trial usage?")
        assert FILLER not in quick.said and not set(PROGRESS) & set(quick.said)


# --------------------------------------------------------------------------------------
# The stalled model: switch to the fallback, or give up with the apology
# --------------------------------------------------------------------------------------


async def test_a_silent_model_is_switched_to_the_fallback_after_the_filler() -> None:
    time = VirtualTime()
    primary, backup = Source("never"), Source("Hi", " there.")
    watched = Watched(primary, time, switch_timeout=1.0, fallback=backup.stream)
    await time.advance(1.0)
    assert watched.out == [MODEL_WAIT_FILLER + " "]
    await time.advance(0.9)
    assert not backup.opened and not primary.closed
    await time.advance(0.1)  # 1 s after the filler: abandoned for the fallback
    assert primary.closed and backup.opened
    backup.release()
    await settle()
    await asyncio.wait_for(watched.task, 1.0)
    assert watched.out == [MODEL_WAIT_FILLER + " ", "Hi", " there."]
    assert watched.gave_up == 0


async def test_a_silent_fallback_is_given_up_within_the_answer_timeout() -> None:
    time = VirtualTime()
    primary, backup = Source("never"), Source("never either")
    watched = Watched(primary, time, switch_timeout=1.0, fallback=backup.stream)
    await time.advance(3.4)  # filler at 1.0, switch at 2.0, answer due by 3.5
    assert watched.gave_up == 0 and backup.opened
    await time.advance(0.1)
    await asyncio.wait_for(watched.task, 1.0)
    assert watched.gave_up == 1 and backup.closed
    assert watched.out == [MODEL_WAIT_FILLER + " "]


async def test_without_a_fallback_the_apology_comes_within_the_answer_timeout() -> None:
    time = VirtualTime()
    primary = Source("never")
    watched = Watched(primary, time, switch_timeout=1.0)
    await time.advance(3.4)
    assert watched.gave_up == 0 and not primary.closed  # the one model keeps its time
    await time.advance(0.1)
    await asyncio.wait_for(watched.task, 1.0)
    assert watched.gave_up == 1 and primary.closed


async def test_a_fallback_that_fails_before_answering_ends_in_the_apology() -> None:
    time = VirtualTime()
    primary, backup = Source("never"), Source("boom")
    backup.fail = ConnectionError("refused")
    watched = Watched(primary, time, switch_timeout=1.0, fallback=backup.stream)
    await time.advance(2.0)
    backup.release()
    await settle()
    await asyncio.wait_for(watched.task, 1.0)
    assert watched.gave_up == 1 and watched.out == [MODEL_WAIT_FILLER + " "]


async def test_a_model_answering_after_the_filler_is_kept() -> None:
    time = VirtualTime()
    primary, backup = Source("Sure.", " Done."), Source("unused")
    watched = Watched(primary, time, switch_timeout=1.0, fallback=backup.stream)
    await time.advance(1.5)
    primary.release()
    await settle()
    await asyncio.wait_for(watched.task, 1.0)
    assert watched.out == [MODEL_WAIT_FILLER + " ", "Sure.", " Done."]
    assert not backup.opened and watched.gave_up == 0


async def test_a_steady_stream_keeps_one_timer_not_one_per_chunk() -> None:
    """Issue #29: the watchdog reads the stream in one task and re-arms one timer, not a
    task and an ``asyncio.wait`` per chunk."""
    time = VirtualTime()
    chunks = [f"w{i} " for i in range(60)]
    primary = Source(*chunks)
    loop = asyncio.get_running_loop()
    created = 0

    def counting_factory(loop: Any, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        nonlocal created
        created += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting_factory)
    try:
        watched = Watched(primary, time)
        for gate in primary.gates:
            await time.advance(0.3)  # a chunk every 0.3 s, under the 1 s stall timeout
            gate.set()
        await asyncio.wait_for(watched.task, 1.0)
    finally:
        loop.set_task_factory(None)
    assert watched.out == chunks  # nothing added: no filler, no bridge
    assert created <= 2  # the reader (this test's) and the stream's one reading task
    assert time.scheduled <= 60 * 0.3 / 1.0 + 2  # re-armed about once per stall period


# --------------------------------------------------------------------------------------
# The measure
# --------------------------------------------------------------------------------------


def test_longest_silence_counts_gaps_from_the_end_of_the_callers_turn() -> None:
    assert longest_silence(10.0, [11.0, 14.5, 14.6]) == 3.5
    assert longest_silence(10.0, []) is None
    # Audio: a frame plays after the ones queued before it; gaps count from their end.
    assert longest_silence(0.0, [1.0, 1.0, 5.0], [1.0, 1.0, 0.5]) == 2.0


async def test_a_stalled_primary_model_is_switched_to_the_fallback_in_a_real_session() -> None:
    """The real plugins: the primary model's request hangs (opened, nothing sent); the
    caller hears the filler, then the fallback model's answer, not LiveKit's timeouts."""
    overrides = {
        "llm_first_token_timeout": 0.2,
        "llm_switch_timeout": 0.3,
        "llm_answer_timeout": 2.0,
    }
    env = {"OPENAI_FALLBACK_MODEL": "gpt-4o-mini-fallback"}
    async with Conversation(overrides=overrides, env=env) as conv:
        conv.sandbox.openai.inject("/v1/chat/completions", FaultKind.HANG, count=1)
        conv.sandbox.openai.say("Happy to help with your trial.")
        turn = await conv.turn("hello there")
        assert turn.failure is None
        assert turn.said == [f"{MODEL_WAIT_FILLER} Happy to help with your trial."]
        models = [body["model"] for body in conv.sandbox.openai.requests_seen]
        assert models[-1] == "gpt-4o-mini-fallback"
        assert turn.total_s < 2.0  # the 6 s LLM_TIMEOUT was not waited out


async def test_a_dead_model_is_given_up_in_time_and_still_ends_in_the_goodbye() -> None:
    """The model accepts every request and sends nothing: each turn the caller hears the
    filler, then the apology within LLM_ANSWER_TIMEOUT (not LiveKit's attempt timeouts);
    the filler is no sign of progress, so the failures add up to the goodbye."""
    overrides = {
        "llm_first_token_timeout": 0.1,
        "llm_answer_timeout": 0.4,
        "max_unrecoverable_errors": 2,
    }
    async with Conversation(overrides=overrides) as conv:
        conv.sandbox.openai.inject("/v1/chat/completions", FaultKind.HANG)
        closed = asyncio.Event()
        conv.session.on("close", lambda _: closed.set())
        first = await conv.turn("hello there")
        assert first.said[0].strip() == MODEL_WAIT_FILLER
        assert APOLOGY in first.said[-1], first.said
        assert first.total_s < 2.0  # LLM_TIMEOUT is 6 s: it was not waited out
        before = len(conv.assistant_history())
        await conv.turn("are you there?")
        await asyncio.wait_for(closed.wait(), 5.0)
        assert conv.assistant_history()[before:][-1] == GOODBYE


async def test_no_model_filler_over_speech_the_caller_is_already_hearing() -> None:
    """The tools' progress sentence is still playing when the answer's first token is
    late: "Just a second." is not added on top; it comes once the caller hears nothing."""
    time = VirtualTime()
    primary = Source("Here you go.")
    playing = True
    watched = Watched(primary, time, speaking=lambda: playing)
    await time.advance(1.0)
    assert watched.out == []
    playing = False
    await time.advance(0.9)
    assert watched.out == []
    await time.advance(0.1)
    assert watched.out == [MODEL_WAIT_FILLER + " "]
    primary.release()
    await settle()
    await asyncio.wait_for(watched.task, 1.0)
    assert watched.out == [MODEL_WAIT_FILLER + " ", "Here you go."]


async def test_speech_that_never_ends_does_not_hold_the_filler_back_for_ever() -> None:
    time = VirtualTime()
    primary = Source("never")
    watched = Watched(primary, time, speaking=lambda: True)
    await time.advance(3.4)
    assert watched.out == []
    await time.advance(0.6)  # first-token 1 s + answer 2.5 s: the filler after all
    assert watched.out == [MODEL_WAIT_FILLER + " "]
    await time.advance(2.5)
    await asyncio.wait_for(watched.task, 1.0)
    assert watched.gave_up == 1
