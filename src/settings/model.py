"""The configuration's shape: frozen dataclasses with defaults on the fields and
validation in ``__post_init__``; a bad value raises :class:`SettingsError` naming the
variable, never the value."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..store import DEFAULT_STORE_URL, validate_store_url
from ..validation import is_valid_email

SIP_VERIFY_CHOICES = ("contacts", "off")


class SettingsError(ValueError):
    """A configuration value is missing or invalid. The message names the variable."""


@dataclass(frozen=True)
class ResilienceSettings:
    """The spec's tuning parameters plus the voice budget.

    Attributes:
        failure_threshold: consecutive failed calls that open a service's circuit (3).
        recovery_timeout: seconds an open circuit waits before one probe (30.0).
        max_retries: retries per service call after the first attempt (2).
        base_delay: seconds before the first retry (0.5).
        max_delay: cap on one retry delay, seconds (3.0).
        jitter: randomise retry delays (True; turn off only in tests).
        service_timeout: seconds for one HTTP attempt to a vendor (2.5).
        tool_deadline: seconds a tool may take in all, retries included (6.0). Past it
            the caller hears a fallback sentence.
        filler_delay: seconds of silence before filler speech during a slow tool (1.0, so
            that with the model round trip the caller hears it within 1.5 s).
        turn_deadline: seconds all tool calls of one model reply share, counted from the
            first (5.0; from the environment it defaults to TOOL_DEADLINE when that is
            lower). A tool started late in the turn gets what is left. 5 s, so that the
            answer follows the progress sentence (progress_delay) within 3 s, model
            round trip included.
        progress_delay: seconds into a slow tool turn before its second (and last)
            progress sentence, "Still checking, thanks for waiting." (3.0; 0 = none).
        llm_timeout / tts_timeout / stt_timeout: seconds per model attempt (6.0/5.0/5.0).
        llm_first_token_timeout: seconds without a first chunk from the model before the
            caller hears a short filler (1.0; the model keeps going).
        llm_stall_timeout: seconds without a chunk once the answer started before the
            caller hears a short bridge (1.0).
        llm_answer_timeout: seconds after that filler or bridge by which the model must
            have started (or resumed) its answer: else the apology (or a natural close
            of the half answer) is said, not LiveKit's timeouts waited out (2.5).
        llm_switch_timeout: seconds after the first-token filler before a model that has
            sent nothing is abandoned for the fallback model (OPENAI_FALLBACK_MODEL),
            which gets the rest of llm_answer_timeout (1.0).
        tts_no_audio_timeout: seconds a TTS stream that owes audio may send none before
            the pre-rendered apology is played instead (1.2).
        llm_max_retry / tts_max_retry / stt_max_retry: LiveKit-level retries (1/1/2),
            instead of LiveKit's 3 retries x 2 s, which can leave a caller in silence
            for over half a minute.
        model_retry_interval: seconds between model retries (0.3).
        max_unrecoverable_errors: consecutive model failures before the session ends
            after a spoken goodbye (3).
        failure_rate_threshold / slow_call_rate_threshold: shares (0-1] of the calls in
            a circuit's sliding window that open it (0.5 / 1.0), besides the
            consecutive rule; slow_call_duration: seconds from which a call is slow (0 =
            slow-call rule off); window_size: calls in the window (20);
            minimum_calls: calls before a rate is judged (10); window_seconds: only
            calls this recent count (60.0; 0 = count-based only).
        bulkhead_max_concurrent: calls to one vendor a worker process has in flight at
            once (10); bulkhead_max_wait: seconds a caller over it waits for a slot
            before hearing the fallback (0.5).
        retry_budget_max_tokens / retry_budget_token_ratio: each vendor's retry budget
            (10 / 0.2), Finagle's rule over a 10 s window: retries may start while they
            number fewer than the floor (max_tokens) plus the ratio of first attempts.
        outbox_max_attempts / outbox_max_age_s: a CRM write that keeps failing is
            dead-lettered after this many attempts or seconds of waiting (10 / 86400).
        adaptive_timeout_percentile / _factor / _floor / _min_samples: a vendor's request
            timeout in a voice tool is this quantile of its recent answer times times the
            factor, between the floor and service_timeout, once it answered min_samples
            times (0.99 / 3.0 / 1.0 s / 20).
    """

    failure_threshold: int = 3
    recovery_timeout: float = 30.0
    max_retries: int = 2
    base_delay: float = 0.5
    max_delay: float = 3.0
    jitter: bool = True
    service_timeout: float = 2.5
    tool_deadline: float = 6.0
    filler_delay: float = 1.0
    turn_deadline: float = 5.0
    llm_timeout: float = 6.0
    llm_first_token_timeout: float = 1.0
    llm_stall_timeout: float = 1.0
    llm_answer_timeout: float = 2.5
    llm_switch_timeout: float = 1.0
    progress_delay: float = 3.0
    tts_no_audio_timeout: float = 1.2
    tts_timeout: float = 5.0
    stt_timeout: float = 5.0
    llm_max_retry: int = 1
    tts_max_retry: int = 1
    stt_max_retry: int = 2
    model_retry_interval: float = 0.3
    max_unrecoverable_errors: int = 3
    failure_rate_threshold: float = 0.5
    slow_call_rate_threshold: float = 1.0
    slow_call_duration: float = 0.0
    minimum_calls: int = 10
    window_size: int = 20
    window_seconds: float = 60.0
    bulkhead_max_concurrent: int = 10
    bulkhead_max_wait: float = 0.5
    retry_budget_max_tokens: float = 10.0
    retry_budget_token_ratio: float = 0.2
    adaptive_timeout_percentile: float = 0.99
    adaptive_timeout_factor: float = 3.0
    adaptive_timeout_floor: float = 1.0
    adaptive_timeout_min_samples: int = 20
    outbox_max_attempts: int = 10  # issue #23: a CRM write is dead-lettered after these
    outbox_max_age_s: float = 86_400.0  # ... or after waiting this long

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise SettingsError("CIRCUIT_FAILURE_THRESHOLD must be >= 1")
        if self.recovery_timeout < 0:
            raise SettingsError("CIRCUIT_RECOVERY_TIMEOUT must be >= 0 seconds")
        if self.max_retries < 0:
            raise SettingsError("RETRY_MAX_RETRIES must be >= 0")
        if not 0 <= self.base_delay <= self.max_delay:
            raise SettingsError("RETRY_BASE_DELAY must be >= 0 and <= RETRY_MAX_DELAY")
        if not 0 < self.service_timeout <= self.tool_deadline:
            raise SettingsError("SERVICE_TIMEOUT must be > 0 and <= TOOL_DEADLINE")
        for name, value in (
            ("LLM_TIMEOUT", self.llm_timeout),
            ("LLM_FIRST_TOKEN_TIMEOUT", self.llm_first_token_timeout),
            ("LLM_STALL_TIMEOUT", self.llm_stall_timeout),
            ("LLM_ANSWER_TIMEOUT", self.llm_answer_timeout),
            ("LLM_SWITCH_TIMEOUT", self.llm_switch_timeout),
            ("TTS_NO_AUDIO_TIMEOUT", self.tts_no_audio_timeout),
            ("TTS_TIMEOUT", self.tts_timeout),
            ("STT_TIMEOUT", self.stt_timeout),
        ):
            if value <= 0:
                raise SettingsError(f"{name} must be > 0 seconds")
        if min(self.llm_max_retry, self.tts_max_retry, self.stt_max_retry) < 0:
            raise SettingsError("LLM/TTS/STT_MAX_RETRY must be >= 0")
        if self.model_retry_interval < 0:
            raise SettingsError("MODEL_RETRY_INTERVAL must be >= 0 seconds")
        if self.turn_deadline <= 0:
            raise SettingsError("TURN_DEADLINE must be > 0 seconds")
        if self.filler_delay < 0:  # >= TOOL_DEADLINE is allowed: it turns the filler off
            raise SettingsError("FILLER_DELAY must be >= 0 seconds")
        if self.progress_delay < 0:  # 0 turns the progress sentence off
            raise SettingsError("PROGRESS_DELAY must be >= 0 seconds")
        if self.max_unrecoverable_errors < 1:
            raise SettingsError("MAX_UNRECOVERABLE_ERRORS must be >= 1")
        self._check_adaptive()

    def _check_adaptive(self) -> None:
        """Issue #15's settings (rate rule, bulkhead, retry budget, adaptive timeouts)."""
        for name, rate in (
            ("CIRCUIT_FAILURE_RATE_THRESHOLD", self.failure_rate_threshold),
            ("CIRCUIT_SLOW_CALL_RATE_THRESHOLD", self.slow_call_rate_threshold),
        ):
            if not 0 < rate <= 1:
                raise SettingsError(f"{name} must be > 0 and <= 1")
        if self.slow_call_duration < 0 or self.window_seconds < 0:
            raise SettingsError("CIRCUIT_SLOW_CALL_DURATION/WINDOW_SECONDS must be >= 0")
        if not 1 <= self.minimum_calls <= self.window_size:
            raise SettingsError("need 1 <= CIRCUIT_MINIMUM_CALLS <= CIRCUIT_WINDOW_SIZE")
        if self.bulkhead_max_concurrent < 1:
            raise SettingsError("BULKHEAD_MAX_CONCURRENT must be >= 1")
        if self.bulkhead_max_wait < 0:
            raise SettingsError("BULKHEAD_MAX_WAIT must be >= 0 seconds")
        if self.retry_budget_max_tokens < 1:
            raise SettingsError("RETRY_BUDGET_MAX_TOKENS must be >= 1")
        if not 0 < self.retry_budget_token_ratio <= 1:
            raise SettingsError("RETRY_BUDGET_TOKEN_RATIO must be > 0 and <= 1")
        if not 0 < self.adaptive_timeout_percentile <= 1:
            raise SettingsError("ADAPTIVE_TIMEOUT_PERCENTILE must be > 0 and <= 1")
        if self.adaptive_timeout_factor < 1:
            raise SettingsError("ADAPTIVE_TIMEOUT_FACTOR must be >= 1")
        if self.adaptive_timeout_floor <= 0:
            raise SettingsError("ADAPTIVE_TIMEOUT_FLOOR must be > 0 seconds")
        if self.adaptive_timeout_min_samples < 1:
            raise SettingsError("ADAPTIVE_TIMEOUT_MIN_SAMPLES must be >= 1")
        if self.outbox_max_attempts < 1:
            raise SettingsError("OUTBOX_MAX_ATTEMPTS must be >= 1")
        if self.outbox_max_age_s <= 0:
            raise SettingsError("OUTBOX_MAX_AGE_S must be > 0 seconds")


