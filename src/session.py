"""How a conversation's ``AgentSession`` is assembled: the models (with their fallbacks),
LiveKit's voice-tuned connect options, the model context the LLM sees, and the session
error handler that never leaves the caller in silence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    AgentSession,
    APIConnectOptions,
    APITimeoutError,
    llm,
    stt,
    tts,
    vad,
)
from livekit.agents.voice.agent_session import SessionConnectOptions
from livekit.agents.voice.events import (
    CloseEvent,
    ConversationItemAddedEvent,
    ErrorEvent,
    UserInputTranscribedEvent,
)

# Plugins must register on the main thread: this module is imported by src.agent at start.
from livekit.plugins import deepgram, openai

from src import tool_schemas
from src.error_recovery import ERROR_RESPONSES, ErrorRecoveryMixin
from src.events import listener
from src.openai_client import chat_client
from src.phrases import (
    APOLOGY,
    BAD_TOOL_ARGUMENTS,
    FILLER,
    FILLER_WRITE,
    GOODBYE,
    MODEL_STALL_BRIDGE,
    MODEL_WAIT_FILLER,
    PROGRESS,
    TROUBLE_HEARING,
    UNKNOWN_TOOL,
)
from src.redaction import get_logger
from src.settings import Settings
from src.state import TrialistData

__all__ = [
    "SessionErrorHandler",
    "SpokenApology",
    "build_llm",
    "build_session",
    "build_stt",
    "build_tts",
    "caller_safe_context",
    "connect_options",
    "fallback_stream",
    "on_session_error",
    "report_model_stall",
]

logger = get_logger("pandadoc.agent")

_FILLERS = (MODEL_WAIT_FILLER, MODEL_STALL_BRIDGE, FILLER, FILLER_WRITE, *PROGRESS)

_LIVEKIT_TOOL_ERRORS = (
    ("Error parsing arguments for", BAD_TOOL_ARGUMENTS),
    ("Unknown tool type for function", UNKNOWN_TOOL),
    ("Unknown function:", UNKNOWN_TOOL),
)


def caller_safe_context(chat_ctx: llm.ChatContext) -> llm.ChatContext:
    """A copy of ``chat_ctx`` in which LiveKit's own tool-call errors are replaced by
    plain sentences; the session history keeps the originals for operators. Our tools'
    errors are already natural phrases and pass unchanged."""
    items: list[llm.ChatItem] = []
    for item in chat_ctx.items:
        if item.type == "function_call_output" and item.is_error:
            for prefix, sentence in _LIVEKIT_TOOL_ERRORS:
                if item.output.startswith(prefix):
                    logger.debug("Malformed %s call: the model gets a plain note", item.name)
                    item = item.model_copy(update={"output": sentence})
                    break
        items.append(item)
    return llm.ChatContext(items)


def connect_options(settings: Settings) -> SessionConnectOptions:
    """LiveKit's model retry settings, tuned for voice (see ResilienceSettings)."""
    r = settings.resilience
    return SessionConnectOptions(
        llm_conn_options=APIConnectOptions(
            max_retry=r.llm_max_retry, retry_interval=r.model_retry_interval, timeout=r.llm_timeout
        ),
        tts_conn_options=APIConnectOptions(
            max_retry=r.tts_max_retry, retry_interval=r.model_retry_interval, timeout=r.tts_timeout
        ),
        stt_conn_options=APIConnectOptions(
            max_retry=r.stt_max_retry, retry_interval=r.model_retry_interval, timeout=r.stt_timeout
        ),
        # One above ours: SessionErrorHandler says goodbye and ends the call first.
        max_unrecoverable_errors=r.max_unrecoverable_errors + 1,
    )


def build_llm(settings: Settings) -> llm.LLM[Any]:
    """OpenAI chat model, with a ``FallbackAdapter`` to a second model when configured."""
    m = settings.models

    def model(name: str) -> openai.LLM:
        client = chat_client(api_key=m.openai_api_key or None, base_url=m.openai_base_url or None)
        built = openai.LLM(model=name, client=client)
        built._owns_client = True  # closed with the model, as LiveKit's own factories do
        return built

    primary = model(m.llm_model)
    if not m.fallback_llm_model:
        return primary
    secondary = model(m.fallback_llm_model)
    return llm.FallbackAdapter(
        [primary, secondary], attempt_timeout=settings.resilience.llm_timeout
    )


