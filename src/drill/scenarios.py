"""The drill's scenarios, and how one is run and judged (the command line: :mod:`.cli`).

Each :class:`Scenario` plays a scripted conversation through
:class:`~src.drill.harness.Conversation` with the production tuning (``ResilienceSettings``
defaults), injects its :class:`Fault` s and measures the turns against a budget;
:func:`run_scenario` judges them in a :class:`ScenarioReport`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from src.drill.contract_checks import (
    CHILIPIPER_CONDITIONS,
    booked_once_through_the_lookup,
    note_saved_on_the_retry,
)
from src.drill.fleet_outage import CONVERSATIONS as FLEET_CONVERSATIONS
from src.drill.fleet_outage import NOTE as FLEET_NOTE
from src.drill.fleet_outage import run_fleet_outage
from src.drill.harness import SILENCE_BUDGET, Conversation, TurnResult, technical_leaks
from src.drill.model_faults import stt_down_turn
from src.drill.seams import (
    NO_CACHE,
    SeamOutcome,
    blip_after_outage,
    flapping_half,
    outbox_poison_head,
)
from src.error_recovery.protection import reset_process_protection
from src.sandbox import FaultKind, SandboxServer
from src.sandbox.chilipiper import ChiliPiperServer
from src.sandbox.data import TRIAL_USERS
from src.sandbox.openai_server import ToolCall, Turn
from src.settings import ResilienceSettings

__all__ = [
    "DEFAULTS",
    "SCENARIOS",
    "Fault",
    "Scenario",
    "ScenarioReport",
    "judge_silence",
    "run_all",
    "run_scenario",
]

JANE = TRIAL_USERS[0].email
MARIA = next(u.email for u in TRIAL_USERS if not u.in_salesforce and u.in_hubspot)
DEFAULTS = ResilienceSettings()
VOICE_BUDGET = DEFAULTS.tool_deadline + 1.0  # a tool's deadline plus the model round trips
LLM_BUDGET = DEFAULTS.llm_timeout * (DEFAULTS.llm_max_retry + 1) + 1.0
FIRST_WORDS = 1.5  # every scenario: the caller hears something within this
FIRST_AUDIO = (
    1.5  # a stalled TTS: first audio (the apology) within 1.5 s (TTS_NO_AUDIO_TIMEOUT 1.2 s)
)
TURN_BUDGET = DEFAULTS.turn_deadline + 1.0  # a reply's tools answered within this


def _calls(*names: str) -> tuple[Turn, ...]:
    """The stand-in model's script: one reply calling ``names`` together."""
    return (Turn(tool_calls=[ToolCall(name, {"email": ""}) for name in names]),)


@dataclass(frozen=True)
class Fault:
    """``kind``: ``down`` (connection refused), ``stall`` / ``speech-stall`` (the model's
    chat / speech stream stops after its first chunk) or a :class:`FaultKind` value."""

    service: str
    kind: str
    endpoint: str = "*"
    retry_after: float = 1.0
    delay_ms: int = 0
    every: int = 2
    count: int | None = None  # requests the fault applies to (None: until cleared)

    async def apply(self, server: SandboxServer) -> None:
        if self.kind in CHILIPIPER_CONDITIONS:
            if not isinstance(server, ChiliPiperServer):
                raise ValueError(f"{self.service} cannot have {self.kind}")
            CHILIPIPER_CONDITIONS[self.kind](server)
        elif self.kind == "down":
            await server.go_down()
        elif self.kind in ("stall", "speech-stall"):
            stall = getattr(server, "stall_after_first_chunk", None)
            if stall is None:
                raise ValueError(f"{self.service} cannot stall")
            if self.kind == "speech-stall":
                stall(endpoint="/v1/audio/speech")
            else:
                stall()
        else:
            server.inject(
                self.endpoint,
                FaultKind(self.kind),
                retry_after=self.retry_after,
                delay_ms=self.delay_ms,
                every=self.every,
                count=self.count,
            )