DEFAULT_RESILIENCE = ResilienceSettings()


@dataclass(frozen=True)
class ModelSettings:
    """LLM, TTS and STT. ``openai_base_url`` empty means OpenAI's own endpoint."""

    openai_api_key: str = ""
    openai_base_url: str = ""
    llm_model: str = "gpt-4o-mini"
    fallback_llm_model: str = ""
    tts_model: str = "gpt-4o-mini-tts"
    tts_voice: str = "alloy"
    deepgram_api_key: str = ""
    stt_model: str = "nova-3"


@dataclass(frozen=True)
class AgentSettings:
    agent_name: str = "pandadoc-trialist"
    trialist_email: str = ""
    trialist_name: str = ""
    timezone: str = "America/New_York"
    prometheus_port: int = 0  # 0: metrics endpoint off
    # Which CRM phones may verify a phone caller (SIP_VERIFY_FROM): "contacts" (a
    # Salesforce Contact's phone, a HubSpot phone not set by a form) or "off".
    # OTEL_EXPORTER_OTLP_ENDPOINT: where traces go (read by OpenTelemetry itself; checked
    # here at start-up like every URL, src/report.py). Empty: no export.
    otlp_endpoint: str = ""
    sip_verify_from: str = "contacts"

    def __post_init__(self) -> None:
        if self.sip_verify_from not in SIP_VERIFY_CHOICES:
            raise SettingsError("SIP_VERIFY_FROM must be 'contacts' or 'off'")
        if not 0 <= self.prometheus_port <= 65535:
            raise SettingsError("PROMETHEUS_PORT must be a port number (0 turns metrics off)")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long
            raise SettingsError("TRIALIST_TIMEZONE must be an IANA zone name") from None
        if self.trialist_email and not is_valid_email(self.trialist_email):
            raise SettingsError("TRIALIST_EMAIL must be an email address")


