"""Local stand-ins for the vendors and the model: real HTTP servers with fault injection.

:class:`Sandbox` runs them all on 127.0.0.1 and tells the agent where they are::

    async with Sandbox() as sandbox:              # ephemeral ports
        os.environ.update(sandbox.env())          # the clients and plugins now point here
        sandbox.openai.say("Hi, I'm the stand-in model.")
        sandbox.servers["hubspot"].inject("*", FaultKind.SERVICE_UNAVAILABLE, count=1)

From a shell, ``python -m src.sandbox`` does the same on fixed ports (see ``__main__``).
A vendor's stand-in is its registry entry's ``stand_in`` (:mod:`src.registry.vendors`).
Nothing here is a real vendor or a real model; the credentials only open these servers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..registry import VENDORS
from ..registry.tools import load_agent_tools
from .base import FaultKind, SandboxServer
from .data import SANDBOX_CREDENTIALS, TRIAL_USERS
from .openai_server import OpenAIServer, ToolCall, ToolOutput, Turn

__all__ = [
    "DEFAULT_PORT_BASE",
    "MODEL",
    "FaultKind",
    "OpenAIServer",
    "Sandbox",
    "SandboxServer",
    "ToolCall",
    "ToolOutput",
    "Turn",
    "service_names",
    "service_port",
]

MODEL = "openai"
MODEL_SLOT = 4  # the model's stand-in keeps port base + 4 (8705) whatever vendors follow

DEFAULT_PORT_BASE = 8701
"""First port of ``python -m src.sandbox``: the vendors in registry order from 8701, the
model on 8705, a fifth vendor on 8706."""

_MAX_PORT = 65_535


def service_names() -> tuple[str, ...]:
    """Service names in port order: with port base ``N`` the i-th listens on ``N + i``.
    The registered vendors (:data:`src.registry.VENDORS`), the model in slot 4."""
    vendors = VENDORS.names()
    return (*vendors[:MODEL_SLOT], MODEL, *vendors[MODEL_SLOT:])


def __getattr__(name: str) -> Any:
    if name == "SERVICES":  # the names as a tuple, as of now (kept for older callers)
        return service_names()
    raise AttributeError(name)


def service_port(service: str, port_base: int) -> int:
    """The port ``service`` listens on for ``port_base`` (``0``: ephemeral, returns 0)."""
    services = service_names()
    if service not in services:
        raise ValueError(f"unknown service {service!r}; expected one of {', '.join(services)}")
    return 0 if port_base == 0 else port_base + services.index(service)


class Sandbox:
    """Every sandbox server (each registered vendor's stand-in and the model's), started
    and stopped together (an async context manager).

    Args:
        port_base: ``0`` (default) gives every server a free ephemeral port; otherwise the
            servers listen on ``port_base`` + their index in :func:`service_names`.
        host: interface to bind. Default ``127.0.0.1``; the sandbox is for this machine.

    The servers exist from construction (script turns and inject faults before
    :meth:`start` if you like) and are attributes by service name (``.openai``,
    ``.<vendor>``) and in :attr:`servers`.
    """

    def __init__(self, *, port_base: int = 0, host: str = "127.0.0.1") -> None:
        names = service_names()
        if port_base != 0 and not 1 <= port_base <= _MAX_PORT - len(names) + 1:
            raise ValueError(
                f"port_base must be 0 (ephemeral) or 1..{_MAX_PORT - len(names) + 1}, "
                f"got {port_base}"
            )
        self.port_base = port_base
        self.host = host
        self.openai = OpenAIServer()
        # Service name -> server, in port order.
        self.servers: dict[str, SandboxServer] = {
            name: self.openai if name == MODEL else VENDORS[name].stand_in() for name in names
        }
        self._started = False

    def __getattr__(self, name: str) -> Any:
        servers = self.__dict__.get("servers")
        if servers is None or name not in servers:
            raise AttributeError(name)
        return servers[name]

    async def start(self) -> Sandbox:
        """Start every server. If one cannot listen (port taken), the others are stopped
        again and the ``OSError`` is raised, naming the service and port."""
        load_agent_tools()  # the model's keyword table, read now rather than mid-turn
        try:
            for name, server in self.servers.items():
                port = service_port(name, self.port_base)
                try:
                    await server.start(self.host, port)
                except OSError as exc:
                    reason = exc.strerror or str(exc)
                    raise OSError(
                        exc.errno,
                        f"sandbox {name} cannot listen on {self.host}:{port}: {reason}",
                    ) from exc
        except BaseException:
            await self.stop()
            raise
        self._started = True
        return self

    async def stop(self) -> None:
        """Stop every server, releasing hung requests; safe to call twice."""
        self._started = False
        await asyncio.gather(*(server.stop() for server in self.servers.values()))

    async def __aenter__(self) -> Sandbox:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def clear(self) -> None:
        """Remove every injected fault on every server and release hung requests."""
        for server in self.servers.values():
            server.clear()

    def env(self) -> dict[str, str]:
        """Environment that points the agent's clients and the OpenAI plugins here.

        ``OPENAI_BASE_URL`` ends with ``/v1`` (the OpenAI SDK appends the endpoint path);
        ``TRIALIST_EMAIL`` is the first seeded trial user, the console's default identity.
        """
        if not self._started:
            raise RuntimeError("start the sandbox before asking for its env()")
        env: dict[str, str] = {}
        for vendor in VENDORS:
            if vendor.name in self.servers:
                env[vendor.url_key] = self.servers[vendor.name].base_url
                env.update(vendor.sandbox_env())
        env["OPENAI_BASE_URL"] = f"{self.openai.base_url}/v1"
        env["OPENAI_API_KEY"] = SANDBOX_CREDENTIALS["OPENAI_API_KEY"]
        env["TRIALIST_EMAIL"] = TRIAL_USERS[0].email
        return env