def fallback_stream(
    model: llm.LLM[Any],
    chat_ctx: llm.ChatContext,
    tools: list[llm.Tool],
    *,
    tool_choice: Any = NOT_GIVEN,
    conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
) -> Callable[[], AsyncIterator[llm.ChatChunk]] | None:
    """For the model watchdog (:func:`~src.watchdogs.watch_llm`): a stream of the same
    request from the session model's fallback (the second model of its
    ``FallbackAdapter``), or ``None`` when no fallback is configured. The adapter
    switches when a model fails, not when its stream opens and then sends nothing."""
    if not isinstance(model, llm.FallbackAdapter):
        return None
    # The adapter keeps its models in order in ``_llm_instances`` (no public accessor).
    models: list[llm.LLM[Any]] = list(getattr(model, "_llm_instances", ()))
    if len(models) < 2:
        return None
    second = models[1]

    async def stream() -> AsyncIterator[llm.ChatChunk]:
        async with second.chat(
            chat_ctx=chat_ctx, tools=tools, tool_choice=tool_choice, conn_options=conn_options
        ) as chunks:
            async for chunk in chunks:
                yield chunk

    return stream


def report_model_stall(model: llm.LLM[Any]) -> None:
    """Tell the session that its model gave no answer in time, as an unrecoverable model
    error from the model itself: LiveKit and :class:`SessionErrorHandler` treat it as
    any model failure (the apology now; after repeated failures, the goodbye)."""
    model.emit(
        "error",
        llm.LLMError(
            timestamp=time.time(),
            label=model.label,
            error=APITimeoutError("the model sent no answer in time", retryable=False),
            recoverable=False,
        ),
    )


def build_tts(settings: Settings) -> tts.TTS[Any]:
    """OpenAI TTS; with a Deepgram key, a ``tts.FallbackAdapter`` to Deepgram's voice so
    a TTS outage does not silence the agent."""
    m = settings.models
    primary = openai.TTS(
        model=m.tts_model,
        voice=m.tts_voice,
        base_url=m.openai_base_url or NOT_GIVEN,
        api_key=m.openai_api_key or NOT_GIVEN,
    )
    if not m.deepgram_api_key:
        return primary
    secondary = deepgram.TTS(api_key=m.deepgram_api_key)
    return tts.FallbackAdapter(
        [primary, secondary], max_retry_per_tts=settings.resilience.tts_max_retry
    )


def build_stt(settings: Settings) -> stt.STT[Any] | None:
    if not settings.models.deepgram_api_key:
        return None
    return deepgram.STT(model=settings.models.stt_model, api_key=settings.models.deepgram_api_key)


