"""Settings are untrusted input: bad values get a clear message naming the variable,
never the value; secrets are registered for redaction."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from src.redaction import get_logger
from src.registry import VENDORS
from src.settings import (
    DEFAULT_RESILIENCE,
    ResilienceSettings,
    SettingsError,
    load_settings,
    settings_from_env,
)


def test_defaults_follow_the_spec() -> None:
    s = settings_from_env({})
    r = s.resilience
    assert (r.failure_threshold, r.recovery_timeout) == (3, 30.0)
    assert (r.max_retries, r.base_delay, r.max_delay, r.jitter) == (2, 0.5, 3.0, True)
    assert r == DEFAULT_RESILIENCE
    assert s.amplitude.base_url == "https://amplitude.com"
    assert s.hubspot.base_url == "https://api.hubapi.com"
    assert set(s.vendors) == set(VENDORS.names())  # a section per registered vendor
    assert not any(section.configured for section in s.vendors.values())


def test_values_are_parsed() -> None:
    s = settings_from_env(
        {
            "CIRCUIT_FAILURE_THRESHOLD": " 5 ",
            "CIRCUIT_RECOVERY_TIMEOUT": "12.5",
            "RETRY_JITTER": "off",
            "AMPLITUDE_BASE_URL": "http://127.0.0.1:9000/",
            "OPENAI_FALLBACK_MODEL": "gpt-4.1-mini",
        }
    )
    assert s.resilience.failure_threshold == 5
    assert s.resilience.recovery_timeout == 12.5
    assert s.resilience.jitter is False
    assert s.amplitude.base_url == "http://127.0.0.1:9000"
    assert s.models.fallback_llm_model == "gpt-4.1-mini"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CIRCUIT_FAILURE_THRESHOLD", "three", "CIRCUIT_FAILURE_THRESHOLD must be a whole number"),
        ("CIRCUIT_FAILURE_THRESHOLD", "0", "CIRCUIT_FAILURE_THRESHOLD must be >= 1"),
        ("CIRCUIT_RECOVERY_TIMEOUT", "soon", "CIRCUIT_RECOVERY_TIMEOUT must be a number"),
        ("CIRCUIT_RECOVERY_TIMEOUT", "inf", "CIRCUIT_RECOVERY_TIMEOUT must be a finite"),
        ("RETRY_BASE_DELAY", "9", "RETRY_BASE_DELAY must be >= 0 and <= RETRY_MAX_DELAY"),
        ("RETRY_JITTER", "maybe", "RETRY_JITTER must be true or false"),
        ("SERVICE_TIMEOUT", "60", "SERVICE_TIMEOUT must be > 0 and <= TOOL_DEADLINE"),
        ("LLM_TIMEOUT", "0", "LLM_TIMEOUT must be > 0"),
        ("LLM_MAX_RETRY", "-1", "LLM/TTS/STT_MAX_RETRY must be >= 0"),
        ("MAX_UNRECOVERABLE_ERRORS", "0", "MAX_UNRECOVERABLE_ERRORS must be >= 1"),
        ("RETRY_MAX_RETRIES", "-2", "RETRY_MAX_RETRIES must be >= 0"),
        ("HUBSPOT_BASE_URL", "api.hubapi.com", "HUBSPOT_BASE_URL must be an absolute URL"),
        ("LIVEKIT_URL", "my-project.livekit.cloud", "LIVEKIT_URL must be an absolute URL"),
        ("MODEL_RETRY_INTERVAL", "-1", "MODEL_RETRY_INTERVAL must be >= 0"),
        ("FILLER_DELAY", "-1", "FILLER_DELAY must be >= 0"),
        ("TRIALIST_TIMEZONE", "Mars/Olympus", "TRIALIST_TIMEZONE must be an IANA zone"),
        ("TRIALIST_EMAIL", "not-an-email", "TRIALIST_EMAIL must be an email address"),
        ("PROMETHEUS_PORT", "70000", "PROMETHEUS_PORT must be a port number"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_env({name: value})
    assert str(info.value).startswith(message)


def test_bad_value_is_never_echoed() -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_env({"OPENAI_BASE_URL": "sk-proj-pasted-key-by-mistake"})
    assert "sk-proj" not in str(info.value)
    assert "OPENAI_BASE_URL" in str(info.value)


def test_recovery_timeout_must_not_be_negative() -> None:
    with pytest.raises(SettingsError, match="CIRCUIT_RECOVERY_TIMEOUT"):
        ResilienceSettings(recovery_timeout=-1)


def test_secrets_are_registered_for_redaction(caplog: pytest.LogCaptureFixture) -> None:
    settings_from_env({"HUBSPOT_ACCESS_TOKEN": "pat-na1-very-secret-token"})
    get_logger("pandadoc.test").warning("token is %s", "pat-na1-very-secret-token")
    assert "pat-na1-very-secret-token" not in caplog.text
    assert "<secret>" in caplog.text


def test_load_settings_reads_env_files_without_overriding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env.local").write_text("AGENT_NAME=from-local\nTRIALIST_EMAIL=a@b.example.com\n")
    (tmp_path / ".env").write_text("AGENT_NAME=from-env\nTRIALIST_NAME=Jane\n")
    monkeypatch.delenv("AGENT_NAME", raising=False)
    monkeypatch.delenv("TRIALIST_EMAIL", raising=False)
    monkeypatch.delenv("TRIALIST_NAME", raising=False)
    monkeypatch.setenv("TRIALIST_TIMEZONE", "Europe/Paris")
    s = load_settings(tmp_path)
    assert s.agent.agent_name == "from-local"  # .env.local wins over .env
    assert s.agent.trialist_email == "a@b.example.com"
    assert s.agent.trialist_name == "Jane"
    assert s.agent.timezone == "Europe/Paris"  # the real environment wins over files
    logging.getLogger().handlers.clear()
