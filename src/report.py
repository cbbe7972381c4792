"""The per-call resilience report: what went wrong in one call, as the caller lived it.

When a call ends the agent writes **one structured log line** (logger ``pandadoc.report``)::

    Call report {"breaker_refusals": {"amplitude": 1}, "fallbacks": {"amplitude/failed": 1},
    "fillers": 1, "longest_silence_s": 0.8, "retries": {"amplitude": 2}, "tool_timeouts": {},
    "trust": "verified", "turns": 2, "writes": {"delivered": 0, ...}, ...}

and records the same figures in Prometheus (``pandadoc_calls_total`` and the
``pandadoc_call_*`` series of :mod:`src.metrics`). With an OpenTelemetry tracer provider
set (LiveKit's ``set_tracer_provider``), each fallback, retry, timeout, CRM write and
breaker transition is also an event on the span current when it happened (LiveKit's
``function_tool`` span for a tool call), and the figures become ``pandadoc.call.*``
attributes of the ``agent_session`` span.

Figures:
    fillers: filler sentences spoken (:data:`FILLERS`).
    fallbacks: ``"service/reason"`` -> count (``failed``, ``circuit_open``, ``bulkhead_full``).
    breaker_refusals: service -> calls an open circuit answered without calling it.
    breaker_trips: service -> transitions to ``open`` seen by this call.
    retries: service -> retried vendor requests.
    tool_timeouts: service -> vendor requests that timed out.
    writes: CRM writes of this call by outcome when sent: ``delivered``, ``queued`` (did not
        apply; the outbox sends it later), ``unconfirmed`` (outcome unknown; looked up
        before any resend), ``dead_lettered`` (will not be delivered: refused for good).
    longest_silence_s: the longest wait, in seconds, from the caller falling silent (or
        the agent stopping mid-turn, e.g. after a filler) to the agent speaking again, from
        the session's ``user_state_changed`` / ``conversation_item_added`` /
        ``agent_state_changed`` events.
    trust: the caller's trust level (:mod:`src.identity`).

The hooks (:func:`fallback`, :func:`retry`, :func:`timeout`, :func:`write`) take the
object making the call (the agent) and find its :class:`CallReport` as ``call_report``;
objects without one (unit-test agents) only update the Prometheus series.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from src import metrics, phrases
from src.events import listener
from src.redaction import get_logger

__all__ = [
    "FILLERS",
    "FINISHED_LISTENERS",
    "WRITE_OUTCOMES",
    "CallReport",
    "Mark",
    "Segment",
    "fallback",
    "retry",
    "timeout",
    "tracing_from_env",
    "write",
]

logger = get_logger("pandadoc.report")

FILLERS: frozenset[str] = frozenset(
    value
    for name, value in vars(phrases).items()
    if isinstance(value, str) and ("FILLER" in name or name == "MODEL_STALL_BRIDGE")
)
"""Every sentence that only fills a wait (``FILLER*`` and the model-stall bridge)."""

# The outbox's outcome of a send (src.outbox.WriteOutcome) -> the report's word.
WRITE_OUTCOMES = {
    "saved": "delivered",
    "queued": "queued",
    "checking": "unconfirmed",
    "unknown": "unconfirmed",
    "rejected": "dead_lettered",
}


FINISHED_LISTENERS: list[Callable[[CallReport], None]] = []
"""Called with each report as its call ends (the drill's ``--timeline`` collects them)."""


@dataclass(frozen=True)
class Segment:
    """Something that lasted, for the timeline: ``kind`` is ``caller``, ``filler``,
    ``answer``, ``tool`` or ``silence``; times are wall-clock seconds."""

    kind: str
    start: float
    end: float
    label: str = ""


@dataclass(frozen=True)
class Mark:
    """A breaker transition seen by the call (wall-clock seconds)."""

    at: float
    service: str
    state: str


@dataclass
class CallReport:
    """One call's resilience figures (see the module docstring)."""

    clock: Callable[[], float] = time.time
    fillers: int = 0
    fallbacks: Counter[str] = field(default_factory=Counter)
    breaker_refusals: Counter[str] = field(default_factory=Counter)
    breaker_trips: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    tool_timeouts: Counter[str] = field(default_factory=Counter)
    writes: Counter[str] = field(default_factory=Counter)
    trust: str = "none"
    turns: int = 0
    segments: list[Segment] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    finished: bool = False
    _quiet_since: float | None = None  # the caller (or the agent mid-turn) fell silent
    _user_since: float | None = None  # the caller started speaking (voice)
    _session: Any = None  # the session watched

    # -- figures -------------------------------------------------------------------------
    @property
    def silences(self) -> list[Segment]:
        return [s for s in self.segments if s.kind == "silence"]

    @property
    def longest_silence_s(self) -> float:
        return max((s.end - s.start for s in self.silences), default=0.0)

    def figures(self) -> dict[str, Any]:
        """The report as plain JSON-able values."""
        words = dict.fromkeys(WRITE_OUTCOMES.values())
        writes = {word: self.writes[word] for word in words}
        return {
            "fillers": self.fillers,
            "fallbacks": dict(self.fallbacks),
            "breaker_refusals": dict(self.breaker_refusals),
            "breaker_trips": dict(self.breaker_trips),
            "retries": dict(self.retries),
            "tool_timeouts": dict(self.tool_timeouts),
            "writes": writes,
            "longest_silence_s": round(self.longest_silence_s, 3),
            "trust": self.trust,
            "turns": self.turns,
        }

    # -- what the protected calls report ---------------------------------------------------
    def on_fallback(self, service: str, reason: str) -> None:
        self.fallbacks[f"{service}/{reason}"] += 1
        if reason == "circuit_open":
            self.breaker_refusals[service] += 1

    def on_transition(self, service: str, old: object, new: object) -> None:
        """A :class:`~src.error_recovery.CircuitBreaker` listener: a mark on the timeline
        and an event on the current span (the tool span whose call tripped it)."""
        state = str(getattr(new, "value", new))
        self.marks.append(Mark(self.clock(), service, state))
        if state == "open":
            self.breaker_trips[service] += 1
        _span_event(
            "pandadoc.circuit_breaker.transition",
            {
                "pandadoc.service": service,
                "pandadoc.breaker.from": str(getattr(old, "value", old)),
                "pandadoc.breaker.to": state,
            },
        )

    # -- what the session shows --------------------------------------------------------------
    def watch(self, session: Any) -> None:
        """Follow ``session``'s events (once per session, however often the agent
        enters it); the report is finished when it closes."""
        if session is self._session:
            return
        self._session = session
        session.on("user_state_changed", listener(self._on_user_state))
        session.on("agent_state_changed", listener(self._on_agent_state))
        session.on("conversation_item_added", listener(self._on_item))
        session.on("function_tools_executed", listener(self._on_tools))
        session.on("close", listener(lambda _event: self.finish(session)))

    def _on_user_state(self, event: Any) -> None:
        if event.new_state == "speaking":
            self._quiet_since = None
            self._user_since = event.created_at
        elif event.old_state == "speaking":
            start = self._user_since if self._user_since is not None else event.created_at
            self.segments.append(Segment("caller", start, event.created_at))
            self._user_since = None
            self._quiet_since = event.created_at

    def _on_agent_state(self, event: Any) -> None:
        if event.new_state == "speaking":
            if self._quiet_since is not None and event.created_at > self._quiet_since:
                self.segments.append(Segment("silence", self._quiet_since, event.created_at))
            self._quiet_since = None
        elif event.old_state == "speaking":
            # Still working on the reply (a filler was spoken): the caller waits again.
            self._quiet_since = event.created_at if event.new_state == "thinking" else None

    def _on_item(self, event: Any) -> None:
        item = event.item
        role = getattr(item, "role", None)
        text = getattr(item, "text_content", None) or ""
        if role == "user":
            self.turns += 1
            _sample_memory()
            if self._quiet_since is None and self._user_since is None:
                # Text input (or a transcript without VAD): the caller's turn ends now.
                self._quiet_since = item.created_at
                self.segments.append(Segment("caller", item.created_at, item.created_at, text))
            elif self.segments and self.segments[-1].kind == "caller":
                last = self.segments.pop()
                self.segments.append(Segment("caller", last.start, last.end, text))
        elif role == "assistant" and text:
            metrics_ = getattr(item, "metrics", None) or {}
            start = metrics_.get("started_speaking_at") or item.created_at
            end = metrics_.get("stopped_speaking_at") or start
            filler = text.strip() in FILLERS
            self.fillers += filler
            self.segments.append(Segment("filler" if filler else "answer", start, end, text))

    def _on_tools(self, event: Any) -> None:
        for call, output in zip(event.function_calls, event.function_call_outputs, strict=False):
            end = output.created_at if output is not None else self.clock()
            self.segments.append(Segment("tool", call.created_at, end, call.name))

    # -- the end -------------------------------------------------------------------------------
    def finish(self, session: Any = None) -> dict[str, Any]:
        """Once per call: the log line, the Prometheus series and the session span's
        attributes. Returns the figures."""
        if session is not None:
            identity = getattr(getattr(session, "userdata", None), "identity", None)
            self.trust = str(getattr(identity, "trust", self.trust))
        figures = self.figures()
        if self.finished:
            return figures
        self.finished = True
        _sample_memory()
        logger.info("Call report %s", json.dumps(figures, sort_keys=True))
        self._record_metrics()
        for on_finished in list(FINISHED_LISTENERS):
            on_finished(self)
        span = getattr(session, "_session_span", None) or trace.get_current_span()
        if span.is_recording():
            span.set_attributes(_span_attributes(figures))
            span.add_event("pandadoc.call_report", {"pandadoc.call.report": json.dumps(figures)})
        return figures

    def _record_metrics(self) -> None:
        heard = "fallback" if self.fallbacks else "clean"
        metrics.CALLS.labels(trust=self.trust, heard=heard).inc()
        metrics.CALL_FILLERS.inc(self.fillers)
        for service, n in self.breaker_refusals.items():
            metrics.CALL_BREAKER_REFUSALS.labels(service=service).inc(n)
        for service, n in self.retries.items():
            metrics.CALL_RETRIES.labels(service=service).inc(n)
        for service, n in self.tool_timeouts.items():
            metrics.CALL_TOOL_TIMEOUTS.labels(service=service).inc(n)
        for outcome, n in self.writes.items():
            metrics.CALL_WRITES.labels(outcome=outcome).inc(n)
        if self.silences:
            metrics.CALL_LONGEST_SILENCE.observe(self.longest_silence_s)


# -- hooks for the protected calls (src/error_recovery/mixin.py, src/tools) ------------------
def _report_of(owner: object) -> CallReport | None:
    report = getattr(owner, "call_report", None)
    return report if isinstance(report, CallReport) else None


def _span_event(name: str, attributes: dict[str, Any]) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, attributes)