class SpokenApology:
    """A sentence for model failures (the apology, or the goodbye), pre-rendered while
    the TTS works, so it can still be heard when the TTS itself is what failed.

    Args:
        text: the sentence (default: a ``service_unavailable`` phrase plus the spec's
            "I apologize for the interruption.").
    """

    def __init__(self, text: str | None = None) -> None:
        self.text = text or f"{ERROR_RESPONSES['service_unavailable'][0]} {APOLOGY}"
        self.frames: list[rtc.AudioFrame] = []

    async def prerender(
        self,
        tts_model: tts.TTS[Any] | None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> bool:
        """Synthesize :attr:`text` once (pass the session's voice-tuned
        ``conn_options``); ``False`` (and a log line) when it cannot be."""
        if tts_model is None:
            return False
        try:
            async with tts_model.synthesize(self.text, conn_options=conn_options) as stream:
                self.frames = [event.frame async for event in stream]
        except Exception as exc:
            logger.warning("Could not pre-render the apology: %s", type(exc).__name__)
            self.frames = []
        return bool(self.frames)

    async def audio(self) -> AsyncIterator[rtc.AudioFrame]:
        for frame in self.frames:
            yield frame


def on_session_error(
    session: AgentSession[Any], event: ErrorEvent, apology: SpokenApology | None = None
) -> asyncio.Task[None] | None:
    """The spec's session ``"error"`` handler. Recoverable errors are logged (LiveKit is
    retrying); an unrecoverable one makes the agent apologise out loud instead of going
    silent. When the TTS is what failed and ``apology`` holds pre-rendered audio, that
    audio is played (the failing TTS is not asked again); when the STT failed, the agent
    says it is having trouble hearing. Returns the speaking task."""
    error = event.error
    source = type(event.source).__name__
    cause = type(getattr(error, "error", error)).__name__
    if getattr(error, "recoverable", False):
        logger.info("Recoverable %s error: %s", source, cause)
        return None
    logger.error("Unrecoverable %s error: %s", source, cause)
    if isinstance(event.source, tts.TTS) and apology is not None and apology.frames:
        return _speak(session, apology.text, apology)
    if isinstance(event.source, stt.STT):  # the agent can still speak: say what is wrong
        return _speak(session, f"{TROUBLE_HEARING} {APOLOGY}")
    agent = session.current_agent if _has_agent(session) else None
    if isinstance(agent, ErrorRecoveryMixin):
        phrase = agent.get_error_response("service_unavailable")
    else:
        phrase = ERROR_RESPONSES["service_unavailable"][0]
    return _speak(session, f"{phrase} {APOLOGY}")


def _speak(
    session: AgentSession[Any], text: str, prerendered: SpokenApology | None = None
) -> asyncio.Task[None]:
    """Say ``text`` (with ``prerendered`` audio when given), uninterruptible, as a task."""
    audio: Any = prerendered.audio() if prerendered is not None else NOT_GIVEN

    async def speak() -> None:
        try:
            await session.say(text, audio=audio, allow_interruptions=False)
        except RuntimeError:
            logger.warning("Session closed before the sentence could be spoken")

    return asyncio.create_task(speak())


class SessionErrorHandler:
    """Wires :func:`on_session_error` to a session and decides when to stop trying.

    LiveKit resets its own error counts whenever the agent speaks, so with apologies being
    spoken it would never end a broken session: the caller would hear an apology every
    turn. This handler counts consecutive unrecoverable errors per kind (LLM, STT, TTS);
    at ``max_failures`` it says :data:`GOODBYE` (pre-rendered when the TTS is what failed)
    and ends the session after it has played. Real progress resets the count: an
    assistant message that is not ours (LLM and TTS work) or a user transcript (STT works).
    """

    def __init__(
        self,
        session: AgentSession[Any],
        *,
        max_failures: int,
        apology: SpokenApology | None = None,
        goodbye: SpokenApology | None = None,
    ) -> None:
        self.session = session
        self.max_failures = max_failures
        self.apology = apology
        self.goodbye = goodbye
        self.failures: dict[str, int] = {}
        self.ended = False
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self) -> None:
        self.session.on("error", listener(self.on_error))
        self.session.on("conversation_item_added", listener(self.on_item_added))
        self.session.on("user_input_transcribed", listener(self.on_user_input))

    def on_error(self, event: ErrorEvent) -> None:
        if self.ended:
            return
        task: asyncio.Task[None] | None
        kind = str(getattr(event.error, "type", "error"))
        if getattr(event.error, "recoverable", False):
            task = on_session_error(self.session, event, self.apology)
        else:
            self.failures[kind] = self.failures.get(kind, 0) + 1
            if self.failures[kind] >= self.max_failures:
                task = self._end_call(event)
            else:
                task = on_session_error(self.session, event, self.apology)
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def on_item_added(self, event: ConversationItemAddedEvent) -> None:
        item = event.item
        if getattr(item, "role", None) != "assistant":
            return
        text = getattr(item, "text_content", None) or ""
        # A reply that is only a filler ("Just a second.") is no sign the model works.
        for filler in _FILLERS:
            text = text.replace(filler, "")
        text = text.strip()
        if text and APOLOGY not in text and text != GOODBYE:
            self.failures.pop("llm_error", None)
            self.failures.pop("tts_error", None)

    def on_user_input(self, event: UserInputTranscribedEvent) -> None:
        if event.transcript:
            self.failures.pop("stt_error", None)

    def _end_call(self, event: ErrorEvent) -> asyncio.Task[None]:
        self.ended = True
        logger.error(
            "Ending the session after %d consecutive %s failures",
            self.max_failures,
            type(event.source).__name__,
        )
        tts_failed = isinstance(event.source, tts.TTS)
        prerendered = self.goodbye if tts_failed and self.goodbye and self.goodbye.frames else None
        spoken = _speak(self.session, GOODBYE, prerendered)

        async def end() -> None:
            await spoken
            self.session.shutdown(drain=True)

        return asyncio.create_task(end())


def _has_agent(session: AgentSession[Any]) -> bool:
    try:
        session.current_agent  # noqa: B018 - raises when no agent is running
    except RuntimeError:
        return False
    return True


def build_session(
    settings: Settings,
    *,
    userdata: TrialistData,
    llm_model: llm.LLM[Any] | None = None,
    tts_model: tts.TTS[Any] | None | Literal["default"] = "default",
    stt_model: stt.STT[Any] | None | Literal["default"] = "default",
    vad_model: vad.VAD | None = None,
    apology: SpokenApology | None = None,
    goodbye: SpokenApology | None = None,
) -> AgentSession[TrialistData]:
    """The one place an ``AgentSession`` is assembled (production and tests): models,
    voice-tuned connect options, and the error handler (:class:`SessionErrorHandler`)."""
    tool_schemas.install()  # each tool's schema once, not once per model request
    session_tts = build_tts(settings) if tts_model == "default" else tts_model
    session_stt = build_stt(settings) if stt_model == "default" else stt_model
    session: AgentSession[TrialistData] = AgentSession(
        llm=llm_model or build_llm(settings),
        tts=session_tts if session_tts is not None else NOT_GIVEN,
        stt=session_stt if session_stt is not None else NOT_GIVEN,
        vad=vad_model if vad_model is not None else NOT_GIVEN,
        userdata=userdata,
        conn_options=connect_options(settings),
    )
    SessionErrorHandler(
        session,
        max_failures=settings.resilience.max_unrecoverable_errors,
        apology=apology,
        goodbye=goodbye,
    ).attach()

    def _on_close(event: CloseEvent) -> None:
        logger.info("Session closed: %s", event.reason)

    session.on("close", listener(_on_close))
    return session
