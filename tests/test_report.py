"""The per-call resilience report (src/report.py): its log line matches what happened in
a drill conversation, its series move, and with a tracer provider set the breaker trip is
an event on the tool span whose call tripped it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from livekit.agents.telemetry import set_tracer_provider
from livekit.agents.telemetry.traces import tracer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from src.drill.harness import Conversation, TurnResult
from src.report import FILLERS
from src.sandbox import FaultKind

OVERRIDES: dict[str, Any] = {
    "service_timeout": 0.3,
    "tool_deadline": 1.0,
    "turn_deadline": 1.0,
    "filler_delay": 0.2,
    "jitter": False,
    "llm_timeout": 1.0,
    "tts_timeout": 1.0,
    "stt_timeout": 1.0,
    "model_retry_interval": 0.05,
}
USAGE = "how is my trial usage?"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def report_line(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    lines = [r.getMessage() for r in caplog.records if r.name == "pandadoc.report"]
    assert len(lines) == 1, lines  # one line per call
    prefix = "Call report "
    assert lines[0].startswith(prefix)
    figures: dict[str, Any] = json.loads(lines[0][len(prefix) :])
    return figures


async def test_the_report_line_of_a_drill_conversation_matches_what_happened(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Usage fails (503) twice, the second time tripping the breaker; a summary is saved;
    then Salesforce hangs during a lookup (a timeout, a filler, HubSpot answers)."""
    caplog.set_level(logging.INFO, logger="pandadoc.report")
    calls = sample("pandadoc_calls_total", trust="verified", heard="fallback")
    fillers_before = sample("pandadoc_call_fillers_total")
    retries_before = sample("pandadoc_call_retries_total", service="amplitude")
    delivered_before = sample("pandadoc_call_writes_total", outcome="delivered")
    turns: list[TurnResult] = []
    async with Conversation(overrides=OVERRIDES, skip_sleeps=True) as conv:
        conv.sandbox.amplitude.inject("*", FaultKind.SERVER_ERROR)
        for text in (USAGE, USAGE, "please log a summary: wants a demo next week"):
            turns.append(await conv.turn(text))
        conv.sandbox.salesforce.inject("*", FaultKind.HANG)
        turns.append(await conv.turn("what's on my account?"))
        tasks = len(conv.sandbox.salesforce.tasks)
        transitions = list(conv.transitions)
    figures = report_line(caplog)

    # What the harness saw, independently of the report.
    amplitude = [t.requests["amplitude"] for t in turns if t.requests["amplitude"]]
    usage_fallbacks = sum(
        1 for t in turns for tool in t.tools if tool.name == "get_trial_usage" and tool.is_error
    )
    heard_fillers = sum(1 for t in turns for said in t.said if said in FILLERS)
    assert [str(t) for t in transitions] == ["amplitude:closed->open"]
    assert figures["breaker_trips"] == {"amplitude": 1}
    assert figures["retries"] == {"amplitude": sum(n - 1 for n in amplitude)}
    assert figures["fallbacks"]["amplitude/failed"] == usage_fallbacks == 2
    assert figures["fillers"] == heard_fillers == 1
    assert figures["writes"] == {
        "delivered": tasks,
        "queued": 0,
        "unconfirmed": 0,
        "dead_lettered": 0,
    }
    assert tasks == 1
    assert 1 <= figures["tool_timeouts"]["salesforce"] <= turns[-1].requests["salesforce"]
    assert figures["trust"] == "verified"
    assert figures["turns"] == len(turns)
    first_words = max(t.first_words_s or 0.0 for t in turns)
    assert first_words - 0.05 <= figures["longest_silence_s"] <= max(t.total_s for t in turns)

    # The same figures in Prometheus.
    assert sample("pandadoc_calls_total", trust="verified", heard="fallback") == calls + 1
    assert sample("pandadoc_call_fillers_total") == fillers_before + 1
    assert sample("pandadoc_call_retries_total", service="amplitude") == retries_before + sum(
        n - 1 for n in amplitude
    )
    assert sample("pandadoc_call_writes_total", outcome="delivered") == delivered_before + 1


async def test_an_open_circuit_answer_is_a_breaker_refusal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once the circuit is open, the usage tool answers without calling Amplitude: a
    refusal in the report, no request in the journal."""
    caplog.set_level(logging.INFO, logger="pandadoc.report")
    async with Conversation(overrides=OVERRIDES, skip_sleeps=True) as conv:
        conv.sandbox.amplitude.inject("*", FaultKind.SERVER_ERROR)
        turns = [await conv.turn(USAGE) for _ in range(3)]
    figures = report_line(caplog)
    assert turns[-1].requests["amplitude"] == 0  # refused: nothing was sent
    assert figures["breaker_refusals"] == {"amplitude": 1}
    assert figures["fallbacks"]["amplitude/circuit_open"] == 1


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """LiveKit's tracer on an in-memory exporter for the test, put back afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = tracer._tracer_provider
    set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracer.set_provider(previous)
        provider.shutdown()


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