@dataclass(frozen=True)
class Scenario:
    """One drill: ``warmup`` turns run healthy, then ``faults`` are injected and
    ``turns`` are measured against ``budget_s`` (end of user turn -> first words, 1.5 s
    for every scenario) and ``turn_budget_s`` (the whole turn)."""

    name: str
    what: str
    faults: tuple[Fault, ...]
    turns: tuple[str, ...]
    budget_s: float = FIRST_WORDS
    email: str = JANE
    warmup: tuple[str, ...] = ()
    failing: str = ""  # service whose requests are counted (default: first fault's)
    recovery: bool = False  # after the turns: heal, skip the recovery timeout, one more turn
    flush: bool = False  # after the turns: heal and flush queued CRM writes
    fleet: bool = False  # conversations in separate processes (src/drill/fleet_outage.py)
    script: tuple[Turn, ...] = ()  # the stand-in model's replies for the measured turns
    turn_budget_s: float | None = VOICE_BUDGET  # whole turn (user text -> reply done)
    action: Callable[[Conversation], Awaitable[TurnResult]] | None = None  # replaces turns
    audio: bool = False  # production TTS + an audio sink; first words = first audio frame
    # issue #23: plays its own turns and judges them (src/drill/seams.py)
    seam: Callable[[Conversation], Awaitable[SeamOutcome]] | None = None
    env: tuple[tuple[str, str], ...] = ()  # extra environment for the conversation
    # After the turns (and the flush): what the vendors hold, as problems (empty: ok).
    check: Callable[[Conversation, list[TurnResult]], list[str]] | None = None


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("baseline", "no faults", (), ("how is my trial usage?",), failing="amplitude"),
    Scenario(
        "amplitude-503",
        "usage service answers 503",
        (Fault("amplitude", "503"),),
        ("how is my trial usage?",),
    ),
    Scenario(
        "amplitude-hang",
        "usage service never answers",
        (Fault("amplitude", "hang"),),
        ("how is my trial usage?",),
    ),
    Scenario(
        "amplitude-slow",
        "usage service 2.2 s per request (under the 2.5 s timeout)",
        (Fault("amplitude", "slow", delay_ms=2200),),
        ("how is my trial usage?",),
    ),
    Scenario(
        "salesforce-down",
        "Salesforce refuses connections; HubSpot answers",
        (Fault("salesforce", "down"),),
        ("what's on my account?",),
    ),
    Scenario(
        "salesforce-429",
        "Salesforce rate limits with Retry-After 1",
        (Fault("salesforce", "429", retry_after=1.0),),
        ("what's on my account?",),
    ),
    Scenario(
        "hubspot-500",
        "HubSpot-only contact, HubSpot answers 500",
        (Fault("hubspot", "500"),),
        ("what's on my account?",),
        email=MARIA,
    ),
    Scenario(
        "chilipiper-flapping",
        "calendar fails every other request",
        (Fault("chilipiper", "flapping", every=2),),
        ("any demo times?", "book the second option"),
        warmup=("any demo times?",),
    ),
    Scenario(
        "chilipiper-book-401",
        "booking rejected: bad credentials",
        (Fault("chilipiper", "401"),),
        ("book the second option",),
        warmup=("any demo times?",),
    ),
    *(
        Scenario(
            f"chilipiper-book-{kind}",
            what,
            (Fault("chilipiper", kind, retry_after=1.0),),
            ("book the second option",),
            warmup=("any demo times?",),
        )
        for kind, what in (
            ("503", "booking answers 503; the time goes to sales"),
            ("hang", "booking never answers; the time goes to sales"),
            ("429", "booking rate limited with Retry-After 1"),
            ("malformed", "booking answers a garbled 200; outcome unknown, to sales"),
            ("slot-taken", "someone takes the time just before us; fresh options"),
            ("route-expired", "the booking route expired; renewed, booked"),
            ("lost-after-applied", "booked, but the answer is lost; found by lookup"),
        )
    ),
    Scenario(
        "chilipiper-book-answer-lost",
        "booked, then the connection drops before the answer; found by the meeting list",
        (Fault("chilipiper", "answer-lost"),),
        ("book the second option",),
        warmup=("any demo times?",),
        check=booked_once_through_the_lookup,
    ),
    Scenario(
        "salesforce-lock-row",
        "summary write meets UNABLE_TO_LOCK_ROW; kept, saved on the retry",
        (Fault("salesforce", "lock-row", endpoint="*/sobjects/Task"),),
        ("please log a summary: wants a demo next week",),
        warmup=("what's on my account?",),
        flush=True,
        check=note_saved_on_the_retry,
    ),
    Scenario(
        "crm-write-outage",
        "summary write while Salesforce is down; queued, flushed after",
        (Fault("salesforce", "down"),),
        ("please log a summary: wants a demo next week",),
        warmup=("what's on my account?",),
        flush=True,
    ),
    Scenario(
        "circuit-recovery",
        "usage 503 x3 opens the circuit; fast fallback; probe after 30 s (clock jumped)",
        (Fault("amplitude", "503"),),
        ("how is my trial usage?",) * 4,
        recovery=True,
    ),
    Scenario(
        "llm-unreachable",
        "model endpoint refuses connections",
        (Fault("openai", "down"),),
        ("how is my trial usage?",),
        turn_budget_s=LLM_BUDGET,
    ),
    Scenario(
        "llm-stall",
        "model stream stops after its first chunk",
        (Fault("openai", "stall"),),
        ("hello there",),
        turn_budget_s=LLM_BUDGET,
    ),
    # -- turn scope ---------------------------------------------------------------------
    Scenario(
        "two-tools-outage",
        "one reply asks usage + account while Amplitude and both CRMs hang",
        (Fault("amplitude", "hang"), Fault("salesforce", "hang"), Fault("hubspot", "hang")),
        ("how is my trial and my account?",),
        script=_calls("get_trial_usage", "lookup_account"),
        turn_budget_s=TURN_BUDGET,
    ),
    Scenario(
        "parallel-tools",
        "one reply makes 20 tool calls (usage + account) while Amplitude and Salesforce hang",
        (Fault("amplitude", "hang"), Fault("salesforce", "hang")),
        ("tell me everything",),
        script=_calls(*("get_trial_usage", "lookup_account") * 10),
        turn_budget_s=TURN_BUDGET,
    ),
    Scenario(
        "llm-first-token-stall",
        "model accepts every request and sends nothing (dead): filler, then the apology",
        (Fault("openai", "hang", endpoint="/v1/chat/completions"),),
        ("hello there",),
        turn_budget_s=LLM_BUDGET,
    ),
    Scenario(
        "llm-primary-stall",
        "the primary model accepts the request and sends nothing; a fallback model is set",
        (Fault("openai", "hang", endpoint="/v1/chat/completions", count=1),),
        ("hello there",),
        env=(("OPENAI_FALLBACK_MODEL", "gpt-4o-mini-fallback"),),
        turn_budget_s=LLM_BUDGET,
    ),
    Scenario(
        "llm-mid-stream-stall",
        "model stream stops mid-sentence: the reply is closed naturally",
        (Fault("openai", "stall"),),
        ("hello there",),
        turn_budget_s=DEFAULTS.llm_timeout + 1.0,  # bridge at 1 s, repair before LLM_TIMEOUT
    ),
    Scenario(
        "tts-stall",
        "speech stream accepted, stops after its first chunk: the pre-rendered apology plays",
        (Fault("openai", "speech-stall"),),
        ("hello there",),
        budget_s=FIRST_AUDIO,
        audio=True,
    ),
    Scenario(
        "stt-down",
        "speech recognition endpoint down: real STT fails, the session hears of it",
        (Fault("openai", "down"),),
        (),
        failing="openai",
        action=stt_down_turn,
    ),
    # -- issue #23: where protections meet --------------------------------------------------
    Scenario(
        "blip-after-outage",
        "usage dead (circuit opens), healed (probe), then one reset mid-body: retried, data",
        (),
        (),
        failing="amplitude",
        seam=blip_after_outage,
        env=tuple(NO_CACHE.items()),
    ),
    Scenario(
        "flapping-half",
        "every other usage search fails: every call answered, the circuit stays closed",
        (),
        (),
        failing="amplitude",
        seam=flapping_half,
        env=tuple(NO_CACHE.items()),
    ),
    Scenario(
        "outbox-poison-head",
        "an unsendable CRM write ahead of 20: the 20 go in one drain, the head dead-lettered",
        (),
        (),
        failing="salesforce",
        seam=outbox_poison_head,
    ),
    Scenario(
        "fleet-outage",
        "6 conversations in separate processes (3 at a time), usage 503, shared SQLite store",
        (Fault("amplitude", "503"),),
        (),
        fleet=True,
    ),
)


