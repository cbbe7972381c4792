"""The first five minutes: what ``python src/agent.py COMMAND`` checks and sets up before
LiveKit's CLI takes over (called from ``agent.py``'s ``__main__`` block).

- ``dev`` / ``start`` with the LiveKit URL/credentials or the model key missing exit at
  once with one line naming the variables (never a traceback, never a hang).
- ``console`` with nothing configured (no model key, no vendor credentials) starts the
  built-in sandbox (:class:`src.sandbox.Sandbox`) in this process and points the settings
  at it, saying so in one line. Configured services are used as they are. A console that
  cannot work (vendors but no model key; voice without a speech-to-text key or without
  PortAudio) is refused in one line, as is a model endpoint on this machine that does not
  answer (a stopped sandbox left in ``.env.local``). ``console --text`` needs no PortAudio.
  The sandbox never starts for ``dev``/``start``.
- ``console --text`` without ``--log-level`` (or ``LIVEKIT_LOG_LEVEL``) keeps the chat
  clean: the full log goes to :data:`CONSOLE_LOG`, the screen shows this project's
  warnings and other errors as one line each, and :func:`show_agent_turns` prints turns
  LiveKit's text console would not (the greeting, an apology after a failed turn).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes.util
import logging
import os
import socket
import sys
import threading
import types
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from src.settings import Settings, SettingsError, load_settings

__all__ = [
    "CONSOLE_LOG",
    "ConfigurationRefused",
    "InProcessSandbox",
    "check_command",
    "missing_for_worker",
    "nothing_configured",
    "prepare",
    "show_agent_turns",
]

ROOT = Path(__file__).resolve().parent.parent
CONSOLE_LOG = ROOT / "console.log"
"""Where ``console`` writes its full log when the screen is kept for the chat."""

CONSOLE_COMMAND = "uv run python src/agent.py console --text"
_WORKER_COMMANDS = ("dev", "start")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
# LiveKit's own flags that stand in for the variables (typer reads both).
_LIVEKIT_VARIABLES = (
    ("LIVEKIT_URL", "--url"),
    ("LIVEKIT_API_KEY", "--api-key"),
    ("LIVEKIT_API_SECRET", "--api-secret"),
)
# Loggers whose warnings reach the chat; others' (LiveKit's loop monitor, its console
# start-up notes) stay in the file unless they are errors.
_OWN_LOGGERS = ("pandadoc", "src")
# LiveKit's echo of a failed model task ("Error in _llm_inference_task"): the session's
# "error" event follows, and SessionErrorHandler logs that in one line of its own.
_ECHO_PREFIX = "Error in _"


class ConfigurationRefused(SystemExit):
    """Exit status 1 with one line on stderr (``SystemExit`` prints its message)."""


def _command(argv: Sequence[str]) -> str | None:
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _has_option(argv: Sequence[str], option: str) -> bool:
    return any(arg == option or arg.startswith(option + "=") for arg in argv)


def missing_for_worker(env: MutableMapping[str, str], argv: Sequence[str]) -> list[str]:
    """Variables ``dev``/``start`` need and do not have (a LiveKit flag counts as set)."""
    missing = [
        name
        for name, flag in _LIVEKIT_VARIABLES
        if not env.get(name, "").strip() and not _has_option(argv, flag)
    ]
    if not env.get("OPENAI_API_KEY", "").strip():
        missing.append("OPENAI_API_KEY")
    return missing


def nothing_configured(settings: Settings) -> bool:
    """No model key or endpoint and no vendor credentials: a fresh clone."""
    models = settings.models
    vendors = settings.vendors.values()  # every registered vendor's section
    return not (
        models.openai_api_key
        or models.openai_base_url
        or models.deepgram_api_key
        or any(vendor.configured for vendor in vendors)
    )


def _count(n: int) -> str:
    words = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    return words[n] if 0 <= n < len(words) else str(n)


def _portaudio_missing() -> bool:
    try:
        import sounddevice  # noqa: F401
    except OSError:  # sounddevice raises OSError when the PortAudio library is absent
        return True
    except ImportError:
        return ctypes.util.find_library("portaudio") is None
    return False


def _text_without_portaudio() -> None:
    """Let ``console --text`` run without PortAudio (issue #31).

    LiveKit's console (``cli/_legacy.py``) opens audio devices only in audio mode
    (``set_microphone_enabled`` / ``set_speaker_enabled``), but at start it imports
    ``sounddevice`` to validate the ``--input-device``/``--output-device`` it was given,
    and that import fails without the library. Text mode gets a stand-in module with no
    device: the check passes (none was given) and Ctrl+T to voice ends in LiveKit's own
    "Unable to access the microphone" line."""
    if not _portaudio_missing():
        return

    def query_devices(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError("no audio devices: the PortAudio library is not installed")

    stand_in = types.ModuleType("sounddevice", "No PortAudio: the text console only.")
    stand_in.query_devices = query_devices  # type: ignore[attr-defined]
    stand_in.default = types.SimpleNamespace(device=(None, None))  # type: ignore[attr-defined]
    sys.modules["sounddevice"] = stand_in


class InProcessSandbox:
    """:class:`src.sandbox.Sandbox` on its own event loop in a daemon thread, so it serves
    while LiveKit's console owns the main thread and the worker thread."""

    def __init__(self, port_base: int = 0) -> None:
        from src.sandbox import Sandbox

        self.sandbox = Sandbox(port_base=port_base)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sandbox", daemon=True)

    def start(self, timeout: float = 10.0) -> dict[str, str]:
        """Start the servers; returns the env lines that point the agent at them."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self.sandbox.start(), self._loop)
        try:
            future.result(timeout)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        return self.sandbox.env()

    def stop(self, timeout: float = 5.0) -> None:
        if not self._loop.is_running():
            return
        future = asyncio.run_coroutine_threadsafe(self.sandbox.stop(), self._loop)
        with contextlib.suppress(Exception):
            future.result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)


def _start_sandbox() -> InProcessSandbox:
    """The sandbox on its usual ports (so the README's fault commands reach it), or on
    free ports when those are taken."""
    from src.sandbox import DEFAULT_PORT_BASE

    for port_base in (DEFAULT_PORT_BASE, 0):
        running = InProcessSandbox(port_base)
        try:
            running.start()  # its env() is read again by prepare()
        except OSError:
            continue
        return running
    raise ConfigurationRefused("Cannot start the built-in sandbox: no free local ports.")


def check_command(
    argv: Sequence[str],
    *,
    env: MutableMapping[str, str] | None = None,
    load: Callable[[], Settings] = load_settings,
) -> None:
    """Refuse, in one line, a command in ``argv`` (``sys.argv[1:]``) that cannot work.

    Light on purpose (no LiveKit import): ``agent.py`` calls it before its heavy imports,
    so a hopeless ``start`` fails in about a second. Raises :class:`ConfigurationRefused`.
    """
    env = os.environ if env is None else env
    command = _command(argv)
    if _has_option(argv, "--help") or command not in (*_WORKER_COMMANDS, "console"):
        return
    try:
        settings = load()  # also loads .env.local / .env into the environment
    except SettingsError as exc:
        raise ConfigurationRefused(f"Configuration error: {exc}") from None
    if command in _WORKER_COMMANDS:
        missing = missing_for_worker(env, argv)
        if missing:
            raise ConfigurationRefused(
                f"Cannot run `{command}`: set {', '.join(missing)} (in .env or the "
                f"environment; .env.example lists them). To try the agent without them: "
                f"{CONSOLE_COMMAND}"
            )
        return
    voice = not _has_option(argv, "--text")
    if (voice or _has_option(argv, "--list-devices")) and _portaudio_missing():
        raise ConfigurationRefused(
            "The voice console needs the PortAudio library: run bash .ci/setup-system "
            f"--for voice (Debian/Ubuntu) or `brew install portaudio` (macOS); without it, "
            f"chat in text: {CONSOLE_COMMAND}"
        )
    if _has_option(argv, "--list-devices"):
        return
    if voice and not settings.models.deepgram_api_key:
        raise ConfigurationRefused(
            "The voice console needs DEEPGRAM_API_KEY (speech-to-text); without it, "
            f"chat in text: {CONSOLE_COMMAND}"
        )
    if not nothing_configured(settings) and not settings.models.openai_api_key:
        raise ConfigurationRefused(
            "The console needs OPENAI_API_KEY (the model key), or nothing configured at "
            "all to use the built-in sandbox."
        )
    if _local_endpoint_down(settings.models.openai_base_url):
        raise ConfigurationRefused(
            f"Nothing answers at OPENAI_BASE_URL ({settings.models.openai_base_url}): start "
            "the sandbox again (uv run python -m src.sandbox --write-env .env.local), or "
            "remove its lines from .env.local to let the console start one itself."
        )


def _local_endpoint_down(url: str) -> bool:
    """Whether ``url`` is on this machine and refuses connections (a stopped sandbox left
    in ``.env.local``). Remote endpoints are not probed: no network wait at start-up."""
    parts = urlsplit(url)
    if parts.hostname not in _LOOPBACK:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=1.0):
            return False
    except OSError:
        return True


def prepare(
    argv: Sequence[str],
    settings: Settings,
    *,
    env: MutableMapping[str, str] | None = None,
    reload: Callable[[], Settings] = load_settings,
) -> Settings:
    """Set up ``console`` after :func:`check_command` passed: the built-in sandbox when
    nothing is configured, a clean chat in text mode. Returns the settings to run with
    (reloaded when the sandbox was started); other commands get ``settings`` back."""
    env = os.environ if env is None else env
    command = _command(argv)
    if _has_option(argv, "--help") or command != "console":
        return settings
    if _has_option(argv, "--list-devices"):
        return settings
    if nothing_configured(settings):
        running = _start_sandbox()
        atexit.register(running.stop)
        values = running.sandbox.env()
        if env.get("TRIALIST_EMAIL", "").strip():
            values.pop("TRIALIST_EMAIL")  # the caller chose who they are
        env.update(values)
        try:
            settings = reload()
        except SettingsError as exc:
            raise ConfigurationRefused(f"Configuration error: {exc}") from None
        ports = [server.port for server in running.sandbox.servers.values()]
        vendors = len(ports) - 1  # every registered vendor, and the model
        print(
            f"Nothing configured, so the built-in sandbox (local stand-ins on ports "
            f"{min(ports)}-{max(ports)}) answers for the model and all {_count(vendors)} "
            "vendors; for real services, copy .env.example to .env and fill it in.",
            flush=True,
        )
    text = _has_option(argv, "--text")
    if text:
        _text_without_portaudio()
    if text and not _has_option(argv, "--log-level") and not env.get("LIVEKIT_LOG_LEVEL"):
        _quiet_console_logs()
        print(f"Full log: {CONSOLE_LOG}", flush=True)
    return settings


# -- a clean chat -----------------------------------------------------------------------


class _OneLineWarnings(logging.Handler):
    """Forwards this project's warnings and everyone's errors to LiveKit's console handler
    as one line each: the first line of the message, no traceback, no extra fields."""

    def __init__(self, inner: logging.Handler) -> None:
        super().__init__(logging.WARNING)
        self.inner = inner

    def emit(self, record: logging.LogRecord) -> None:
        own = record.name.split(".")[0] in _OWN_LOGGERS
        if record.levelno < logging.ERROR and not own:
            return
        try:
            message = record.getMessage().strip().splitlines()
        except Exception:  # a malformed log call must not break the chat
            message = [str(record.msg)]
        text = message[0] if message else ""
        if not own and text.startswith(_ECHO_PREFIX):
            return
        line = logging.makeLogRecord(
            {
                "name": record.name,
                "levelno": record.levelno,
                "levelname": record.levelname,
                "msg": text,
                "created": record.created,
                "msecs": record.msecs,
            }
        )
        self.inner.handle(line)


def _quiet_console_logs() -> None:
    """Send the full log to :data:`CONSOLE_LOG` and only one-line warnings to the screen.

    LiveKit's text console attaches its own handler (``AgentsConsole._log_handler``) to
    the root logger when it starts; it is wrapped here, before that happens."""
    from livekit.agents.cli import _legacy

    console = _legacy.AgentsConsole.get_instance()
    inner = getattr(console, "_log_handler", None)
    if not isinstance(inner, logging.Handler):  # a LiveKit without it: leave it alone
        return
    console._log_handler = _OneLineWarnings(inner)  # type: ignore[assignment]
    file_handler = logging.FileHandler(CONSOLE_LOG, mode="w", encoding="utf-8", delay=True)
    file_handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-8s %(name)s: %(message)s")
    )
    logging.getLogger().addHandler(file_handler)


def show_agent_turns(session: Any) -> None:
    """In ``console --text``, print the agent's turns that LiveKit's text console leaves
    out: it prints only what answers a typed line, so the greeting (and an apology said
    after a turn already ended) would appear nowhere. No-op outside the text console."""
    from livekit.agents import llm
    from livekit.agents.cli import _legacy

    console = _legacy.AgentsConsole._instance
    if console is None or not console.enabled or console.console_mode != "text":
        return
    from rich.text import Text

    def on_item(event: Any) -> None:
        item = event.item
        if not isinstance(item, llm.ChatMessage) or item.role != "assistant":
            return
        run = getattr(session, "_global_run_state", None)
        if run is not None and not run.done():
            return  # part of a typed turn: LiveKit's console prints it
        content = item.text_content
        if not content:
            return
        console.console.print()
        console.console.print(Text.assemble(("  ● ", "#6BCB77"), ("Agent", "bold #6BCB77")))
        for line in content.split("\n"):
            console.console.print(Text(f"    {line}"))

    session.on("conversation_item_added", on_item)
