"""Issue #30 / #23 item 5: every URL setting is parsed at start-up by its client's parser;
a bad one is refused in one line naming the variable, never echoing the value (a Redis
URL may carry a password)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from src.redaction import get_logger
from src.settings import SettingsError, settings_from_env

ROOT = Path(__file__).resolve().parent.parent
SECRET = "S3cr3tPa55"
URL_VARIABLES = (
    "LIVEKIT_URL",
    "OPENAI_BASE_URL",
    "AMPLITUDE_BASE_URL",
    "SALESFORCE_INSTANCE_URL",
    "HUBSPOT_BASE_URL",
    "CHILIPIPER_BASE_URL",
    "CHILIPIPER_BOOKING_URL",
)
BAD_HTTP = {
    "http://[::1": "unclosed [",
    "https://exa mple.com": "spaces",
    "http://host:99999": "port between 1 and 65535",
    "http://host:abc": "port between 1 and 65535",
    "http://host:0": "port between 1 and 65535",
    "http://host:+80": "port between 1 and 65535",
    "http://" + "a" * 5000 + ".com": "at most 2048 characters",
    "http://" + "a" * 64 + ".com": "valid host name",
    "http://a..b": "valid host name",
    "http://%41.com": "valid host name",
    "http://[fe80::zz]": "valid IPv6 address",
    "ftp://host": "must be an absolute URL",
    "host.example.com": "must be an absolute URL",
    f"https://user:{SECRET}@host.example.com": "user name or password",
}
BAD_STORE = {
    f"redis://:{SECRET}/x@localhost:6379/0": "percent-encode",
    f"redis://:{SECRET}#x@localhost:6379/0": "percent-encode",
    "redis://localhost:abc/0": "port between 1 and 65535",
    "redis://localhost:99999/0": "port between 1 and 65535",
    "redis://local host/0": "spaces",
    "redis://[::1": "unclosed [",
    "redis://localhost/abc": "database number",
    "redis://localhost/-1": "database number",
    "redis://localhost:6379/0?foo=bar": "valid Redis URL",
    f"rediss://:{SECRET}@localhost/0?ssl_cert_reqs=bogus": "valid Redis URL",
    "redis://:6379/0": "must have a host",
    "sqlite:///tmp/": "not a directory",
    "sqlite:///" + "d" * 600: "too long for SQLite",
    "sqlite:///tmp/a\x00b.db": "control characters",
    "postgres://db/x": "must start with sqlite://",
    "x" * 5000: "at most 2048",
}


@pytest.mark.parametrize("variable", URL_VARIABLES)
@pytest.mark.parametrize(("value", "reason"), list(BAD_HTTP.items()))
def test_a_bad_http_url_is_refused_naming_the_variable(
    variable: str, value: str, reason: str
) -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_env({variable: value})
    message = str(info.value)
    assert message.startswith(f"{variable} ") and reason in message, message
    assert SECRET not in message and "\n" not in message


@pytest.mark.parametrize(("value", "reason"), list(BAD_STORE.items()))
def test_a_bad_store_url_is_refused_without_its_password(value: str, reason: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_env({"RESILIENCE_STORE_URL": value})
    message = str(info.value)
    assert message.startswith("RESILIENCE_STORE_URL ") and reason in message, message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("variable", "value", "kept"),
    [
        ("HUBSPOT_BASE_URL", "http://127.0.0.1:9000/", "http://127.0.0.1:9000"),
        ("HUBSPOT_BASE_URL", "  https://api.hubapi.com  ", "https://api.hubapi.com"),
        ("AMPLITUDE_BASE_URL", "http://[::1]:8080", "http://[::1]:8080"),
        ("AMPLITUDE_BASE_URL", "https://analytics.eu.amplitude.com", None),
        ("CHILIPIPER_BASE_URL", "https://bücher.example/api", None),
        ("CHILIPIPER_BOOKING_URL", "https://x.chilipiper.com/book/me?utm=1#top", None),
        ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1", None),
        ("LIVEKIT_URL", "wss://my-project.livekit.cloud", None),
    ],
)
def test_good_urls_are_kept(variable: str, value: str, kept: str | None) -> None:
    s = settings_from_env({variable: value})
    field = {
        "HUBSPOT_BASE_URL": lambda: s.hubspot.base_url,
        "AMPLITUDE_BASE_URL": lambda: s.amplitude.base_url,
        "CHILIPIPER_BASE_URL": lambda: s.chilipiper.base_url,
        "CHILIPIPER_BOOKING_URL": lambda: s.chilipiper.booking_url,
        "OPENAI_BASE_URL": lambda: s.models.openai_base_url,
        "LIVEKIT_URL": lambda: value,
    }[variable]()
    assert field == (kept or value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://cache.example.com:6380",
        "redis://[::1]:6379/2",
        f"redis://agent:{SECRET}%2Fx%23y@redis.internal:6379/1",
        "sqlite:///tmp/pandadoc dir/store.db",
        "memory://",
    ],
)
def test_good_store_urls_are_kept(url: str) -> None:
    assert settings_from_env({"RESILIENCE_STORE_URL": url}).fleet.store_url == url


def test_a_percent_encoded_redis_password_is_redacted_both_ways(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings_from_env({"RESILIENCE_STORE_URL": "redis://:Xy7%2Fq9%23z@localhost:6379/0"})
    get_logger("pandadoc.test").warning("raw %s decoded %s", "Xy7%2Fq9%23z", "Xy7/q9#z")
    assert "Xy7" not in caplog.text


def test_a_secret_that_cannot_go_in_a_header_is_refused() -> None:
    for value in ("sk-\u00e9t\u00e9", "sk-one two", "sk-\x7f"):
        with pytest.raises(SettingsError, match="OPENAI_API_KEY must be printable ASCII"):
            settings_from_env({"OPENAI_API_KEY": value})


@pytest.mark.parametrize("command", ["start", "dev", "console"])
def test_a_malformed_store_url_stops_the_command_in_one_line(tmp_path: Path, command: str) -> None:
    """Issue #23 item 5: before, `start` kept running and every job died in its entry."""
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    env |= {
        "PYTHONPATH": str(tmp_path),
        "LIVEKIT_URL": "ws://127.0.0.1:9",
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "devsecret-devsecret-devsecret-00",
        "OPENAI_API_KEY": "sk-test",
        "RESILIENCE_STORE_URL": f"redis://:{SECRET}/x@localhost:6379/0",
    }
    result = subprocess.run(
        [sys.executable, "src/agent.py", command, *(["--text"] if command == "console" else [])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 1, lines
    assert len(lines) == 1 and "RESILIENCE_STORE_URL" in lines[0], lines
    assert SECRET not in lines[0]


def test_libraries_read_the_checked_values_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LiveKit and the OpenAI SDK read these variables themselves: the loader leaves them
    as it checked them (stripped; blank ones removed, so the SDK's default applies)."""
    from src.settings import load_settings

    monkeypatch.setenv("LIVEKIT_URL", "  wss://my-project.livekit.cloud \t")
    monkeypatch.setenv("OPENAI_BASE_URL", "   ")
    load_settings(tmp_path)
    assert os.environ["LIVEKIT_URL"] == "wss://my-project.livekit.cloud"
    assert "OPENAI_BASE_URL" not in os.environ


def test_the_metrics_directory_is_one_the_worker_may_empty(tmp_path: Path) -> None:
    """LiveKit's worker deletes every file in PROMETHEUS_MULTIPROC_DIR at start."""
    name = "PROMETHEUS_MULTIPROC_DIR"
    mine = tmp_path / "metrics"
    mine.mkdir()
    (mine / "counter_123.db").write_bytes(b"")
    assert settings_from_env({name: str(mine)}).fleet.prometheus_multiproc_dir == str(mine)
    assert settings_from_env({name: str(tmp_path / "new")}).fleet.prometheus_multiproc_dir
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(SettingsError, match=f"^{name} holds files other than metrics"):
        settings_from_env({name: str(mine)})
    with pytest.raises(SettingsError, match=f"^{name} must be a directory$"):
        settings_from_env({name: str(mine / "notes.txt")})
    with pytest.raises(SettingsError, match=f"^{name} must not contain spaces or control"):
        settings_from_env({name: "/tmp/a\x00b"})
