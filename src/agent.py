"""PandaDoc Trialist voice agent: tools, session wiring, error handler and worker entry.

Run it with ``python src/agent.py console|console --text|dev|start|download-files``.

The agent looks up a trialist's product usage (Amplitude) and CRM record (Salesforce, then
HubSpot), offers and books demo times (ChiliPiper) and logs a call summary to the CRM.
Every service call goes through the service's circuit breaker and voice-tuned retries
inside one per-tool deadline; every tool is wrapped so a failure restores the session
state and the caller hears a short natural sentence (:mod:`src.error_recovery`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp
from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    Agent,
    AgentServer,
    AgentSession,
    APIConnectOptions,
    JobContext,
    JobProcess,
    ModelSettings,
    RunContext,
    cli,
    function_tool,
    llm,
    stt,
    tts,
    vad,
)
from livekit.agents.llm import ToolError
from livekit.agents.voice.agent_session import SessionConnectOptions
from livekit.agents.voice.events import (
    CloseEvent,
    ConversationItemAddedEvent,
    ErrorEvent,
    UserInputTranscribedEvent,
)

# Plugins must register on the main thread: import them here, not inside prewarm or jobs.
from livekit.plugins import deepgram, openai, silero

from src.error_recovery import (
    ERROR_RESPONSES,
    CircuitBreaker,
    ErrorRecoveryMixin,
    VoiceRetryPolicy,
)
from src.errors import (
    CircuitOpenError,
    InvalidRequest,
    NotFound,
)
from src.redaction import get_logger, install_redaction
from src.services.amplitude import AmplitudeClient, TrialUsage
from src.services.chilipiper import (
    BookedMeeting,
    ChiliPiperClient,
    DemoSlot,
    SlotUnavailable,
    spoken_time,
)
from src.services.crm import CrmContact
from src.services.http import HttpOptions, write_outcome_is_ambiguous
from src.services.hubspot import HubSpotClient
from src.services.salesforce import SalesforceClient
from src.settings import Settings, SettingsError, load_settings
from src.validation import is_valid_email

__all__ = [
    "SERVICE_NAMES",
    "PandaDocTrialistAgent",
    "SessionErrorHandler",
    "SpokenApology",
    "TrialistData",
    "TrialistServices",
    "build_session",
    "on_session_error",
    "server",
]

logger = get_logger("pandadoc.agent")

T = TypeVar("T")
SERVICE_NAMES = ("amplitude", "salesforce", "chilipiper", "hubspot")
_MAX_SUMMARY_CHARS = 2000
_MIN_ATTEMPT_S = 0.5  # no request starts with less time than this left in the tool budget

INSTRUCTIONS = """\
You are Ava, a friendly PandaDoc specialist on a voice call with someone on a PandaDoc free \
trial. Help them get real value from the trial: answer questions about PandaDoc, check how \
their trial is going, and when it fits, offer to book a short demo with our sales team.

How you speak: warm, concise, natural. One or two short sentences per turn. No lists, no \
markdown, no symbols, no links. Say numbers and times the way a person would, like \
"three documents" or "Tuesday at two in the afternoon".

Tools: use get_trial_usage to see what they have done so far, lookup_account to see who \
they are in our records, check_demo_availability before offering demo times, book_demo only \
with an option you offered, and log_call_summary near the end of the call with a one or two \
sentence summary and their interest level. If a tool answers with a sentence about a \
problem, pass the gist on kindly in your own words and carry on with what still works. \
Never mention tools, systems, errors or technical details to the caller.
"""


# --------------------------------------------------------------------------------------
# Session state
# --------------------------------------------------------------------------------------


@dataclass
class TrialistData:
    """What this conversation knows. The error-recovery wrapper snapshots it before each
    tool and restores it when a tool fails, so a failure never leaves half-written state.

    Attributes:
        email: the trialist's work email (participant attributes, job metadata, console
            setting, or said by the caller and validated).
        name: their name when known.
        timezone: IANA zone for speaking demo times.
        usage: product usage found in Amplitude.
        crm_source / crm_record_id / crm_summary: the CRM record found, if any.
        offered_slots: demo options offered in this conversation, by option number.
        booked_meeting: the demo booked in this conversation.
        demo_requested: the slot id handed to sales through the CRM when booking failed.
        summaries_logged: call summaries saved to the CRM.
    """

    email: str | None = None
    name: str | None = None
    timezone: str = "America/New_York"
    usage: TrialUsage | None = None
    crm_source: str | None = None
    crm_record_id: str | None = None
    crm_summary: str | None = None
    offered_slots: dict[int, DemoSlot] = field(default_factory=dict)
    booked_meeting: BookedMeeting | None = None
    demo_requested: str | None = None
    summaries_logged: int = 0


WriteOutcome = Literal["saved", "queued", "rejected", "unknown"]


@dataclass
class PendingWrite:
    """A CRM write that could not be sent (circuit open, rate limited, refused): kept
    outside the session state so a tool's rollback cannot drop it, and retried later."""

    source: str
    record_id: str
    subject: str
    body: str
    attempts: int = 0