@dataclass
class ScenarioReport:
    name: str
    what: str
    heard: str
    first_words_s: float | None
    tool_s: float | None
    turn_s: float
    requests: list[int]
    failing: str
    transitions: list[str]
    budget_s: float
    turn_budget_s: float | None
    verdict: str
    problems: list[str] = field(default_factory=list)
    note: str = ""
    # The longest silence the caller heard in any turn (see TurnResult.longest_silence_s).
    longest_silence_s: float | None = None
    silence_budget_s: float = SILENCE_BUDGET


async def run_scenario(scenario: Scenario) -> ScenarioReport:
    # Each scenario is a new call, and LiveKit runs each call in a job process of its own:
    # what a process shares (rate windows, bulkheads, retry budget, latency history) must
    # not carry over from the scenario before.
    reset_process_protection()
    if scenario.fleet:
        return await _fleet_report(scenario)
    failing = scenario.failing or (scenario.faults[0].service if scenario.faults else "")
    problems: list[str] = []
    note = ""
    async with Conversation(
        email=scenario.email, audio=scenario.audio, env=dict(scenario.env)
    ) as conv:
        for text in scenario.warmup:
            await conv.turn(text)
        for fault in scenario.faults:
            await fault.apply(conv.sandbox.servers[fault.service])
        conv.sandbox.openai.say(*scenario.script)
        turns: list[TurnResult] = [await conv.turn(text) for text in scenario.turns]
        if scenario.action is not None:
            turns.append(await scenario.action(conv))
        if scenario.seam is not None:
            seam = await scenario.seam(conv)
            turns.extend(seam.turns)
            problems.extend(seam.problems)
            note = seam.note
        if scenario.flush or scenario.recovery:
            for server in conv.sandbox.servers.values():
                server.clear()
                await server.come_up()
        if scenario.flush:
            queued = len(conv.agent.pending_writes)
            remaining = await conv.agent.flush_pending_writes()
            note = f"queued {queued}, still pending after flush {remaining}"
            if remaining:
                problems.append("write still pending after recovery")
        if scenario.recovery:
            recovery = conv.settings.resilience.recovery_timeout
            conv.clock.advance(recovery + 1)
            note = f"clock jumped {recovery:g} s (recovery timeout) before the last turn"
            turns.append(await conv.turn(scenario.turns[-1]))
        if scenario.audio and conv.audio_sink is not None:
            rescue = conv.agent.tts_rescue
            frames = len(rescue.frames) if rescue is not None else 0
            note = (
                f"audio: the TTS stream stalled; the pre-rendered apology ({frames} frames) played"
            )
        if scenario.check is not None:
            problems.extend(scenario.check(conv, turns))
        history = conv.assistant_history()
        transitions = [str(t) for t in conv.transitions]
    for turn in turns:
        if turn.failure:
            problems.append(f"turn raised {turn.failure}")
        if not turn.said:
            problems.append("silence")
        problems.extend(turn.leaks())
    problems.extend(leak for text in history for leak in technical_leaks(text))
    first = [t.first_audio_s if scenario.audio else t.first_words_s for t in turns]
    measured = [f for f in first if f is not None]
    worst_first = max(measured) if measured and len(measured) == len(first) else None
    if worst_first is None:
        problems.append("no first words measured")
    elif worst_first > scenario.budget_s:
        problems.append(f"first words {worst_first:.2f}s > budget {scenario.budget_s:g}s")
    if scenario.turn_budget_s is not None and turns:
        slowest = max(t.total_s for t in turns)
        if slowest > scenario.turn_budget_s:
            problems.append(f"turn {slowest:.2f}s > budget {scenario.turn_budget_s:g}s")
    longest_silence = judge_silence(turns, problems)
    tool_times = [t.tool_resolution_s for t in turns if t.tool_resolution_s is not None]
    tool_limit = DEFAULTS.tool_deadline + 0.5
    if tool_times and max(tool_times) > tool_limit:
        problems.append(f"tool took {max(tool_times):.2f}s > deadline {tool_limit:g}s")
    return ScenarioReport(
        name=scenario.name,
        what=scenario.what,
        heard=" | ".join(" ".join(t.said) for t in turns),
        first_words_s=worst_first,
        tool_s=max(tool_times) if tool_times else None,
        turn_s=max(t.total_s for t in turns),
        requests=[t.requests.get(failing, 0) for t in turns],
        failing=failing,
        transitions=transitions,
        budget_s=scenario.budget_s,
        turn_budget_s=scenario.turn_budget_s,
        verdict="MISS" if problems else "ok",
        problems=problems,
        note=note,
        longest_silence_s=longest_silence,
    )


