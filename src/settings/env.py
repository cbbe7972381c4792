"""Reading the configuration from the environment (and ``.env.local`` / ``.env``)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..redaction import register_secret
from ..services.chilipiper_model import SchedulingLink
from ..store import DEFAULT_STORE_URL
from .model import (
    AMPLITUDE_DEFAULT_URL,
    CHILIPIPER_DEFAULT_URL,
    DEFAULT_RESILIENCE,
    HUBSPOT_DEFAULT_URL,
    AgentSettings,
    ChiliPiperSettings,
    FleetSettings,
    HubSpotSettings,
    ModelSettings,
    ResilienceSettings,
    ResponseLimits,
    SalesforceSettings,
    ServiceSettings,
    Settings,
    SettingsError,
)


def _str(env: Mapping[str, str], name: str, default: str = "") -> str:
    return env.get(name, default).strip() or default


def _url(
    env: Mapping[str, str],
    name: str,
    default: str = "",
    *,
    schemes: tuple[str, ...] = ("http", "https"),
) -> str:
    value = _str(env, name, default).rstrip("/")
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        kinds = "/".join(schemes)
        raise SettingsError(f"{name} must be an absolute URL ({kinds})")
    return value


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name} must be a finite number of seconds")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false")


def _secret(env: Mapping[str, str], name: str) -> str:
    value = _str(env, name)
    register_secret(value)
    return value


def _scheduling_link(env: Mapping[str, str]) -> tuple[str, str]:
    """``(CHILIPIPER_SCHEDULING_LINK, CHILIPIPER_CONCIERGE_ROUTER)``, exactly one set when
    ChiliPiper has a key. A link is a slug, or an id that must be a well-formed UUID; a
    router is a slug. A bad one stops the worker at start (the message names the
    variable, never the value)."""
    name, router_name = "CHILIPIPER_SCHEDULING_LINK", "CHILIPIPER_CONCIERGE_ROUTER"
    value, router = _str(env, name), _str(env, router_name)
    if value and router:
        raise SettingsError(f"set {name} or {router_name}, not both")
    if not value and not router:
        if _str(env, "CHILIPIPER_API_KEY"):
            raise SettingsError(f"{name} (or {router_name}) is required with CHILIPIPER_API_KEY")
        return "", ""
    try:
        if router:
            return "", SchedulingLink.concierge(router).router or ""
        link = SchedulingLink.parse(value)
    except ValueError as exc:
        raise SettingsError(f"{router_name if router else name}: {exc}") from None
    return link.id or link.slug or "", ""


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """Build :class:`Settings` from a mapping (``os.environ`` or a test dict)."""
    d = DEFAULT_RESILIENCE
    tool_deadline = _float(env, "TOOL_DEADLINE", d.tool_deadline)
    resilience = ResilienceSettings(
        failure_threshold=_int(env, "CIRCUIT_FAILURE_THRESHOLD", d.failure_threshold),
        recovery_timeout=_float(env, "CIRCUIT_RECOVERY_TIMEOUT", d.recovery_timeout),
        max_retries=_int(env, "RETRY_MAX_RETRIES", d.max_retries),
        base_delay=_float(env, "RETRY_BASE_DELAY", d.base_delay),
        max_delay=_float(env, "RETRY_MAX_DELAY", d.max_delay),
        jitter=_bool(env, "RETRY_JITTER", d.jitter),
        service_timeout=_float(env, "SERVICE_TIMEOUT", d.service_timeout),
        tool_deadline=tool_deadline,
        filler_delay=_float(env, "FILLER_DELAY", d.filler_delay),
        turn_deadline=_float(env, "TURN_DEADLINE", min(tool_deadline, d.turn_deadline)),
        llm_timeout=_float(env, "LLM_TIMEOUT", d.llm_timeout),
        llm_first_token_timeout=_float(env, "LLM_FIRST_TOKEN_TIMEOUT", d.llm_first_token_timeout),
        llm_stall_timeout=_float(env, "LLM_STALL_TIMEOUT", d.llm_stall_timeout),
        llm_answer_timeout=_float(env, "LLM_ANSWER_TIMEOUT", d.llm_answer_timeout),
        llm_switch_timeout=_float(env, "LLM_SWITCH_TIMEOUT", d.llm_switch_timeout),
        progress_delay=_float(env, "PROGRESS_DELAY", d.progress_delay),
        tts_no_audio_timeout=_float(env, "TTS_NO_AUDIO_TIMEOUT", d.tts_no_audio_timeout),
        tts_timeout=_float(env, "TTS_TIMEOUT", d.tts_timeout),
        stt_timeout=_float(env, "STT_TIMEOUT", d.stt_timeout),
        llm_max_retry=_int(env, "LLM_MAX_RETRY", d.llm_max_retry),
        tts_max_retry=_int(env, "TTS_MAX_RETRY", d.tts_max_retry),
        stt_max_retry=_int(env, "STT_MAX_RETRY", d.stt_max_retry),
        model_retry_interval=_float(env, "MODEL_RETRY_INTERVAL", d.model_retry_interval),
        max_unrecoverable_errors=_int(env, "MAX_UNRECOVERABLE_ERRORS", d.max_unrecoverable_errors),
        **_adaptive(env),
    )
    for name in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        _secret(env, name)
    _url(env, "LIVEKIT_URL", schemes=("ws", "wss", "http", "https"))
    cp_link, cp_router = _scheduling_link(env)
    return Settings(
        agent=AgentSettings(
            agent_name=_str(env, "AGENT_NAME", "pandadoc-trialist"),
            trialist_email=_str(env, "TRIALIST_EMAIL"),
            trialist_name=_str(env, "TRIALIST_NAME"),
            timezone=_str(env, "TRIALIST_TIMEZONE", "America/New_York"),
            prometheus_port=_int(env, "PROMETHEUS_PORT", 0),
        ),
        models=ModelSettings(
            openai_api_key=_secret(env, "OPENAI_API_KEY"),
            openai_base_url=_url(env, "OPENAI_BASE_URL"),
            llm_model=_str(env, "OPENAI_MODEL", "gpt-4o-mini"),
            fallback_llm_model=_str(env, "OPENAI_FALLBACK_MODEL"),
            tts_model=_str(env, "OPENAI_TTS_MODEL", "gpt-4o-mini-tts"),
            tts_voice=_str(env, "OPENAI_TTS_VOICE", "alloy"),
            deepgram_api_key=_secret(env, "DEEPGRAM_API_KEY"),
            stt_model=_str(env, "DEEPGRAM_MODEL", "nova-3"),
        ),
        resilience=resilience,
        amplitude=ServiceSettings(
            api_key=_secret(env, "AMPLITUDE_API_KEY"),
            secret_key=_secret(env, "AMPLITUDE_SECRET_KEY"),
            base_url=_url(env, "AMPLITUDE_BASE_URL", AMPLITUDE_DEFAULT_URL),
            hourly_query_budget=_int(env, "AMPLITUDE_HOURLY_QUERY_BUDGET", 360),
            max_concurrent=_int(env, "AMPLITUDE_MAX_CONCURRENT", 10),
            usage_cache_ttl=_float(env, "AMPLITUDE_USAGE_CACHE_TTL", 600.0),
        ),
        salesforce=SalesforceSettings(
            instance_url=_url(env, "SALESFORCE_INSTANCE_URL"),
            client_id=_secret(env, "SALESFORCE_CLIENT_ID"),
            client_secret=_secret(env, "SALESFORCE_CLIENT_SECRET"),
            task_owner_id=_str(env, "SALESFORCE_TASK_OWNER_ID"),
        ),
        hubspot=HubSpotSettings(
            access_token=_secret(env, "HUBSPOT_ACCESS_TOKEN"),
            base_url=_url(env, "HUBSPOT_BASE_URL", HUBSPOT_DEFAULT_URL),
        ),
        chilipiper=ChiliPiperSettings(
            api_key=_secret(env, "CHILIPIPER_API_KEY"),
            base_url=_url(env, "CHILIPIPER_BASE_URL", CHILIPIPER_DEFAULT_URL),
            scheduling_link=cp_link,
            concierge_router=cp_router,
            booking_url=_url(env, "CHILIPIPER_BOOKING_URL", schemes=("https", "http")),
        ),
        response_limits=_response_limits(env),
        fleet=_fleet(env),
    )


def _adaptive(env: Mapping[str, str]) -> dict[str, Any]:
    """Issue #15's settings: rate rule, bulkhead, retry budget, adaptive timeouts."""
    d = DEFAULT_RESILIENCE
    return {
        "failure_rate_threshold": _float(
            env, "CIRCUIT_FAILURE_RATE_THRESHOLD", d.failure_rate_threshold
        ),
        "slow_call_rate_threshold": _float(
            env, "CIRCUIT_SLOW_CALL_RATE_THRESHOLD", d.slow_call_rate_threshold
        ),
        "slow_call_duration": _float(env, "CIRCUIT_SLOW_CALL_DURATION", d.slow_call_duration),
        "minimum_calls": _int(env, "CIRCUIT_MINIMUM_CALLS", d.minimum_calls),
        "window_size": _int(env, "CIRCUIT_WINDOW_SIZE", d.window_size),
        "window_seconds": _float(env, "CIRCUIT_WINDOW_SECONDS", d.window_seconds),
        "bulkhead_max_concurrent": _int(env, "BULKHEAD_MAX_CONCURRENT", d.bulkhead_max_concurrent),
        "bulkhead_max_wait": _float(env, "BULKHEAD_MAX_WAIT", d.bulkhead_max_wait),
        "retry_budget_max_tokens": _float(
            env, "RETRY_BUDGET_MAX_TOKENS", d.retry_budget_max_tokens
        ),
        "retry_budget_token_ratio": _float(
            env, "RETRY_BUDGET_TOKEN_RATIO", d.retry_budget_token_ratio
        ),
        "adaptive_timeout_percentile": _float(
            env, "ADAPTIVE_TIMEOUT_PERCENTILE", d.adaptive_timeout_percentile
        ),
        "adaptive_timeout_factor": _float(
            env, "ADAPTIVE_TIMEOUT_FACTOR", d.adaptive_timeout_factor
        ),
        "adaptive_timeout_floor": _float(env, "ADAPTIVE_TIMEOUT_FLOOR", d.adaptive_timeout_floor),
        "adaptive_timeout_min_samples": _int(
            env, "ADAPTIVE_TIMEOUT_MIN_SAMPLES", d.adaptive_timeout_min_samples
        ),
    }


