"""The README's quick start, run for real: ``agent.py console --text`` in a pseudo-terminal.

``test_console_text_on_a_fresh_clone`` is the issue's acceptance test: a copy of ``src/``
with no ``.env*`` and an environment without any key; the console starts the built-in
sandbox itself. ``test_console_text_answers_from_the_sandbox`` runs against a separate
``python -m src.sandbox --ephemeral`` (configured services are used as they are). Both
type a question and expect the stand-in model's spoken answer (it reads back the real tool
output from the Amplitude stand-in). ``start``/``dev`` with nothing configured must refuse
in one line. No PortAudio needed: text mode opens no audio device (issue #31).
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "src" / "agent.py"
# Output after which waiting longer is pointless.
_FATAL = (
    "Plugins must be registered on the main thread",
    "unhandled exception while running the job task",
    "PortAudio library not found",
)
_ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][A-Za-z0-9]|[=>])")


def _plain(raw: bytes) -> str:
    return _ANSI.sub("", raw.decode("utf-8", errors="replace")).replace("\r", "")


def _stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> int | None:
    """SIGINT the process group, then SIGKILL it; returns the exit status (None: killed)."""
    if proc.poll() is None:
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
    status = proc.poll()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # children the group leader left behind
    return status


@pytest.fixture
def sandbox_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env_file = tmp_path / "sandbox.env"
    proc = subprocess.Popen(
        [sys.executable, "-m", "src.sandbox", "--ephemeral", "--write-env", str(env_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not env_file.exists() or "TRIALIST_EMAIL" not in env_file.read_text():
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"sandbox exited with {proc.returncode}:\n{out}")
            if time.monotonic() > deadline:
                pytest.fail("sandbox did not write its env file within 15 s")
            time.sleep(0.05)
        values = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
        yield values
    finally:
        _stop(proc)


class Terminal:
    """A child process on a pseudo-terminal, read with deadlines."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self.raw = b""

    @property
    def text(self) -> str:
        return _plain(self.raw)

    def _pump(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.raw += chunk
        return bool(chunk)

    def wait_for(self, found: Callable[[str], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not found(self.text):
            remaining = deadline - time.monotonic()
            fatal = any(marker in self.text for marker in _FATAL)
            if fatal or remaining <= 0 or not self._pump(min(0.2, remaining)):
                if found(self.text):
                    return
                tail = self.text[-4000:]
                hint = ""
                if "Plugins must be registered on the main thread" in tail:
                    hint = (
                        "\nHINT: agent.py imports a LiveKit plugin (silero) inside prewarm(), "
                        "i.e. off the main thread; import it at module level."
                    )
                if "PortAudio" in tail:
                    hint = "\nHINT: PortAudio is missing; run .ci/setup-system."
                reason = "the console failed" if fatal else "timed out"
                pytest.fail(f"{reason} waiting for {what}; terminal tail:\n{tail}{hint}")

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self._pump(0.1):
            pass

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int | None:
        status = _stop(self.proc, grace=8.0)
        os.close(self.master)
        return status


def _agent_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "DEEPGRAM_"))}
    env.update(extra)
    env.update(
        {
            "TERM": "xterm-256color",
            "COLUMNS": "120",
            "LINES": "40",
            "PYTHONUNBUFFERED": "1",
            "RETRY_JITTER": "false",
        }
    )
    return env


def test_console_text_answers_from_the_sandbox(sandbox_env: dict[str, str]) -> None:
    assert sandbox_env["TRIALIST_EMAIL"]
    term = Terminal([sys.executable, str(AGENT), "console", "--text"], _agent_env(sandbox_env))
    status: int | None = None
    try:
        term.wait_for(lambda t: "Ava from PandaDoc" in t, 25, "the agent's greeting")
        term.drain(0.5)  # let the prompt settle before typing
        start = len(term.text)
        term.type("how is my trial usage?\r")
        term.wait_for(
            lambda t: "documents" in t[start:] and "get_trial_usage" in t[start:],
            20,
            "the agent's answer about trial usage",
        )
        answer = term.text[start:]
        assert re.search(r"created \w+ documents", answer), answer[-2000:]
        assert "Traceback" not in term.text, term.text[-4000:]
    finally:
        status = term.close()
    # Ctrl+C (SIGINT) must shut the worker down by itself, without SIGKILL.
    assert status is not None, "console did not exit on SIGINT"


