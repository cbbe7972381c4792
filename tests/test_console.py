"""The README's quick start, run for real: the sandbox plus ``agent.py console --text``.

Starts ``python -m src.sandbox --ephemeral`` as a subprocess, runs the agent's text console
in a pseudo-terminal with the sandbox's env lines, types a question and expects the stand-in
model's spoken answer (it reads back the real tool output from the Amplitude stand-in).
Needs PortAudio (``.ci/setup-system``): LiveKit's console imports ``sounddevice``.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
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

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
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