def _vendor_caps() -> dict[str, int]:
    from ..registry import VENDORS  # the registry reads settings: imported on use

    return {vendor.name: vendor.max_response_bytes for vendor in VENDORS}


def _vendor_sections() -> dict[str, Any]:
    from ..registry import VENDORS

    return {vendor.name: vendor.default_settings() for vendor in VENDORS}


@dataclass(frozen=True)
class ResponseLimits:
    """Largest response body accepted from each vendor, in bytes (``caps``, by registry
    name; default: each vendor's declared cap); a larger one is refused while it streams
    (the caller hears the service's fallback). ``limits.<vendor>`` reads one."""

    caps: Mapping[str, int] = field(default_factory=_vendor_caps)

    def __post_init__(self) -> None:
        for name, cap in self.caps.items():
            if not 1024 <= cap <= MAX_RESPONSE_CAP:
                raise SettingsError(
                    f"{name.upper()}_MAX_RESPONSE_BYTES must be between 1024 and {MAX_RESPONSE_CAP}"
                )

    def __getattr__(self, name: str) -> int:
        caps = self.__dict__.get("caps")
        if name.startswith("__") or caps is None or name not in caps:
            raise AttributeError(name)
        return int(caps[name])


MAX_RESPONSE_CAP = 64 * 1024 * 1024


