"""Prometheus metrics for the error-recovery layer (the spec's "circuit breaker metrics"
enhancement), on ``prometheus_client``, which livekit-agents already ships.

The worker exposes them on ``PROMETHEUS_PORT`` through LiveKit's own endpoint; jobs run in
separate processes, so LiveKit's multiprocess directory aggregates them (``livesum``
gauges count the live jobs whose circuit is open).

* ``pandadoc_circuit_transitions_total{service,to_state}``: breaker transitions.
* ``pandadoc_circuits_open{service}``: jobs whose circuit for ``service`` is open now.
* ``pandadoc_service_fallbacks_total{service,reason}``: calls answered with the spoken
  fallback (``circuit_open`` or ``failed``).
* ``pandadoc_tool_calls_total{tool,outcome}``: ``ok``, or ``fallback`` when the tool
  answered with a spoken phrase (recovery sentence or a question) instead of data.
* ``pandadoc_tool_duration_seconds{tool}``: how long the caller waited on a tool.
* ``pandadoc_identity_refusals_total{tool,reason}``: lookups refused by the disclosure
  policy (``other_email``: a verified caller asked about someone else; ``unverified``:
  the caller's identity is only claimed; ``sip_no_match`` / ``sip_untrusted`` /
  ``sip_limit``: a phone caller's number matched no trusted CRM phone / matched only one
  the caller could have set (a form's) / the per-call phone checks were used up;
  ``intake``: a non-verified caller's write went to the unverified intake instead of a
  record).
* ``pandadoc_caller_identities_total{trust,source}``: identities decided, by trust level
  and how (``dispatch``, ``console``, ``sip``, ``spoken``).
* ``pandadoc_store_errors_total{store}``: resilience store operations that failed.
* ``pandadoc_outbox_depth``: CRM writes waiting in the durable outbox (last seen).
* ``pandadoc_outbox_dead_letters_total{crm}``: CRM writes given up after their attempts
  or age (issue #23), waiting for an operator's ``retry`` or ``drop``.
* ``pandadoc_outbox_dead_letters_waiting``: dead-lettered writes in the store (last seen).
* ``pandadoc_outbox_oldest_age_seconds``: how long the oldest waiting write has waited.
* ``pandadoc_job_memory_bytes`` / ``pandadoc_job_memory_limit_bytes``: a job process's
  resident memory, and the limit LiveKit holds it to (its warning level when no limit).
* ``pandadoc_calls_total{trust,heard}`` and the other ``pandadoc_call_*`` series: the
  per-call resilience report (:mod:`src.report`), recorded once when a call ends.
"""

from __future__ import annotations

import functools
import os

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CALLER_IDENTITIES",
    "CIRCUITS_OPEN",
    "CIRCUIT_TRANSITIONS",
    "IDENTITY_REFUSALS",
    "SERVICE_FALLBACKS",
    "TOOL_CALLS",
    "TOOL_DURATION",
    "fallback_counter",
    "record_transition",
    "tool_metrics",
]

CIRCUIT_TRANSITIONS = Counter(
    "pandadoc_circuit_transitions_total",
    "Circuit breaker state transitions.",
    ["service", "to_state"],
)
CIRCUITS_OPEN = Gauge(
    "pandadoc_circuits_open",
    "Jobs whose circuit breaker for the service is open.",
    ["service"],
    multiprocess_mode="livesum",
)
SERVICE_FALLBACKS = Counter(
    "pandadoc_service_fallbacks_total",
    "Service calls answered with the spoken fallback instead of data.",
    ["service", "reason"],
)
TOOL_CALLS = Counter(
    "pandadoc_tool_calls_total",
    "Tool calls by outcome: ok, or fallback (the caller heard a recovery phrase).",
    ["tool", "outcome"],
)
TOOL_DURATION = Histogram(
    "pandadoc_tool_duration_seconds",
    "Time the caller waited on a tool, retries included.",
    ["tool"],
    buckets=(0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0),
)


@functools.cache
def tool_metrics(tool: str) -> tuple[Histogram, Counter, Counter]:
    """(duration, ok, fallback) series of one tool, looked up once: ``labels()`` takes a
    lock and a dict lookup, too much for every call on the hot path."""
    return (
        TOOL_DURATION.labels(tool=tool),
        TOOL_CALLS.labels(tool=tool, outcome="ok"),
        TOOL_CALLS.labels(tool=tool, outcome="fallback"),
    )


@functools.cache
def fallback_counter(service: str, reason: str) -> Counter:
    """The ``pandadoc_service_fallbacks_total`` series for ``service`` and ``reason``."""
    return SERVICE_FALLBACKS.labels(service=service, reason=reason)