def _response_limits(env: Mapping[str, str]) -> ResponseLimits:
    d = ResponseLimits()
    return ResponseLimits(
        amplitude=_int(env, "AMPLITUDE_MAX_RESPONSE_BYTES", d.amplitude),
        salesforce=_int(env, "SALESFORCE_MAX_RESPONSE_BYTES", d.salesforce),
        hubspot=_int(env, "HUBSPOT_MAX_RESPONSE_BYTES", d.hubspot),
        chilipiper=_int(env, "CHILIPIPER_MAX_RESPONSE_BYTES", d.chilipiper),
    )


def _fleet(env: Mapping[str, str]) -> FleetSettings:
    url = _str(env, "RESILIENCE_STORE_URL", DEFAULT_STORE_URL)
    password = urlsplit(url).password if "://" in url else None
    if password:
        register_secret(password)  # a Redis URL may carry one; never in a log line
    return FleetSettings(
        store_url=url, prometheus_multiproc_dir=_str(env, "PROMETHEUS_MULTIPROC_DIR")
    )


def load_settings(root: Path | None = None) -> Settings:
    """Load ``.env.local`` and ``.env`` from ``root`` (default: the repository root) into
    the process environment without overriding real variables, then parse it."""
    from dotenv import load_dotenv

    base = root or Path(__file__).resolve().parents[2]
    for name in (".env.local", ".env"):
        path = base / name
        if path.is_file():
            load_dotenv(path, override=False)
    return settings_from_env(os.environ)
