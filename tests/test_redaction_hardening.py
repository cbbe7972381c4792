"""Redaction gaps found by the fault harness (issue #11): every address the validator
accepts is masked in every formatter (LiveKit's own "executing tool" line included), and
values are masked, not the words around them."""

from __future__ import annotations

import logging

import pytest
from livekit.agents.cli.log import ColoredFormatter, JsonFormatter

from src.redaction import install_redaction, redact
from src.sandbox.openai_server import ToolCall, Turn
from src.validation import is_valid_email
from tests.test_agent import Rig, rig, sandbox  # noqa: F401  (fixtures)

ADDRESSES = [
    '"john doe"@example.org',
    '"a\\"b"@example.org',
    "josé@exämple.de",
    "o'brien+tag@example.com",
    "a/b=c@sub.example.io",
    "xyz@1.2",
    "üñî@例え.jp",
]


@pytest.mark.parametrize("address", ADDRESSES)
def test_every_valid_address_is_masked(address: str) -> None:
    assert is_valid_email(address)
    local = address.rsplit("@", 1)[0]
    for text in (
        f"lookup for {address} failed",
        f"args {{'email': '{address}'}}",
        '{"email": "' + address.replace("\\", "\\\\").replace('"', '\\"') + '"}',  # JSON
    ):
        masked = redact(text)
        assert local not in masked and local[1:] not in masked, masked


@pytest.mark.parametrize(
    "text",
    [
        "access token rejected, refreshing it once",
        "token expired. retrying",
        "api-key missing for chilipiper",
        "Basic auth failed for amplitude",
        "Circuit breaker: Opening circuit after 3 failures",
    ],
)
def test_words_around_credentials_survive(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer abcdef123456789", "abcdef123456789"),
        ("{'Authorization': 'Bearer 00DSANDBOX!AQ4xyz.abc'}", "AQ4xyz"),
        ("GET https://user:hunter2@api.example.com/x", "hunter2"),
        ("GET /oauth?access_token=abcXYZ&limit=5", "abcXYZ"),
        ('{"client_secret": "s3cr3tvalue", "grant_type": "x"}', "s3cr3tvalue"),
        ("form refresh_token=qwerty&password=hunter2", "qwerty"),
        ("form refresh_token=qwerty&password=hunter2", "hunter2"),
        ("call +1\u00a0415\u00a0555\u20110134 now", "555"),
    ],
)
def test_sibling_secrets_are_masked(text: str, secret: str) -> None:
    masked = redact(text)
    assert secret not in masked
    assert "<secret>" in masked or "<phone>" in masked


async def test_livekit_executing_tool_line_is_masked_in_every_formatter(
    rig: Rig,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    address = '"john doe"@example.org'
    caplog.set_level(logging.DEBUG, logger="livekit.agents")
    install_redaction()  # attaches the filter to caplog's root handler too
    rig.sandbox.openai.say(
        Turn(tool_calls=[ToolCall("get_trial_usage", {"email": address})]), Turn("Sure.")
    )
    await rig.say("My email is john doe at example dot org")
    [record] = [r for r in caplog.records if r.getMessage() == "executing tool"]
    assert "lk.pii.arguments" in vars(record)  # LiveKit logs the raw tool arguments
    for formatter in (
        logging.Formatter("%(message)s %(lk.pii.arguments)s"),
        JsonFormatter(),
        ColoredFormatter("%(message)s %(extra)s"),
    ):
        line = formatter.format(record)
        assert "john doe" not in line, (type(formatter).__name__, line)
        assert "example.org" in line  # the domain stays for debugging