@dataclass(frozen=True)
class FleetSettings:
    """What the conversations of a fleet share (:mod:`src.store`) and how the worker
    collects their metrics. ``store_url``: ``RESILIENCE_STORE_URL`` (default: a SQLite
    file under the system temp dir); ``prometheus_multiproc_dir``:
    ``PROMETHEUS_MULTIPROC_DIR`` (default, when ``PROMETHEUS_PORT`` is set: a directory
    under the system temp dir)."""

    store_url: str = DEFAULT_STORE_URL
    prometheus_multiproc_dir: str = ""

    def __post_init__(self) -> None:
        try:
            validate_store_url(self.store_url)
        except ValueError as exc:
            raise SettingsError(f"RESILIENCE_STORE_URL {exc}") from None

    @property
    def uses_redis(self) -> bool:
        return self.store_url.startswith(("redis://", "rediss://"))

    def metrics_dir(self, prometheus_port: int) -> str | None:
        """The multiprocess directory the worker should use, ``None`` with metrics off."""
        if not prometheus_port:
            return None
        return self.prometheus_multiproc_dir or str(
            Path(tempfile.gettempdir()) / f"pandadoc-metrics-{prometheus_port}"
        )


@dataclass(frozen=True)
class Settings:
    agent: AgentSettings = field(default_factory=AgentSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    resilience: ResilienceSettings = field(default_factory=ResilienceSettings)
    # Each vendor's section, by registry name (src/registry/vendors.py): settings.<vendor>.
    vendors: Mapping[str, Any] = field(default_factory=_vendor_sections)
    response_limits: ResponseLimits = field(default_factory=ResponseLimits)
    fleet: FleetSettings = field(default_factory=FleetSettings)

    def __getattr__(self, name: str) -> Any:
        vendors = self.__dict__.get("vendors")
        if name.startswith("__") or vendors is None or name not in vendors:
            raise AttributeError(name)
        return vendors[name]


# -- parsing --------------------------------------------------------------------------
