"""A small conversation harness over the sandbox, shared by the chaos tests and the drill.

It assembles everything through the production functions (:func:`settings_from_env`,
:meth:`TrialistServices.from_settings`, :class:`PandaDocTrialistAgent`,
:func:`build_session`) and only adds measurement::

    async with Conversation(overrides={"tool_deadline": 1.0}) as conv:
        conv.sandbox.amplitude.inject("*", FaultKind.SERVER_ERROR)
        turn = await conv.turn("how is my trial usage?", failing="amplitude")
        turn.said, turn.first_words_s, turn.requests, turn.transitions

:class:`HarnessClock` is the agent's ``clock``/``sleep``: real monotonic time plus an
offset. :meth:`HarnessClock.advance` jumps the offset (to skip a circuit's recovery
timeout); with ``skip_sleeps`` the retry backoff advances the offset instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession
from livekit.agents.llm import ChatMessage
from livekit.agents.voice import io
from livekit.agents.voice.run_result import (
    ChatMessageEvent,
    FunctionCallEvent,
    FunctionCallOutputEvent,
)

from src.agent import PandaDocTrialistAgent
from src.drill.silence import SILENCE_BUDGET, TextSink, longest_silence
from src.error_recovery import CircuitState
from src.sandbox import Sandbox
from src.sandbox.remote import SandboxProcess
from src.services.wiring import TrialistServices
from src.session import SpokenApology, build_session, connect_options
from src.settings import Settings, settings_from_env
from src.state import TrialistData

__all__ = [
    "SILENCE_BUDGET",
    "AudioSink",
    "Conversation",
    "HarnessClock",
    "StandInRunContext",
    "StandInSession",
    "TextSink",
    "ToolResult",
    "Transition",
    "TurnResult",
    "longest_silence",
    "technical_leaks",
]


# --------------------------------------------------------------------------------------
# Deny-list: what a caller must never hear and the model must never be handed
# --------------------------------------------------------------------------------------

_LEAK_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("exception class", re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*(?:Error|Exception)\b")),
    ("technical word", re.compile(r"\b(?:errors?|exceptions?|traceback|https?)\b", re.I)),
    ("status code", re.compile(r"(?<![\d.:])\b[1-5]\d\d\b(?![\d.:])")),
    ("url", re.compile(r"\b(?:https?|wss?|ftp)://\S+|\bwww\.\S+", re.I)),
    ("None", re.compile(r"\bNone\b")),
    ("braces", re.compile(r"[{}]")),
    ("loopback", re.compile(r"\b127\.0\.0\.1\b|\blocalhost\b|\[::1\]|\b0\.0\.0\.0\b", re.I)),
    ("sandbox host", re.compile(r"\b[\w-]*sandbox[\w-]*(?:\.[\w-]+)+\b|\.invalid\b", re.I)),
)


def technical_leaks(text: str) -> list[str]:
    """Technical fragments in ``text`` that a caller must never hear, as
    ``"kind: fragment"`` strings (empty when the text is clean)."""
    found: list[str] = []
    for kind, pattern in _LEAK_PATTERNS:
        found.extend(f"{kind}: {m.group(0)}" for m in pattern.finditer(text))
    return found


# --------------------------------------------------------------------------------------
# Clock
# --------------------------------------------------------------------------------------


class HarnessClock:
    """Monotonic clock with a jumpable offset, and a sleep that can skip real waiting.

    Args:
        skip_sleeps: when True, ``sleep(d)`` advances the offset by ``d`` and only
            yields to the loop (tests: no real backoff waits). When False it really sleeps
            (the drill: production timing).
    """

    def __init__(self, *, skip_sleeps: bool = False) -> None:
        self.offset = 0.0
        self.skip_sleeps = skip_sleeps
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.skip_sleeps:
            self.offset += max(0.0, seconds)
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(seconds)


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolResult:
    name: str
    arguments: str
    output: str
    is_error: bool
    seconds: float | None  # call item created -> output item created


@dataclass(frozen=True)
class Transition:
    service: str
    old: CircuitState
    new: CircuitState
    at: float  # harness clock

    def __str__(self) -> str:
        return f"{self.service}:{self.old.value}->{self.new.value}"


@dataclass
class TurnResult:
    """Measurements of one user turn."""

    user_text: str
    said: list[str] = field(default_factory=list)
    tools: list[ToolResult] = field(default_factory=list)
    first_words_s: float | None = None  # end of user turn -> first assistant words
    tool_resolution_s: float | None = None  # longest tool call of the turn
    total_s: float = 0.0
    requests: dict[str, int] = field(default_factory=dict)  # per service, this turn
    transitions: list[Transition] = field(default_factory=list)
    data_before: TrialistData | None = None
    data_after: TrialistData | None = None
    failure: str | None = None  # the turn itself raised (class name only)
    first_audio_s: float | None = None  # end of user turn -> first audio frame (audio=True)
    # The longest gap the caller hears between the end of their turn and the end of the
    # reply: between audio frames as they would play (audio=True), else between the
    # transcription pieces (the model's text and every ``say``) as they arrive.
    longest_silence_s: float | None = None

    @property
    def spoken(self) -> str:
        return " ".join(self.said)

    def leaks(self) -> list[str]:
        """Leaks in what was said and in every tool output of this turn."""
        texts = [*self.said, *(t.output for t in self.tools)]
        return [leak for text in texts for leak in technical_leaks(text)]


# --------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------


class AudioSink(io.AudioOutput):
    """The session's audio output without a room: frames are "played" at once and their
    arrival times kept (``perf_counter``), so the drill can measure the caller's silence."""

    def __init__(self) -> None:
        super().__init__(label="drill-sink", capabilities=io.AudioOutputCapabilities(pause=False))
        self.arrivals: list[float] = []
        self.durations: list[float] = []  # seconds of audio in each frame, as ``arrivals``
        self._segment = 0.0
        self._capturing = False

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if not self._capturing:
            self._capturing = True
            self.on_playback_started(created_at=time.time())
        self.arrivals.append(time.perf_counter())
        self.durations.append(frame.duration)
        self._segment += frame.duration

    def _finish(self, interrupted: bool) -> None:
        if self._capturing:
            self._capturing = False
            played, self._segment = self._segment, 0.0
            self.on_playback_finished(playback_position=played, interrupted=interrupted)

    def flush(self) -> None:
        super().flush()
        asyncio.get_running_loop().call_soon(self._finish, False)

    def clear_buffer(self) -> None:
        self._finish(True)