# --------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------


@dataclass
class TrialistServices:
    """The four vendor clients; a service without configuration is ``None`` and its
    tools answer with a spoken fallback instead of failing."""

    amplitude: AmplitudeClient | None = None
    salesforce: SalesforceClient | None = None
    hubspot: HubSpotClient | None = None
    chilipiper: ChiliPiperClient | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, session: aiohttp.ClientSession | None = None
    ) -> TrialistServices:
        r = settings.resilience
        options = HttpOptions(
            timeout=r.service_timeout, connect_timeout=min(1.0, r.service_timeout)
        )
        a, s, h, c = (
            settings.amplitude,
            settings.salesforce,
            settings.hubspot,
            settings.chilipiper,
        )
        services = cls(
            amplitude=AmplitudeClient(
                a.api_key, a.secret_key, a.base_url, options=options, session=session
            )
            if a.configured
            else None,
            salesforce=SalesforceClient(
                s.instance_url, s.client_id, s.client_secret, options=options, session=session
            )
            if s.configured
            else None,
            hubspot=HubSpotClient(h.access_token, h.base_url, options=options, session=session)
            if h.configured
            else None,
            chilipiper=ChiliPiperClient(
                c.api_key,
                c.distribution_id,
                c.meeting_type_id,
                c.base_url,
                options=options,
                session=session,
            )
            if c.configured
            else None,
        )
        missing = [name for name in SERVICE_NAMES if getattr(services, name) is None]
        if missing:
            logger.warning("Not configured, tools will use spoken fallbacks: %s", missing)
        return services

    async def aclose(self) -> None:
        for client in (self.amplitude, self.salesforce, self.hubspot, self.chilipiper):
            if client is not None:
                await client.aclose()


# --------------------------------------------------------------------------------------
# Spoken fallbacks (tool outputs the LLM passes on; never technical)
# --------------------------------------------------------------------------------------

USAGE_FALLBACK = (
    "I can't pull up your trial activity right now, but I'm happy to help with anything else."
)
USAGE_NOT_FOUND = (
    "I couldn't find a trial under that email. Could you double-check the address for me?"
)
ACCOUNT_FALLBACK = (
    "I can't reach your account details right now, but we can keep going without them."
)
ACCOUNT_NOT_FOUND = "I couldn't find an account under that email yet, and that's okay."
SLOTS_FALLBACK = (
    "I can't see the demo calendar right now. I can try again in a moment, or we can keep chatting."
)
NO_SLOTS = "There are no open demo times in the next few days. Want me to check further out?"
SLOT_TAKEN = "Someone just took that time. Shall I check what else is open?"
BOOK_FALLBACK = (
    "I couldn't lock in that time just now, so it isn't booked yet. Shall I try again in a moment?"
)
NOTE_QUEUED = (
    "I couldn't save that note just now. I'll hold on to it and try again before we finish."
)
# Honest: the outcome is unknown, and re-sending could duplicate it (operators get an
# error log line to check the CRM by hand).
NOTE_UNCONFIRMED = "I couldn't confirm that the note was saved, so please don't count on it."
NOTE_FAILED = "I couldn't save that note, so please don't count on it."
NOTE_NO_CRM = "I can't reach our records right now, so I couldn't save that note."
NOTE_NO_RECORD = "There's no account on file to attach that note to yet, so I haven't saved it."
ASK_EMAIL = "What's the email address on your PandaDoc trial?"
BAD_EMAIL = "That email address doesn't sound quite right. Could you spell it out for me?"
FILLER = "One moment while I pull that up."
FILLER_WRITE = "One moment while I take care of that."
# LiveKit itself answers a malformed tool call with parser text (pydantic messages, type
# names, URLs). The model must never see or repeat that: it gets these sentences instead.
BAD_TOOL_ARGUMENTS = (
    "That request was missing a detail in a form I can use. "
    "Ask the caller to say it again in plain words."
)
UNKNOWN_TOOL = "There is no such action. Carry on with the actions you have."
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