def judge_silence(turns: Sequence[TurnResult], problems: list[str]) -> float | None:
    """The longest silence of ``turns``; a problem when it is over :data:`SILENCE_BUDGET`."""
    silences = [t.longest_silence_s for t in turns if t.longest_silence_s is not None]
    longest = max(silences) if silences else None
    if longest is not None and longest > SILENCE_BUDGET:
        problems.append(f"silence {longest:.2f}s > budget {SILENCE_BUDGET:g}s")
    return longest


async def run_all(scenarios: Sequence[Scenario]) -> list[ScenarioReport]:
    return [await run_scenario(s) for s in scenarios]


async def _fleet_report(scenario: Scenario) -> ScenarioReport:
    """The ``fleet-outage`` scenario: conversations in separate processes."""
    outcome = await run_fleet_outage(DEFAULTS)
    return ScenarioReport(
        name=scenario.name,
        what=scenario.what,
        heard=" | ".join(outcome.heard),
        first_words_s=None,
        tool_s=outcome.max_tool_s,
        turn_s=outcome.max_tool_s or 0.0,
        requests=[outcome.requests],
        failing="amplitude",
        transitions=[f"amplitude:open in {outcome.open_in}/{FLEET_CONVERSATIONS} processes"],
        budget_s=scenario.budget_s,
        turn_budget_s=scenario.turn_budget_s,
        verdict="MISS" if outcome.problems else "ok",
        problems=outcome.problems,
        note=FLEET_NOTE,
    )