def record_transition(service: str, old: object, new: object) -> None:
    """A :class:`~src.error_recovery.CircuitBreaker` listener."""
    old_state, new_state = str(old), str(new)
    CIRCUIT_TRANSITIONS.labels(service=service or "unnamed", to_state=new_state).inc()
    if new_state == "open":
        CIRCUITS_OPEN.labels(service=service or "unnamed").inc()
    elif old_state == "open":
        CIRCUITS_OPEN.labels(service=service or "unnamed").dec()


# -- caller identity (src/identity.py, src/tools/policy.py) ---------------------------------
IDENTITY_REFUSALS = Counter(
    "pandadoc_identity_refusals_total",
    "Lookups the disclosure policy refused, by tool and reason.",
    ["tool", "reason"],
)
CALLER_IDENTITIES = Counter(
    "pandadoc_caller_identities_total",
    "Caller identities decided, by trust level and source.",
    ["trust", "source"],
)
# -- fleet scope (shared breakers, durable outbox) -------------------------------------
STORE_ERRORS = Counter(
    "pandadoc_store_errors_total",
    "Resilience store operations that failed (breakers fell back to local state).",
    ["store"],
)
OUTBOX_DEPTH = Gauge(
    "pandadoc_outbox_depth",
    "CRM writes waiting in the durable outbox, as last seen by a job.",
    multiprocess_mode="mostrecent",
)


OUTBOX_DEAD_LETTERS = Counter(
    "pandadoc_outbox_dead_letters_total",
    "CRM writes dead-lettered after too many attempts or too long a wait (issue #23).",
    ["crm"],
)
OUTBOX_DEAD = Gauge(
    "pandadoc_outbox_dead_letters_waiting",
    "Dead-lettered CRM writes in the durable outbox, as last seen by a job.",
    multiprocess_mode="mostrecent",
)


def store_error(kind: str) -> None:
    STORE_ERRORS.labels(store=kind).inc()


def job_ended() -> None:
    """A job process is ending: drop its ``live*`` gauge files from the multiprocess
    directory (LiveKit does not), so ``pandadoc_circuits_open`` counts live jobs only."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and os.path.isdir(directory):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


OUTBOX_OLDEST_AGE = Gauge(
    "pandadoc_outbox_oldest_age_seconds",
    "Seconds the oldest waiting CRM write has waited in the outbox, as last seen by a job.",
    multiprocess_mode="mostrecent",
)


def outbox_seen(depth: int, created: list[float], now: float) -> None:
    """The outbox as a job last saw it: ``depth`` waiting writes, queued at ``created``
    (the store's clock, seconds, same as ``now``)."""
    OUTBOX_DEPTH.set(depth)
    OUTBOX_OLDEST_AGE.set(max(0.0, now - min(created)) if created else 0.0)


# -- job processes (LiveKit's job_memory_warn_mb / job_memory_limit_mb) -------------------
JOB_MEMORY = Gauge(
    "pandadoc_job_memory_bytes",
    "Resident memory of a live job process (sampled each user turn and at the call's end).",
    multiprocess_mode="livemax",
)
JOB_MEMORY_LIMIT = Gauge(
    "pandadoc_job_memory_limit_bytes",
    "Memory a job process may use: LiveKit's job_memory_limit_mb, else job_memory_warn_mb.",
    multiprocess_mode="livemax",
)


# -- the per-call resilience report (src/report.py), recorded when a call ends -----------
CALLS = Counter(
    "pandadoc_calls_total",
    "Calls ended, by the caller's trust level and whether they heard a fallback.",
    ["trust", "heard"],
)
CALL_FILLERS = Counter("pandadoc_call_fillers_total", "Filler sentences spoken in calls.")
CALL_BREAKER_REFUSALS = Counter(
    "pandadoc_call_breaker_refusals_total",
    "Service calls an open circuit answered with the fallback, by service.",
    ["service"],
)
CALL_RETRIES = Counter(
    "pandadoc_call_retries_total", "Retried vendor requests in calls, by service.", ["service"]
)
CALL_TOOL_TIMEOUTS = Counter(
    "pandadoc_call_tool_timeouts_total",
    "Vendor requests that timed out in calls, by service.",
    ["service"],
)
CALL_WRITES = Counter(
    "pandadoc_call_writes_total",
    "CRM writes of calls by outcome: delivered, queued, unconfirmed, dead_lettered.",
    ["outcome"],
)
CALL_LONGEST_SILENCE = Histogram(
    "pandadoc_call_longest_silence_seconds",
    "Per call: the longest wait between the caller (or a filler) falling silent and the "
    "agent speaking.",
    buckets=(0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0),
)