# --------------------------------------------------------------------------------------
# Conversation
# --------------------------------------------------------------------------------------


class Conversation:
    """Sandbox + production-assembled agent session, with per-turn measurements.

    Args:
        overrides: fields of :class:`~src.settings.ResilienceSettings` to replace.
        email: the trialist's email on file (default: the sandbox's first user).
        skip_sleeps: see :class:`HarnessClock`.
        env: extra environment entries layered over ``sandbox.env()``.
        sandbox: an already constructed (not started) :class:`Sandbox` to use, or a
            running :class:`~src.sandbox.remote.SandboxProcess` (with ``shared_sandbox``;
            then :attr:`sandbox` is not available and no request counts are measured).
        shared_sandbox: ``sandbox`` is already started and shared with other
            conversations (the load drill): it is neither started, cleared nor stopped.
        audio: give the session the production TTS (against the stand-in) and an
            :class:`AudioSink`, pre-render the apology as the agent's TTS rescue, and
            measure ``first_audio_s``.
        snapshots: copy the session state before and after each turn into the
            :class:`TurnResult` (the load drill turns this off: fifty conversations'
            copies would be measurement load on the process being measured).
        tts_model / stt_model: passed to :func:`build_session` (default: text only);
            ``"default"`` builds the production model against the stand-in.
    """

    def __init__(
        self,
        *,
        overrides: Mapping[str, Any] | None = None,
        email: str | None = None,
        skip_sleeps: bool = False,
        env: Mapping[str, str] | None = None,
        sandbox: Sandbox | SandboxProcess | None = None,
        tts_model: Any = None,
        stt_model: Any = None,
        shared_sandbox: bool = False,
        audio: bool = False,
        snapshots: bool = True,
    ) -> None:
        self.shared_sandbox = shared_sandbox
        self.snapshots = snapshots
        self.audio_sink = AudioSink() if audio else None
        self.text_sink = TextSink()
        if audio and tts_model is None:
            tts_model = "default"
        self.tts_model = tts_model
        self.stt_model = stt_model
        if isinstance(sandbox, SandboxProcess) and not shared_sandbox:
            raise ValueError("a SandboxProcess is shared: pass shared_sandbox=True")
        self._source: Sandbox | SandboxProcess = sandbox or Sandbox()
        self.overrides = dict(overrides or {})
        self.email = email
        self.extra_env = dict(env or {})
        self.clock = HarnessClock(skip_sleeps=skip_sleeps)
        self.transitions: list[Transition] = []
        self.turns: list[TurnResult] = []
        self._settings: Settings | None = None
        self._services: TrialistServices | None = None
        self._agent: PandaDocTrialistAgent | None = None
        self._session: AgentSession[TrialistData] | None = None
        # After the last turn: (history length, its last item, assistant texts).
        self._spoken_mark: tuple[int, object, int] = (-1, None, 0)

    # -- parts ---------------------------------------------------------------------------
    @property
    def sandbox(self) -> Sandbox:
        """The in-process sandbox (its servers, faults and journals)."""
        if not isinstance(self._source, Sandbox):
            raise TypeError("this conversation's sandbox runs in another process")
        return self._source

    @property
    def settings(self) -> Settings:
        assert self._settings is not None, "enter the Conversation first"
        return self._settings

    @property
    def agent(self) -> PandaDocTrialistAgent:
        assert self._agent is not None, "enter the Conversation first"
        return self._agent

    @property
    def session(self) -> AgentSession[TrialistData]:
        assert self._session is not None, "enter the Conversation first"
        return self._session

    @property
    def data(self) -> TrialistData:
        return self.session.userdata

    def snapshot(self) -> TrialistData:
        return copy.deepcopy(self.data)

    # -- lifecycle -----------------------------------------------------------------------
    async def __aenter__(self) -> Conversation:
        if not self.shared_sandbox:
            await self.sandbox.start()
        try:
            env = {**self._source.env(), **self.extra_env}
            base = settings_from_env(env)
            self._settings = dataclasses.replace(
                base, resilience=dataclasses.replace(base.resilience, **self.overrides)
            )
            self._services = TrialistServices.from_settings(self._settings)
            self._agent = PandaDocTrialistAgent(
                self._services, self._settings, clock=self.clock, sleep=self.clock.sleep
            )
            for breaker in self._agent.circuit_breakers.values():
                breaker.add_listener(self._on_transition)
            self._session = build_session(
                self._settings,
                userdata=TrialistData(email=self.email or env["TRIALIST_EMAIL"]),
                tts_model=self.tts_model,
                stt_model=self.stt_model,
            )
            await self._session.start(self._agent)
            self._session.output.transcription = self.text_sink
            if self.audio_sink is not None:
                self._session.output.audio = self.audio_sink
                rescue = SpokenApology()
                options = connect_options(self._settings).tts_conn_options
                await rescue.prerender(self._session.tts, options)
                self._agent.tts_rescue = rescue
        except BaseException:
            await self._teardown()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._teardown()

    async def _teardown(self) -> None:
        if not self.shared_sandbox:
            self.sandbox.clear()
        if self._session is not None:
            with contextlib.suppress(TimeoutError, RuntimeError):
                await asyncio.wait_for(self._session.aclose(), 5.0)
        if self._services is not None:
            await self._services.aclose()
        if not self.shared_sandbox:
            await self.sandbox.stop()

    def _on_transition(self, name: str, old: CircuitState, new: CircuitState) -> None:
        self.transitions.append(Transition(name, old, new, self.clock()))

    # -- measurement ---------------------------------------------------------------------
    def request_counts(self) -> dict[str, int]:
        return {name: len(server.journal) for name, server in self._source.servers.items()}

    def _assistant_count(self) -> int:
        """``len(self.assistant_history())``, from the last turn's end when nothing was
        added to the history since."""
        length, last, count = self._spoken_mark
        items = self.session.history.items
        if length == len(items) and (items[-1] if items else None) is last:
            return count
        return len(self.assistant_history())

    def assistant_history(self) -> list[str]:
        """Everything the assistant said in this session (history, including
        ``session.say`` from the error handler)."""
        texts: list[str] = []
        for item in self.session.history.items:
            if isinstance(item, ChatMessage) and item.role == "assistant":
                text = item.text_content
                if text:
                    texts.append(text)
        return texts

    async def turn(self, user_text: str, *, timeout: float = 30.0) -> TurnResult:
        """Run one user turn through ``session.run`` and measure it."""
        result = TurnResult(user_text=user_text)
        if self.snapshots:
            result.data_before = self.snapshot()
        counts_before = self.request_counts()
        transitions_before = len(self.transitions)
        history_before = self._assistant_count()
        frames_before = len(self.audio_sink.arrivals) if self.audio_sink else 0
        pieces_before = len(self.text_sink.arrivals)
        started_wall = time.time()
        started = time.perf_counter()
        events: Sequence[Any] = ()
        try:
            run_result: Any = await asyncio.wait_for(
                self.session.run(user_input=user_text), timeout
            )
            events = run_result.events
        except Exception as exc:  # measured, not raised: the caller asserts on it
            result.failure = type(exc).__name__
        result.total_s = time.perf_counter() - started
        calls: dict[str, FunctionCallEvent] = {}
        for event in events:
            if isinstance(event, FunctionCallEvent):
                calls[event.item.call_id] = event
            elif isinstance(event, FunctionCallOutputEvent):
                call = calls.get(event.item.call_id)
                seconds = event.item.created_at - call.item.created_at if call else None
                result.tools.append(
                    ToolResult(
                        name=event.item.name,
                        arguments=call.item.arguments if call else "",
                        output=event.item.output,
                        is_error=event.item.is_error,
                        seconds=seconds,
                    )
                )
            elif (
                isinstance(event, ChatMessageEvent)
                and event.item.role == "assistant"
                and result.first_words_s is None
            ):
                spoke_at = event.item.metrics.get("started_speaking_at")
                at = spoke_at if isinstance(spoke_at, float) else event.item.created_at
                result.first_words_s = max(0.0, at - started_wall)
        if self.audio_sink is not None:
            arrivals = self.audio_sink.arrivals[frames_before:]
            result.first_audio_s = arrivals[0] - started if arrivals else None
            lengths = self.audio_sink.durations[frames_before:]
            result.longest_silence_s = longest_silence(started, arrivals, lengths)
        else:
            pieces = self.text_sink.arrivals[pieces_before:]
            result.longest_silence_s = longest_silence(started, pieces)
        # Anything spoken outside the run's events (the error handler's session.say).
        spoken = self.assistant_history()
        result.said = spoken[history_before:]
        # Remembered for the next turn's start, so it need not read the whole history
        # again (in the load drill that history has gone cold while the caller paused).
        items = self.session.history.items
        self._spoken_mark = (len(items), items[-1] if items else None, len(spoken))
        if result.first_words_s is None and result.said:
            result.first_words_s = result.total_s
        durations = [t.seconds for t in result.tools if t.seconds is not None]
        result.tool_resolution_s = max(durations) if durations else None
        counts_after = self.request_counts()
        result.requests = {k: counts_after[k] - counts_before.get(k, 0) for k in counts_after}
        result.transitions = self.transitions[transitions_before:]
        if self.snapshots:
            result.data_after = self.snapshot()
        self.turns.append(result)
        return result


class StandInSession:
    """Holds ``userdata`` like an ``AgentSession`` does."""

    def __init__(self, userdata: Any) -> None:
        self.userdata = userdata


class StandInRunContext:
    """The two things :meth:`ErrorRecoveryMixin.handle_tool_with_error_recovery` reads
    from LiveKit's ``RunContext`` (``session`` and ``userdata``), for unit tests and
    benchmarks of the wrapper without a session. Like LiveKit's, ``userdata`` raises
    ``ValueError`` when none is set."""

    def __init__(self, userdata: Any) -> None:
        self.session = StandInSession(userdata)

    @property
    def userdata(self) -> Any:
        if self.session.userdata is None:
            raise ValueError("AgentSession userdata is not set")
        return self.session.userdata