# --------------------------------------------------------------------------------------
# The agent
# --------------------------------------------------------------------------------------


class PandaDocTrialistAgent(ErrorRecoveryMixin, Agent):
    """The trialist agent. ``services`` are the vendor clients; ``settings`` supply the
    breaker and retry tuning; ``clock``/``sleep`` are injectable for tests."""

    def __init__(
        self,
        services: TrialistServices,
        settings: Settings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(instructions=INSTRUCTIONS)
        self.settings = settings or Settings()
        r = self.settings.resilience
        self.services = services
        self.circuit_breakers: dict[str, CircuitBreaker] = {
            name: CircuitBreaker(
                failure_threshold=r.failure_threshold,
                recovery_timeout=r.recovery_timeout,
                name=name,
                clock=clock,
            )
            for name in SERVICE_NAMES
        }
        self.retry_policy = VoiceRetryPolicy(
            max_retries=r.max_retries,
            base_delay=r.base_delay,
            max_delay=r.max_delay,
            jitter=r.jitter,
        )
        self.retry_clock = clock
        self.retry_sleep = sleep
        self._now = now
        self.pending_writes: list[PendingWrite] = []
        self._flush_lock = asyncio.Lock()
        self._background: set[asyncio.Task[int]] = set()

    # -- tools ---------------------------------------------------------------------------
    @function_tool()
    async def get_trial_usage(self, context: RunContext[TrialistData], email: str = "") -> str:
        """Look up how the caller has used their PandaDoc trial so far: documents created,
        sent and completed, templates, integrations and days left in the trial.

        Args:
            email: The caller's work email, only if they just said it. Leave empty to use
                the email already on file for this call.
        """
        return await self._run_tool(
            context, "get_trial_usage", lambda: self._trial_usage(context, email)
        )

    @function_tool()
    async def lookup_account(self, context: RunContext[TrialistData], email: str = "") -> str:
        """Find the caller's account in our CRM: their name, role and company.

        Args:
            email: The caller's work email, only if they just said it. Leave empty to use
                the email already on file for this call.
        """
        return await self._run_tool(
            context, "lookup_account", lambda: self._lookup_account(context, email)
        )

    @function_tool()
    async def check_demo_availability(self, context: RunContext[TrialistData]) -> str:
        """Find open times for a short PandaDoc demo with our sales team over the next few
        business days. Call this before offering any demo time."""
        return await self._run_tool(
            context, "check_demo_availability", lambda: self._demo_slots(context)
        )

    @function_tool()
    async def book_demo(self, context: RunContext[TrialistData], option: int) -> str:
        """Book the demo time the caller chose.

        Args:
            option: The option number of a demo time offered earlier in this call
                (1 for the first time offered, 2 for the second, and so on).
        """
        return await self._run_tool(
            context, "book_demo", lambda: self._book_demo(context, option), filler=FILLER_WRITE
        )

    @function_tool()
    async def log_call_summary(
        self,
        context: RunContext[TrialistData],
        summary: str,
        interest: Literal["low", "medium", "high"] = "medium",
    ) -> str:
        """Save a short summary of this call to the caller's CRM record for the sales team.

        Args:
            summary: One or two plain sentences: what the caller needs and what was agreed.
            interest: How interested the caller is in buying: low, medium or high.
        """
        return await self._run_tool(
            context,
            "log_call_summary",
            lambda: self._log_summary(context, summary, interest),
            filler=FILLER_WRITE,
        )

    # -- tool bodies -----------------------------------------------------------------------
    async def _trial_usage(self, context: RunContext[TrialistData], email: str) -> str:
        data = context.userdata
        address = self._resolve_email(data, email)
        client = self.services.amplitude
        if client is None:
            raise ToolError(USAGE_FALLBACK)
        try:
            result = await self._protected(
                "amplitude",
                lambda: client.get_trial_usage(address),
                USAGE_FALLBACK,
                reraise=(NotFound, InvalidRequest),
            )
        except (NotFound, InvalidRequest):
            raise ToolError(USAGE_NOT_FOUND) from None
        data.email = address
        data.usage = result
        return result.spoken_summary()

    async def _lookup_account(self, context: RunContext[TrialistData], email: str) -> str:
        data = context.userdata
        address = self._resolve_email(data, email)
        found = await self._find_crm_record(address)
        data.email = address
        if found is None:
            raise ToolError(ACCOUNT_NOT_FOUND)
        data.crm_source, data.crm_record_id = found.source, found.id
        data.crm_summary = found.spoken_summary()
        data.name = data.name or found.full_name
        self._flush_soon()  # the CRM answers again: send what waited, in the background
        return data.crm_summary

    async def _find_crm_record(
        self, email: str, deadline_at: float | None = None
    ) -> CrmContact | None:
        """Salesforce first, HubSpot when Salesforce fails or has no record, all inside one
        tool deadline (``deadline_at`` on the retry clock; default: a fresh one). ``None``
        when neither CRM has the person; ``ToolError`` with a spoken fallback when no CRM
        could answer."""
        if deadline_at is None:
            deadline_at = self._deadline()
        answered_not_found = False
        sf, hs = self.services.salesforce, self.services.hubspot
        if sf is not None:
            # A slow Salesforce must leave HubSpot a fair share of the budget.
            reserve = self._reserve() if hs is not None else 0.0
            try:
                person = await self._protected(
                    "salesforce",
                    lambda: sf.find_person(email),
                    ACCOUNT_FALLBACK,
                    reraise=(NotFound, InvalidRequest),
                    deadline_at=deadline_at - reserve,
                )
            except (NotFound, InvalidRequest):
                answered_not_found = True
            except ToolError:
                logger.info("Salesforce unavailable, falling back to HubSpot")
            else:
                return person
        if hs is not None and self.retry_clock() < deadline_at:
            try:
                contact = await self._protected(
                    "hubspot",
                    lambda: hs.find_contact(email),
                    ACCOUNT_FALLBACK,
                    reraise=(NotFound, InvalidRequest),
                    deadline_at=deadline_at,
                )
            except (NotFound, InvalidRequest):
                return None
            return contact
        if answered_not_found:
            return None
        raise ToolError(ACCOUNT_FALLBACK)

    async def _demo_slots(self, context: RunContext[TrialistData]) -> str:
        data = context.userdata
        client = self.services.chilipiper
        if client is None:
            raise ToolError(SLOTS_FALLBACK)
        slots = await self._protected(
            "chilipiper",
            lambda: client.get_demo_slots(self._now(), days=5, limit=3),
            SLOTS_FALLBACK,
        )
        if not slots:
            return NO_SLOTS
        data.offered_slots = {i: slot for i, slot in enumerate(slots, start=1)}
        tz = _zone(data.timezone)
        offers = "; ".join(f"option {i} is {s.spoken(tz)}" for i, s in data.offered_slots.items())
        return f"Open demo times: {offers}. Ask which one works best."

    async def _book_demo(self, context: RunContext[TrialistData], option: int) -> str:
        data = context.userdata
        if not data.offered_slots:
            raise ToolError("I haven't offered any demo times yet. Let me check what's open.")
        slot = data.offered_slots.get(option) if isinstance(option, int) else None
        if slot is None:
            raise ToolError("That isn't one of the times I offered. Which of those works best?")
        tz = _zone(data.timezone)
        if data.booked_meeting is not None:
            if data.booked_meeting.slot_id == slot.slot_id:
                return data.booked_meeting.spoken_summary(tz)
            # One demo per caller: never a second meeting by accident.
            when = spoken_time(data.booked_meeting.starts_at, tz)
            raise ToolError(
                f"You already have a demo booked for {when}. "
                "If you'd like a different time, our sales team can move it for you."
            )
        if not data.email:
            raise ToolError(ASK_EMAIL)
        client = self.services.chilipiper
        if client is None:
            raise ToolError(BOOK_FALLBACK)
        email, name = data.email, data.name or ""
        deadline_at = self._deadline()
        try:
            # Safe to retry: the client sends a deterministic idempotency key. The
            # reserve leaves time to hand the request to sales if booking fails.
            meeting = await self._protected(
                "chilipiper",
                lambda: client.book_demo(email, name, slot),
                BOOK_FALLBACK,
                reraise=(SlotUnavailable,),
                deadline_at=deadline_at - self._reserve(),
            )
        except SlotUnavailable:
            raise ToolError(SLOT_TAKEN) from None
        except ToolError:
            return await self._hand_demo_to_sales(context, slot, deadline_at)
        data.booked_meeting = meeting
        return meeting.spoken_summary(tz)

    async def _hand_demo_to_sales(
        self, context: RunContext[TrialistData], slot: DemoSlot, deadline_at: float
    ) -> str:
        """Graceful degradation when booking fails: the chosen time goes to the sales
        team as a CRM task/note, so the caller still gets a human follow-up."""
        data = context.userdata
        when = slot.spoken(_zone(data.timezone))
        body = (
            f"The trialist asked for a PandaDoc demo on {when} "
            f"({slot.starts_at.isoformat()}). Automatic booking could not be confirmed "
            "(it may or may not exist in ChiliPiper); please check, and confirm the time "
            "with them by email."
        )
        try:
            outcome = await self._crm_write(context, "Demo requested", body, deadline_at)
        except ToolError:  # no CRM could answer the lookup
            outcome = "unknown"
        if outcome == "saved":
            data.demo_requested = slot.slot_id
            return (
                f"I couldn't confirm the booking directly, so I've passed {when} to our "
                "sales team, and they'll confirm it with you by email."
            )
        if outcome == "queued":
            data.demo_requested = slot.slot_id
            return (
                f"I couldn't confirm the booking directly. I've noted {when} for our "
                "sales team and will pass it on before we finish."
            )
        raise ToolError(BOOK_FALLBACK)

    async def _log_summary(
        self, context: RunContext[TrialistData], summary: str, interest: str
    ) -> str:
        data = context.userdata
        deadline_at = self._deadline()
        text = " ".join(str(summary).split())
        if not text:
            raise ToolError("What would you like me to note down from our call?")
        text = text[:_MAX_SUMMARY_CHARS]
        level = interest if interest in ("low", "medium", "high") else "medium"
        subject = f"Trialist call summary (interest: {level})"
        try:
            outcome = await self._crm_write(context, subject, text, deadline_at)
        except ToolError as exc:
            if exc.message == ASK_EMAIL:
                raise
            raise ToolError(NOTE_NO_CRM) from None  # no CRM could even find the record
        if outcome == "saved":
            data.summaries_logged += 1
            return "Thanks, I've saved a note of our call for the team."
        if outcome == "no_record":
            raise ToolError(NOTE_NO_RECORD)
        if outcome == "queued":
            raise ToolError(NOTE_QUEUED)
        if outcome == "rejected":
            raise ToolError(NOTE_FAILED)
        raise ToolError(NOTE_UNCONFIRMED)

    async def _crm_write(
        self, context: RunContext[TrialistData], subject: str, body: str, deadline_at: float
    ) -> WriteOutcome | Literal["no_record"]:
        """Write to the caller's CRM record (looked up first if needed). A write that
        certainly did not apply is queued on the agent, outside the session state, so a
        tool's rollback cannot drop it."""
        data = context.userdata
        if data.crm_record_id is None or data.crm_source is None:
            if not data.email:
                raise ToolError(ASK_EMAIL)
            found = await self._find_crm_record(data.email, deadline_at)
            if found is None:
                return "no_record"
            data.crm_source, data.crm_record_id = found.source, found.id
            data.crm_summary = found.spoken_summary()
        write = PendingWrite(data.crm_source, data.crm_record_id, subject, body)
        outcome = await self._send_write(write, deadline_at)
        if outcome == "queued":
            self.pending_writes.append(write)
        return outcome

    # -- writes that must not be lost or doubled ------------------------------------------
    async def _send_write(
        self, write: PendingWrite, deadline_at: float | None = None
    ) -> WriteOutcome:
        """Send one CRM write once (never blindly retried: neither CRM offers an
        idempotency key), within ``deadline_at`` when given.

        Returns ``saved``; ``queued`` when it certainly did not apply and may be sent
        again later (not even sent when the budget left is shorter than one attempt);
        ``rejected`` when the CRM refused it for good; ``unknown`` when it may have
        applied (operators get an error log line to check by hand).
        """
        deadline = None
        if deadline_at is not None:
            deadline = deadline_at - self.retry_clock()
            if deadline < self.settings.resilience.service_timeout:
                return "queued"  # a write cut short would leave its outcome unknown
        write.attempts += 1

        async def send() -> str:
            if write.source == "salesforce" and self.services.salesforce is not None:
                return await self.services.salesforce.create_task(
                    write.record_id, write.subject, write.body
                )
            if write.source == "hubspot" and self.services.hubspot is not None:
                return await self.services.hubspot.create_note(
                    write.record_id, f"{write.subject}\n\n{write.body}"
                )
            raise CircuitOpenError(write.source)  # not configured: nothing was sent

        try:
            result = await self.call_with_retry_and_circuit_breaker(
                write.source, send, "", max_retries=0, deadline=deadline, reraise=(Exception,)
            )
        except asyncio.CancelledError:
            logger.error("CRM write cancelled in flight; its outcome is unknown")
            raise
        except (InvalidRequest, NotFound) as exc:
            logger.error("CRM write rejected (%s); not saved", type(exc).__name__)
            return "rejected"
        except Exception as exc:
            if not write_outcome_is_ambiguous(exc):
                logger.warning("CRM write not applied (%s); queued", type(exc).__name__)
                return "queued"
            logger.error(
                "CRM write outcome unknown after %s; not re-sent to avoid a duplicate",
                type(exc).__name__,
                extra={"service": write.source},
            )
            return "unknown"
        if result == "":  # the circuit was open: nothing was sent
            return "queued"
        return "saved"

    async def flush_pending_writes(self) -> int:
        """Send queued CRM writes again; returns how many are still pending.

        Runs in the background after a CRM lookup succeeds, and at the end of the
        session. One flush at a time; each write leaves the queue before it is sent and
        comes back only if it certainly did not apply, so no write is sent twice or lost
        to a concurrent flush or a cancellation.
        """
        async with self._flush_lock:
            batch, self.pending_writes = self.pending_writes, []
            requeue: list[PendingWrite] = []
            try:
                while batch:
                    write = batch.pop(0)
                    outcome = await self._send_write(write)
                    if outcome == "queued":
                        requeue.append(write)
            finally:
                # Unsent ones (after a cancellation) and not-applied ones go back first.
                self.pending_writes[:0] = requeue + batch
            if self.pending_writes:
                logger.warning("%d CRM write(s) still pending", len(self.pending_writes))
            return len(self.pending_writes)

    def _flush_soon(self) -> None:
        """Flush queued writes without making the caller wait for them."""
        if not self.pending_writes:
            return
        task = asyncio.create_task(self.flush_pending_writes())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def on_exit(self) -> None:
        remaining = await self.flush_pending_writes()
        if remaining:
            logger.error("%d CRM write(s) could not be saved before the end", remaining)

    def llm_node(
        self,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        model_settings: ModelSettings,
    ) -> Any:
        """LiveKit's default LLM node, fed a context without technical tool errors."""
        return Agent.default.llm_node(self, caller_safe_context(chat_ctx), tools, model_settings)

    # -- helpers ---------------------------------------------------------------------------
    async def _run_tool(
        self,
        context: RunContext[TrialistData],
        tool_name: str,
        body: Callable[[], Awaitable[str]],
        *,
        filler: str = FILLER,
    ) -> str:
        """Every tool: error recovery (state snapshot, natural phrase) and one filler
        sentence if the caller would otherwise wait in silence."""
        async with self._filler(context, filler):
            return await self.handle_tool_with_error_recovery(context, tool_name, body)

    async def _protected(
        self,
        service: str,
        func: Callable[[], Awaitable[T]],
        fallback: str,
        *,
        reraise: tuple[type[BaseException], ...] = (),
        deadline_at: float | None = None,
    ) -> T:
        """A service call through breaker + retries inside the tool deadline; a fallback
        becomes a ``ToolError`` carrying the spoken sentence."""
        if deadline_at is None:
            deadline_at = self._deadline()
        remaining = deadline_at - self.retry_clock()
        min_attempt = min(_MIN_ATTEMPT_S, self.settings.resilience.service_timeout)
        if remaining < min_attempt:
            # Too late for a useful attempt: answer now, and don't blame the service.
            logger.info("No time left in the tool budget for %s", service)
            raise ToolError(fallback)
        result = await self.call_with_retry_and_circuit_breaker(
            service,
            func,
            fallback,
            max_retries=self.retry_policy.max_retries,
            deadline=remaining,
            min_attempt=min_attempt,
            reraise=reraise,
        )
        if isinstance(result, str) and result == fallback:
            raise ToolError(fallback)
        return result  # type: ignore[return-value]

    def _reserve(self) -> float:
        """Seconds of a tool's budget kept back for a fallback step (one attempt's worth,
        at most a third of the deadline)."""
        r = self.settings.resilience
        return min(r.service_timeout, r.tool_deadline / 3)

    def _deadline(self) -> float:
        """When a tool started now must have answered, on the retry clock."""
        return self.retry_clock() + self.settings.resilience.tool_deadline

    @asynccontextmanager
    async def _filler(
        self, context: RunContext[TrialistData], sentence: str = FILLER
    ) -> AsyncIterator[None]:
        """Speak ``sentence`` once if the work inside leaves the caller waiting for
        ``FILLER_DELAY`` seconds."""
        with_filler = getattr(context, "with_filler", None)
        if with_filler is None:
            yield
            return
        async with with_filler(sentence, delay=self.settings.resilience.filler_delay):
            yield

    @staticmethod
    def _resolve_email(data: TrialistData, email: str) -> str:
        candidate = str(email or "").strip().lower()
        if candidate:
            if not is_valid_email(candidate):
                raise ToolError(BAD_EMAIL)
            return candidate
        if data.email:
            return data.email
        raise ToolError(ASK_EMAIL)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


# --------------------------------------------------------------------------------------
# Session assembly and the error handler
# --------------------------------------------------------------------------------------


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
    base_url = m.openai_base_url or NOT_GIVEN
    api_key = m.openai_api_key or NOT_GIVEN
    primary = openai.LLM(model=m.llm_model, base_url=base_url, api_key=api_key)
    if not m.fallback_llm_model:
        return primary
    secondary = openai.LLM(model=m.fallback_llm_model, base_url=base_url, api_key=api_key)
    return llm.FallbackAdapter(
        [primary, secondary], attempt_timeout=settings.resilience.llm_timeout
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
        self.text = text or f"{ERROR_RESPONSES['service_unavailable'][0]} {_APOLOGY}"
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


_APOLOGY = "I apologize for the interruption."
GOODBYE = (
    "I'm sorry, I'm having trouble on my end, so let's pick this up another time. "
    "Thank you for your patience, and goodbye."
)


def on_session_error(
    session: AgentSession[Any], event: ErrorEvent, apology: SpokenApology | None = None
) -> asyncio.Task[None] | None:
    """The spec's session ``"error"`` handler. Recoverable errors are logged (LiveKit is
    retrying); an unrecoverable one makes the agent apologise out loud instead of going
    silent. When the TTS is what failed and ``apology`` holds pre-rendered audio, that
    audio is played (the failing TTS is not asked again). Returns the speaking task."""
    error = event.error
    source = type(event.source).__name__
    cause = type(getattr(error, "error", error)).__name__
    if getattr(error, "recoverable", False):
        logger.info("Recoverable %s error: %s", source, cause)
        return None
    logger.error("Unrecoverable %s error: %s", source, cause)
    if isinstance(event.source, tts.TTS) and apology is not None and apology.frames:
        return _speak(session, apology.text, apology)
    agent = session.current_agent if _has_agent(session) else None
    if isinstance(agent, ErrorRecoveryMixin):
        phrase = agent.get_error_response("service_unavailable")
    else:
        phrase = ERROR_RESPONSES["service_unavailable"][0]
    return _speak(session, f"{phrase} {_APOLOGY}")


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
        self.session.on("error", self.on_error)
        self.session.on("conversation_item_added", self.on_item_added)
        self.session.on("user_input_transcribed", self.on_user_input)

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
        if text and _APOLOGY not in text and text != GOODBYE:
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

    session.on("close", _on_close)
    return session


# --------------------------------------------------------------------------------------
# Worker entry point
# --------------------------------------------------------------------------------------


def identity_from_job(metadata: str, attributes: dict[str, str]) -> tuple[str | None, str | None]:
    """(email, name) of the trialist from participant attributes, else job metadata JSON.
    Untrusted input: anything malformed is ignored with a log line."""
    email = attributes.get("email") or None
    name = attributes.get("name") or None
    if metadata:
        try:
            meta = json.loads(metadata)
        except ValueError:
            logger.warning("Job metadata is not JSON; ignoring it")
            meta = {}
        if isinstance(meta, dict):
            email = email or (meta.get("email") if isinstance(meta.get("email"), str) else None)
            name = name or (meta.get("name") if isinstance(meta.get("name"), str) else None)
    if email is not None:
        email = email.strip().lower()
        if not is_valid_email(email):
            logger.warning("Ignoring a malformed trialist email from the job")
            email = None
    if name is not None:
        name = " ".join(name.split())[:80] or None
    return email, name


try:
    SETTINGS = load_settings()
except SettingsError as exc:
    if __name__ == "__main__":  # a clear line for the operator, not a traceback
        raise SystemExit(f"Configuration error: {exc}") from None
    raise
# Metrics (src/metrics.py) are served by LiveKit's worker endpoint when PROMETHEUS_PORT is set.
server = AgentServer(prometheus_port=SETTINGS.agent.prometheus_port or None)


def prewarm(proc: JobProcess) -> None:
    proc.userdata["vad"] = silero.VAD.load()


server.setup_fnc = prewarm


@server.rtc_session(agent_name=SETTINGS.agent.agent_name)
async def entrypoint(ctx: JobContext) -> None:
    settings = SETTINGS
    install_redaction()  # the job's log handlers exist now; attach the filter to them
    services = TrialistServices.from_settings(settings)
    data = TrialistData(
        email=settings.agent.trialist_email or None,
        name=settings.agent.trialist_name or None,
        timezone=settings.agent.timezone,
    )
    agent = PandaDocTrialistAgent(services, settings)
    apology = SpokenApology(f"{agent.get_error_response('service_unavailable')} {_APOLOGY}")
    goodbye = SpokenApology(GOODBYE)
    session = build_session(
        settings,
        userdata=data,
        vad_model=ctx.proc.userdata.get("vad"),
        apology=apology,
        goodbye=goodbye,
    )

    async def _shutdown() -> None:
        # on_exit flushed already when the session closed; this catches a job that ends
        # without it (a no-op when nothing is pending).
        await agent.flush_pending_writes()
        await services.aclose()

    ctx.add_shutdown_callback(_shutdown)
    await session.start(agent=agent, room=ctx.room)
    tts_options = connect_options(settings).tts_conn_options
    prerender = asyncio.gather(
        apology.prerender(session.tts, tts_options), goodbye.prerender(session.tts, tts_options)
    )
    participant = await ctx.wait_for_participant() if ctx.room.isconnected() else None
    attributes = dict(participant.attributes) if participant is not None else {}
    email, name = identity_from_job(ctx.job.metadata or "", attributes)
    data.email = email or data.email
    data.name = name or data.name
    greeting = f"Hi {data.name.split()[0]}! " if data.name else "Hi there! "
    await session.say(
        greeting + "I'm Ava from PandaDoc. How is your trial going so far?",
        allow_interruptions=True,
    )
    await prerender  # keep a reference until done; failures are logged inside


if __name__ == "__main__":
    cli.run_app(server)