def fallback(owner: object, service: str, reason: str) -> None:
    """A service call answered with its spoken fallback (``pandadoc_service_fallbacks_total``)."""
    metrics.fallback_counter(service, reason).inc()
    if (report := _report_of(owner)) is not None:
        report.on_fallback(service, reason)
    _span_event("pandadoc.fallback", {"pandadoc.service": service, "pandadoc.reason": reason})


def retry(owner: object, service: str) -> None:
    """A vendor request is being retried."""
    if (report := _report_of(owner)) is not None:
        report.retries[service] += 1
    _span_event("pandadoc.retry", {"pandadoc.service": service})


def timeout(owner: object, service: str) -> None:
    """A vendor request timed out."""
    if (report := _report_of(owner)) is not None:
        report.tool_timeouts[service] += 1
    _span_event("pandadoc.timeout", {"pandadoc.service": service})


def write(owner: object, outcome: str) -> None:
    """A CRM write of this call was sent (``outcome``: the outbox's word)."""
    word = WRITE_OUTCOMES.get(outcome, outcome)
    if (report := _report_of(owner)) is not None:
        report.writes[word] += 1
    _span_event("pandadoc.crm_write", {"pandadoc.write.outcome": word})


def _span_attributes(figures: dict[str, Any]) -> dict[str, Any]:
    """``pandadoc.call.*`` attributes: numbers and strings, maps flattened by key."""
    attributes: dict[str, Any] = {}
    for key, value in figures.items():
        if isinstance(value, dict):
            for sub, n in value.items():
                attributes[f"pandadoc.call.{key}.{sub}"] = n
            attributes[f"pandadoc.call.{key}"] = sum(value.values())
        else:
            attributes[f"pandadoc.call.{key}"] = value
    return attributes


