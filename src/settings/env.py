"""Reading the configuration from the environment (and ``.env.local`` / ``.env``)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from ..redaction import register_secret
from ..store import DEFAULT_STORE_URL
from .model import (
    DEFAULT_RESILIENCE,
    AgentSettings,
    FleetSettings,
    ModelSettings,
    ResilienceSettings,
    ResponseLimits,
    Settings,
    SettingsError,
)
from .urls import check_http_url, check_metrics_dir, check_store_url


def _str(env: Mapping[str, str], name: str, default: str = "") -> str:
    return env.get(name, default).strip() or default


def _url(
    env: Mapping[str, str],
    name: str,
    default: str = "",
    *,
    schemes: tuple[str, ...] = ("http", "https"),
    parser: Literal["yarl", "httpx"] = "yarl",
    base: bool = True,
) -> str:
    """Parsed as its client will (:mod:`.urls`): a working URL, ``""`` or a refusal."""
    value = _str(env, name, default)
    return check_http_url(name, value, schemes=schemes, parser=parser, base=base)


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
    if value and not (value.isascii() and value.isprintable() and " " not in value):
        # It goes into a header: httpx and aiohttp refuse anything else, on the first call.
        raise SettingsError(f"{name} must be printable ASCII without spaces (as issued)")
    register_secret(value)
    return value


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
    from ..registry import VENDORS  # the registry's sections use the helpers above

    return Settings(
        agent=AgentSettings(
            agent_name=_str(env, "AGENT_NAME", "pandadoc-trialist"),
            trialist_email=_str(env, "TRIALIST_EMAIL"),
            trialist_name=_str(env, "TRIALIST_NAME"),
            timezone=_str(env, "TRIALIST_TIMEZONE", "America/New_York"),
            prometheus_port=_int(env, "PROMETHEUS_PORT", 0),
            sip_verify_from=_str(env, "SIP_VERIFY_FROM", "contacts").lower(),
            otlp_endpoint=_url(env, "OTEL_EXPORTER_OTLP_ENDPOINT", base=False),
        ),
        models=ModelSettings(
            openai_api_key=_secret(env, "OPENAI_API_KEY"),
            openai_base_url=_url(env, "OPENAI_BASE_URL", parser="httpx"),
            llm_model=_str(env, "OPENAI_MODEL", "gpt-4o-mini"),
            fallback_llm_model=_str(env, "OPENAI_FALLBACK_MODEL"),
            tts_model=_str(env, "OPENAI_TTS_MODEL", "gpt-4o-mini-tts"),
            tts_voice=_str(env, "OPENAI_TTS_VOICE", "alloy"),
            deepgram_api_key=_secret(env, "DEEPGRAM_API_KEY"),
            stt_model=_str(env, "DEEPGRAM_MODEL", "nova-3"),
        ),
        resilience=resilience,
        vendors={vendor.name: vendor.settings_from_env(env) for vendor in VENDORS},
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
        "outbox_max_attempts": _int(env, "OUTBOX_MAX_ATTEMPTS", d.outbox_max_attempts),
        "outbox_max_age_s": _float(env, "OUTBOX_MAX_AGE_S", d.outbox_max_age_s),
    }


def _response_limits(env: Mapping[str, str]) -> ResponseLimits:
    from ..registry import VENDORS

    return ResponseLimits(
        {
            vendor.name: _int(env, vendor.response_cap_key, vendor.max_response_bytes)
            for vendor in VENDORS
        }
    )


def _fleet(env: Mapping[str, str]) -> FleetSettings:
    url, secrets = check_store_url(
        "RESILIENCE_STORE_URL", _str(env, "RESILIENCE_STORE_URL", DEFAULT_STORE_URL)
    )
    for secret in secrets:
        register_secret(secret)  # a Redis URL may carry a password; never in a log line
    metrics_dir = check_metrics_dir(
        "PROMETHEUS_MULTIPROC_DIR", _str(env, "PROMETHEUS_MULTIPROC_DIR")
    )
    return FleetSettings(store_url=url, prometheus_multiproc_dir=metrics_dir)


def load_settings(root: Path | None = None) -> Settings:
    """Load ``.env.local`` and ``.env`` from ``root`` (default: the repository root) into
    the process environment without overriding real variables, then parse it."""
    from dotenv import load_dotenv

    base = root or Path(__file__).resolve().parents[2]
    for name in (".env.local", ".env"):
        path = base / name
        if path.is_file():
            load_dotenv(path, override=False)
    settings = settings_from_env(os.environ)
    for name in READ_BY_LIBRARIES:  # they must read the value that was checked
        raw = os.environ.get(name)
        if raw is not None and raw != raw.strip():
            if raw.strip():
                os.environ[name] = raw.strip()
            else:
                del os.environ[name]
    return settings


# Variables LiveKit, the OpenAI SDK or the Deepgram plugin also read from the environment
# themselves (a blank OPENAI_BASE_URL would otherwise become the SDK's base URL).
READ_BY_LIBRARIES = (
    "LIVEKIT_URL",
    "LIVEKIT_API_KEY",
    "LIVEKIT_API_SECRET",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "DEEPGRAM_API_KEY",
)