def test_help_lists_the_commands() -> None:
    result = subprocess.run(
        [sys.executable, str(AGENT), "--help"],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "120", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    for command in ("console", "dev", "start", "download-files"):
        assert re.search(rf"\b{re.escape(command)}\b", result.stdout), result.stdout


# -- a fresh clone, nothing configured ----------------------------------------------------

_LOG_LINE = re.compile(r"\d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO) ")
_PROMPT_CHROME = re.compile(r"\u276f \u2588 Type to talk to your agent|\? for shortcuts|─+")


def _chat(screen: str) -> str:
    """The transcript without the redrawn prompt, whitespace collapsed."""
    return " ".join(_PROMPT_CHROME.sub(" ", screen).split())


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    """The code without any ``.env*`` next to it (``PYTHONPATH`` makes this copy of the
    ``src`` package win over the editable install that points at the repository)."""
    app = tmp_path / "app"
    shutil.copytree(ROOT / "src", app / "src", ignore=shutil.ignore_patterns("__pycache__"))
    return app


def _empty_env(app: Path) -> dict[str, str]:
    """No key, no vendor, no LiveKit variable: only what a shell always has."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    env.update(
        PYTHONPATH=str(app),
        TERM="xterm-256color",
        COLUMNS="120",
        LINES="40",
        PYTHONUNBUFFERED="1",
    )
    return env


def test_console_text_on_a_fresh_clone(fresh_clone: Path) -> None:
    started = time.monotonic()
    term = Terminal(
        [sys.executable, "src/agent.py", "console", "--text"], _empty_env(fresh_clone), fresh_clone
    )
    status: int | None = None
    try:
        term.wait_for(lambda t: "Ava from PandaDoc" in t, 28, "the agent's greeting")
        assert "built-in sandbox" in term.text, term.text[-3000:]
        term.drain(0.3)
        start = len(term.text)
        term.type("how is my trial usage?\r")
        budget = max(30 - (time.monotonic() - started), 1.0)
        term.wait_for(
            lambda t: re.search(r"created \w+ documents", t[start:]) is not None,
            budget,
            "the agent's answer about trial usage within 30 s of start",
        )
        term.drain(0.3)
        screen = term.text
        assert "Traceback" not in screen, screen[-4000:]
        # A clean chat: the greeting is an agent turn, the logs went to the file.
        assert "● Agent Hi there! I'm Ava from PandaDoc" in _chat(screen), _chat(screen)
        assert not _LOG_LINE.search(screen), screen[-3000:]
        assert f"Full log: {fresh_clone / 'console.log'}" in screen, screen[:2000]

        # The model fails (the printed ports take the README's fault command): an
        # apology in the chat and one log line, no traceback.
        ports = re.search(r"ports (\d+)-\d+", screen)
        assert ports, screen[:2000]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "src.sandbox",
                "fault",
                "openai",
                "500",
                "--port-base",
                ports[1],
            ],
            cwd=fresh_clone,
            env=_empty_env(fresh_clone),
            check=True,
            capture_output=True,
            timeout=20,
        )
        start = len(term.text)
        term.type("any demo times available?\r")
        term.wait_for(lambda t: "I apologize" in t[start:], 20, "the spoken apology")
        term.drain(0.5)
        failed_turn = term.text[start:]
        assert "Traceback" not in failed_turn, failed_turn[-4000:]
        errors = re.findall(r"\d\d:\d\d:\d\d\.\d{3} (?:WARNING|ERROR) .*", failed_turn)
        assert len(errors) == 1, errors
    finally:
        status = term.close()
    assert status is not None, "console did not exit on SIGINT"
    log = (fresh_clone / "console.log").read_text()
    assert "get_trial_usage" in log or "conversation_item_added" in log, log[-2000:]


@pytest.mark.parametrize("command", ["start", "dev"])
def test_worker_with_nothing_configured_refuses_in_one_line(
    fresh_clone: Path, command: str
) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "src/agent.py", command],
        cwd=fresh_clone,
        env=_empty_env(fresh_clone),
        capture_output=True,
        text=True,
        timeout=15,
    )
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "OPENAI_API_KEY"):
        assert name in lines[0]
    assert elapsed < 15


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CHILIPIPER_SCHEDULING_LINK", "3f2a9c1e-0000-4000-8000-00000000000g"),
        ("CHILIPIPER_SCHEDULING_LINK", "Demo Link!"),
        ("SALESFORCE_TASK_OWNER_ID", "005-not-an-id"),
    ],
)
def test_start_with_a_malformed_vendor_id_stops_with_one_line(
    fresh_clone: Path, variable: str, value: str
) -> None:
    """A vendor id in the wrong format stops the worker at start, naming the variable and
    never echoing the value, instead of failing the first real booking or write."""
    env = _empty_env(fresh_clone) | {
        "LIVEKIT_URL": "ws://127.0.0.1:9",
        "LIVEKIT_API_KEY": "devkey",
        "LIVEKIT_API_SECRET": "devsecret-devsecret-devsecret-00",
        "OPENAI_API_KEY": "sk-test",
        "CHILIPIPER_API_KEY": "cp-test",
        "CHILIPIPER_SCHEDULING_LINK": "pandadoc-demo",
        variable: value,
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "src/agent.py", "start"],
        cwd=fresh_clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert variable in lines[0] and value not in lines[0]
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 15


def test_console_text_needs_no_portaudio(fresh_clone: Path, tmp_path: Path) -> None:
    """Issue #31: LiveKit's text console opens no audio device, so it runs on a machine
    without the PortAudio library (here: a ``sounddevice`` whose import fails as the real
    one does then); only the voice console asks for it, in one line."""
    no_audio = tmp_path / "no-portaudio"
    no_audio.mkdir()
    (no_audio / "sounddevice.py").write_text('raise OSError("PortAudio library not found")\n')
    env = _empty_env(fresh_clone)
    env["PYTHONPATH"] = f"{no_audio}{os.pathsep}{fresh_clone}"
    term = Terminal([sys.executable, "src/agent.py", "console", "--text"], env, fresh_clone)
    try:
        term.wait_for(lambda t: "Ava from PandaDoc" in t, 28, "the agent's greeting")
        term.drain(0.3)
        start = len(term.text)
        term.type("how is my trial usage?\r")
        term.wait_for(
            lambda t: re.search(r"created \w+ documents", t[start:]) is not None,
            25,
            "the agent's answer about trial usage",
        )
        assert "Traceback" not in term.text, term.text[-4000:]
    finally:
        term.close()
    voice = subprocess.run(
        [sys.executable, "src/agent.py", "console"],
        cwd=fresh_clone,
        env=env | {"DEEPGRAM_API_KEY": "dg-test"},
        capture_output=True,
        text=True,
        timeout=20,
    )
    lines = [line for line in (voice.stdout + voice.stderr).splitlines() if line.strip()]
    assert voice.returncode == 1 and len(lines) == 1, lines
    assert "PortAudio" in lines[0] and "console --text" in lines[0], lines