_STATM = "/proc/self/statm"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _resident_bytes() -> int:
    """This process's resident memory: one read of ``/proc/self/statm`` on Linux (about
    10 µs; building a ``psutil.Process`` each turn cost about 0.7 ms), psutil elsewhere."""
    try:
        with open(_STATM, "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:
        import psutil

        return int(psutil.Process(os.getpid()).memory_info().rss)


def _sample_memory() -> None:
    """The job process's resident memory into ``pandadoc_job_memory_bytes``."""
    try:
        metrics.JOB_MEMORY.set(_resident_bytes())
    except Exception:  # never break a call for a gauge
        logger.debug("could not sample job memory")


def job_memory_limit(server: object) -> None:
    """LiveKit's memory limit for a job (``job_memory_limit_mb``, else the warning level
    ``job_memory_warn_mb``) into ``pandadoc_job_memory_limit_bytes``."""
    limit = getattr(server, "_job_memory_limit_mb", 0) or getattr(server, "_job_memory_warn_mb", 0)
    if limit:
        metrics.JOB_MEMORY_LIMIT.set(float(limit) * 1024 * 1024)


def tracing_from_env() -> Any:
    """With ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set,
    LiveKit's spans, with this report's events and attributes, are exported to that
    OTLP/HTTP collector (the exporter reads the standard ``OTEL_EXPORTER_OTLP_*``
    variables: headers, timeout, compression); ``OTEL_SERVICE_NAME`` names the service
    (default ``pandadoc-trialist``). Returns the SDK ``TracerProvider`` (flush it when the
    job ends), or ``None`` when no endpoint is set."""
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        return None
    from livekit.agents.telemetry import set_tracer_provider
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or "pandadoc-trialist"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    set_tracer_provider(provider)
    logger.info("Exporting traces over OTLP/HTTP as %s", name)
    return provider
