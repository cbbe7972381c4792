"""Personal data and secrets never reach a log line."""

from __future__ import annotations

import io
import logging
from decimal import Decimal

import pytest

from src.redaction import install_redaction, mask_email, redact, register_secret


@pytest.mark.parametrize(
    ("text", "absent"),
    [
        ("lookup for jane.doe@acme.example.com failed", "jane.doe@acme.example.com"),
        ("call me at +1 (415) 555-0134 tomorrow", "555-0134"),
        ("Authorization: Bearer abcdef123456789", "abcdef123456789"),
        ("header Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
    ],
)
def test_redact_masks_personal_data(text: str, absent: str) -> None:
    assert absent not in redact(text)


def test_redact_keeps_ordinary_text_and_numbers() -> None:
    text = "3 retries in 2026-11-28T17:48:43Z for slot-20261130T1500Z, status 503"
    assert redact(text) == text


def test_mask_email_keeps_domain() -> None:
    assert mask_email("jane.doe@acme.example.com") == "j***@acme.example.com"
    assert mask_email("no-at-sign") == "***"


def test_registered_secret_is_masked_everywhere() -> None:
    register_secret("sk-live-abcdefghij")
    register_secret("abc")  # too short to mask safely: ignored
    assert redact("key=sk-live-abcdefghij;") == "key=<secret>;"
    assert redact("abc") == "abc"


def test_installed_filter_covers_third_party_loggers(caplog: pytest.LogCaptureFixture) -> None:
    root = logging.getLogger()
    root.addHandler(caplog.handler)
    try:
        install_redaction()
        install_redaction()  # idempotent
        assert sum(type(f).__name__ == "RedactingFilter" for f in caplog.handler.filters) == 1
        logging.getLogger("aiohttp.client").warning("request for %s", "sam.lee@globex.example.com")
        logging.getLogger("livekit.agents").warning("user jane.doe@acme.example.com")
        try:
            raise ValueError("bad email sam.lee@globex.example.com")
        except ValueError:
            logging.getLogger("openai").exception("failed")
    finally:
        root.removeHandler(caplog.handler)
    assert "sam.lee@globex.example.com" not in caplog.text
    assert "jane.doe@acme.example.com" not in caplog.text
    assert "s***@globex.example.com" in caplog.text


@pytest.mark.parametrize(
    "email", ["josé@acme.example.com", "jörg.müller@example.com", "user@exämple.de"]
)
def test_unicode_emails_are_masked(email: str) -> None:
    masked = redact(f"lookup for {email} failed")
    assert email not in masked
    assert email.split("@")[0][1:] not in masked


def test_credentials_with_punctuation_are_masked() -> None:
    assert "AQ4xyz" not in redact("Authorization: Bearer 00DSANDBOX!AQ4xyz.abc")


def test_json_logs_redact_tracebacks_and_extras() -> None:
    from livekit.agents.cli.log import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.redaction.json")
    logger.addHandler(handler)
    logger.propagate = False
    install_redaction("test.redaction.json")
    try:
        try:
            raise ValueError("lookup failed for jane.doe@acme.example.com / +1 415 555 0132")
        except ValueError:
            logger.exception(
                "failed %d time(s)",
                Decimal(2),
                extra={
                    "guest": "jane.doe@acme.example.com",
                    "lk.pii.arguments": {"email": "a.b@c.example.com"},
                },
            )
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "failed 2 time(s)" in text
    assert "ValueError" in text  # the traceback is still there, redacted
    for personal in ("jane.doe@acme.example.com", "555 0132", "a.b@c.example.com"):
        assert personal not in text


def test_a_url_password_without_a_user_is_masked() -> None:
    # Redis URLs carry the password with an empty user: redis://:password@host
    assert "hunter2pw" not in redact("store at redis://:hunter2pw@cache.internal:6379/0")
    assert "s3cr3t" not in redact("https://admin:s3cr3t@example.org/x")
