"""``src/quickstart.py``: start-up refusals, the console's built-in sandbox, one-line logs.

Settings parsed here register their secrets with ``src.redaction`` for the whole session,
so the test values are long and distinctive (a value like "secret" would be masked inside
other tests' expected output).

The end-to-end runs (a fresh clone in a pseudo-terminal, ``start`` with nothing set) are
in ``tests/test_console.py``; these check the rules one by one, in-process.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import urllib.request
from collections.abc import Callable

import pytest

from src import quickstart
from src.quickstart import ConfigurationRefused, check_command, prepare
from src.sandbox.base import ADMIN_PREFIX
from src.settings import Settings, settings_from_env

_LIVEKIT = {
    "LIVEKIT_URL": "wss://example.livekit.cloud",
    "LIVEKIT_API_KEY": "lk-quickstart-test-key",
    "LIVEKIT_API_SECRET": "lk-quickstart-test-secret",
}


def _loader(env: dict[str, str]) -> Callable[[], Settings]:
    return lambda: settings_from_env(env)


@pytest.mark.parametrize("command", ["start", "dev"])
def test_worker_commands_name_every_missing_variable(command: str) -> None:
    env: dict[str, str] = {}
    with pytest.raises(ConfigurationRefused) as refused:
        check_command([command], env=env, load=_loader(env))
    message = str(refused.value)
    assert refused.value.code == message  # SystemExit: printed on stderr, exit status 1
    assert "\n" not in message
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "OPENAI_API_KEY"):
        assert name in message


def test_livekit_flags_count_as_set_and_a_complete_setup_passes() -> None:
    env = {k: v for k, v in _LIVEKIT.items() if k != "LIVEKIT_URL"}
    with pytest.raises(ConfigurationRefused) as refused:
        check_command(["start", "--url", "wss://x.livekit.cloud"], env=env, load=_loader(env))
    assert "OPENAI_API_KEY" in str(refused.value)
    assert "LIVEKIT" not in str(refused.value)

    env = {**_LIVEKIT, "OPENAI_API_KEY": "sk-quickstart-test"}
    check_command(["start", "--log-level", "INFO"], env=env, load=_loader(env))


def test_help_and_other_commands_are_left_to_livekit() -> None:
    def no_load() -> Settings:
        raise AssertionError("settings must not be read for --help")

    check_command(["start", "--help"], env={}, load=no_load)
    check_command(["--help"], env={}, load=no_load)
    check_command(["download-files"], env={}, load=no_load)


def test_a_bad_value_is_one_line_too() -> None:
    env = {"TOOL_DEADLINE": "soon"}
    with pytest.raises(ConfigurationRefused, match=r"^Configuration error: TOOL_DEADLINE"):
        check_command(["start"], env=env, load=_loader(env))


def test_console_refuses_setups_that_cannot_work() -> None:
    vendors_only = {"HUBSPOT_ACCESS_TOKEN": "pat-quickstart-test"}
    with pytest.raises(ConfigurationRefused, match="OPENAI_API_KEY"):
        check_command(["console", "--text"], env=vendors_only, load=_loader(vendors_only))
    with pytest.raises(ConfigurationRefused, match="DEEPGRAM_API_KEY"):
        check_command(["console"], env={}, load=_loader({}))
    # Nothing configured, or a model key: the text console can work.
    check_command(["console", "--text"], env={}, load=_loader({}))
    keyed = {"OPENAI_API_KEY": "sk-quickstart-test"}
    check_command(["console", "--text"], env=keyed, load=_loader(keyed))


def test_a_stopped_local_model_endpoint_is_refused() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        env = {
            "OPENAI_API_KEY": "sk-quickstart-test",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
        }
        check_command(["console", "--text"], env=env, load=_loader(env))  # it answers
    with pytest.raises(ConfigurationRefused, match="Nothing answers at OPENAI_BASE_URL"):
        check_command(["console", "--text"], env=env, load=_loader(env))  # closed now
    remote = {"OPENAI_API_KEY": "sk-quickstart-test", "OPENAI_BASE_URL": "https://llm.invalid/v1"}
    check_command(["console", "--text"], env=remote, load=_loader(remote))  # not probed


def test_nothing_configured_starts_the_sandbox_and_points_settings_at_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env: dict[str, str] = {}
    started: list[quickstart.InProcessSandbox] = []
    real_start = quickstart._start_sandbox

    def start() -> quickstart.InProcessSandbox:
        started.append(real_start())
        return started[-1]

    monkeypatch.setattr(quickstart, "_start_sandbox", start)  # to stop it at the end
    try:
        # --log-level: leave LiveKit's logging as it is (tested separately below).
        argv = ["console", "--text", "--log-level", "INFO"]
        settings = prepare(argv, Settings(), env=env, reload=_loader(env))
        assert len(started) == 1
        assert settings.models.openai_base_url.startswith("http://127.0.0.1:")
        assert settings.amplitude.configured and settings.hubspot.configured
        assert settings.agent.trialist_email == "jane.doe@acme.example.com"
        journal = f"{settings.amplitude.base_url}{ADMIN_PREFIX}/journal"
        with urllib.request.urlopen(journal, timeout=5) as response:  # it really serves
            assert isinstance(json.loads(response.read()), list)
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1 and "built-in sandbox" in out[0], out
    finally:
        for running in started:
            running.stop()


def test_configured_services_are_used_as_they_are() -> None:
    env = {"OPENAI_API_KEY": "sk-quickstart-test", "TRIALIST_EMAIL": "sam@example.com"}
    settings = settings_from_env(env)
    argv = ["console", "--text", "--log-level", "INFO"]
    assert prepare(argv, settings, env=env, reload=_loader(env)) is settings
    assert env == {"OPENAI_API_KEY": "sk-quickstart-test", "TRIALIST_EMAIL": "sam@example.com"}
    # The sandbox never starts for the worker commands.
    assert prepare(["start"], Settings(), env={}, reload=_loader({})) == Settings()


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _record(name: str, level: int, msg: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            exc_info = sys.exc_info()
    record = logging.LogRecord(name, level, __file__, 1, msg, None, exc_info)
    record.extra_field = {"job_id": "x"}
    return record


def test_the_chat_gets_one_line_warnings_and_errors_only() -> None:
    inner = _Capture()
    handler = quickstart._OneLineWarnings(inner)
    handler.handle(_record("livekit.agents", logging.DEBUG, "using audio io"))
    handler.handle(_record("livekit.agents", logging.WARNING, "event loop blocked for 160ms"))
    handler.handle(_record("livekit.agents", logging.ERROR, "Error in _llm_inference_task", True))
    handler.handle(_record("pandadoc.agent", logging.WARNING, "Not configured:\n['amplitude']"))
    handler.handle(_record("livekit.agents", logging.ERROR, "unhandled exception", exc=True))

    shown = [(r.name, r.levelname, r.getMessage()) for r in inner.records]
    assert shown == [
        ("pandadoc.agent", "WARNING", "Not configured:"),
        ("livekit.agents", "ERROR", "unhandled exception"),
    ]
    for record in inner.records:  # no traceback, no extra fields on screen
        assert record.exc_info is None and record.exc_text is None
        assert not hasattr(record, "extra_field")