async def test_the_breaker_trip_is_an_event_on_the_tool_span(
    spans: InMemorySpanExporter,
) -> None:
    async with Conversation(overrides=OVERRIDES, skip_sleeps=True) as conv:
        conv.sandbox.amplitude.inject("*", FaultKind.SERVER_ERROR)
        await conv.turn(USAGE)
        await conv.turn(USAGE)  # the third failed request opens the circuit
    finished = spans.get_finished_spans()
    tools = [s for s in finished if s.name == "function_tool"]
    assert len(tools) == 2
    tripped = [s for s in tools if events(s, "pandadoc.circuit_breaker.transition")]
    assert len(tripped) == 1
    [trip] = events(tripped[0], "pandadoc.circuit_breaker.transition")
    assert trip == {
        "pandadoc.service": "amplitude",
        "pandadoc.breaker.from": "closed",
        "pandadoc.breaker.to": "open",
    }
    assert (tripped[0].attributes or {}).get("lk.function_tool.name") == "get_trial_usage"
    assert tripped[0] is tools[1]  # the second call's span, not the first
    assert events(tools[0], "pandadoc.retry") == [{"pandadoc.service": "amplitude"}]
    for tool in tools:
        assert events(tool, "pandadoc.fallback") == [
            {"pandadoc.service": "amplitude", "pandadoc.reason": "failed"}
        ]
    [session] = [s for s in finished if s.name == "agent_session"]
    attributes = session.attributes or {}
    assert attributes["pandadoc.call.breaker_trips.amplitude"] == 1
    assert attributes["pandadoc.call.fallbacks.amplitude/failed"] == 2
    assert attributes["pandadoc.call.trust"] == "verified"
    assert events(session, "pandadoc.call_report")


async def test_otlp_endpoint_in_the_environment_exports_the_trip_to_a_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT set: spans go over real OTLP/HTTP to a collector (here
    a stand-in on 127.0.0.1 that decodes what it receives)."""
    from aiohttp import web
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    from src.report import CallReport, tracing_from_env

    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    previous = tracer._tracer_provider
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert tracing_from_env() is None  # nothing configured: no provider
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "trialist-test")
    provider = tracing_from_env()
    try:
        with tracer.start_as_current_span("function_tool"):
            CallReport().on_transition("amplitude", "closed", "open")
        assert await asyncio.to_thread(provider.force_flush, 10_000)
    finally:
        tracer.set_provider(previous)
        await asyncio.to_thread(provider.shutdown)
        await runner.cleanup()
    spans = [
        (resource, span)
        for message in received
        for resource in message.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    [(resource, span)] = [(r, s) for r, s in spans if s.name == "function_tool"]
    service = {a.key: a.value.string_value for a in resource.resource.attributes}
    assert service["service.name"] == "trialist-test"
    [event] = [e for e in span.events if e.name == "pandadoc.circuit_breaker.transition"]
    attributes = {a.key: a.value.string_value for a in event.attributes}
    assert attributes["pandadoc.service"] == "amplitude"
    assert attributes["pandadoc.breaker.to"] == "open"


class Emitter:
    """What :meth:`CallReport.watch` needs of a session: ``on`` and events to emit."""

    def __init__(self) -> None:
        self.handlers: dict[str, list[Any]] = {}
        self.userdata = None

    def on(self, name: str, handler: Any) -> None:
        self.handlers.setdefault(name, []).append(handler)

    def emit(self, name: str, **fields: Any) -> None:
        from types import SimpleNamespace

        for handler in self.handlers.get(name, []):
            handler(SimpleNamespace(**fields))


def test_longest_silence_follows_voice_events() -> None:
    """The caller speaks 0-1 s; the agent's filler starts at 2.2 s and ends at 3 s; the
    answer starts at 5.5 s: silences of 1.2 s and 2.5 s. A caller who speaks again
    before the agent does ends the wait without a silence being counted."""
    from types import SimpleNamespace

    from src.phrases import FILLER
    from src.report import CallReport

    session = Emitter()
    report = CallReport()
    report.watch(session)
    report.watch(session)  # entered twice: still one set of handlers
    assert len(session.handlers["agent_state_changed"]) == 1

    def user(old: str, new: str, at: float) -> None:
        session.emit("user_state_changed", old_state=old, new_state=new, created_at=at)

    def agent(old: str, new: str, at: float) -> None:
        session.emit("agent_state_changed", old_state=old, new_state=new, created_at=at)

    def said(text: str, start: float, end: float) -> None:
        item = SimpleNamespace(
            role="assistant",
            text_content=text,
            created_at=end,
            metrics={"started_speaking_at": start, "stopped_speaking_at": end},
        )
        session.emit("conversation_item_added", item=item, created_at=end)

    user("listening", "speaking", 0.0)
    user("speaking", "listening", 1.0)
    agent("listening", "thinking", 1.1)
    agent("thinking", "speaking", 2.2)
    said(FILLER, 2.2, 3.0)
    agent("speaking", "thinking", 3.0)
    agent("thinking", "speaking", 5.5)
    said("Here is your usage.", 5.5, 6.0)
    agent("speaking", "listening", 6.0)
    user("listening", "speaking", 8.0)  # the caller speaks; then interrupts themselves
    user("speaking", "listening", 9.0)
    user("listening", "speaking", 9.5)
    user("speaking", "listening", 10.0)
    agent("listening", "speaking", 10.4)
    assert [round(s.end - s.start, 3) for s in report.silences] == [1.2, 2.5, 0.4]
    assert report.longest_silence_s == pytest.approx(2.5)
    assert report.fillers == 1
    assert [s.kind for s in report.segments if s.kind in ("filler", "answer")] == [
        "filler",
        "answer",
    ]


def test_the_memory_sample_is_this_process_resident_memory() -> None:
    import psutil

    from src import report

    ours = report._resident_bytes()
    theirs = psutil.Process().memory_info().rss
    assert ours > 10 * 1024 * 1024
    assert abs(ours - theirs) < 0.2 * theirs  # the same figure, read the cheap way
