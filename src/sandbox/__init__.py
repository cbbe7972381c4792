"""Local stand-ins for the vendors and the model: real HTTP servers with fault injection.

:class:`Sandbox` runs all five on 127.0.0.1 and tells the agent where they are::

    async with Sandbox() as sandbox:              # ephemeral ports
        os.environ.update(sandbox.env())          # the clients and plugins now point here
        sandbox.openai.say("Hi, I'm the stand-in model.")
        sandbox.hubspot.inject("*", FaultKind.SERVICE_UNAVAILABLE, count=1)

From a shell, ``python -m src.sandbox`` does the same on fixed ports (see ``__main__``).
Nothing here is a real vendor or a real model; the credentials only open these servers.
"""

from __future__ import annotations

import asyncio

from .amplitude import AmplitudeServer
from .base import FaultKind, SandboxServer
from .chilipiper import ChiliPiperServer
from .data import SANDBOX_CREDENTIALS, TRIAL_USERS
from .hubspot import HubSpotServer
from .openai_server import OpenAIServer, ToolCall, ToolOutput, Turn
from .salesforce import SalesforceServer

__all__ = [
    "DEFAULT_PORT_BASE",
    "SERVICES",
    "AmplitudeServer",
    "ChiliPiperServer",
    "FaultKind",
    "HubSpotServer",
    "OpenAIServer",
    "SalesforceServer",
    "Sandbox",
    "SandboxServer",
    "ToolCall",
    "ToolOutput",
    "Turn",
    "service_port",
]

SERVICES: tuple[str, ...] = (
    "amplitude",
    "salesforce",
    "hubspot",
    "chilipiper",
    "openai",
)
"""Service names, in port order: with port base ``N`` the i-th listens on ``N + i``."""

DEFAULT_PORT_BASE = 8701
"""First port of ``python -m src.sandbox``: 8701 amplitude ... 8705 openai."""

_MAX_PORT = 65_535


def service_port(service: str, port_base: int) -> int:
    """The port ``service`` listens on for ``port_base`` (``0``: ephemeral, returns 0)."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
    return 0 if port_base == 0 else port_base + SERVICES.index(service)


class Sandbox:
    """All five sandbox servers, started and stopped together (an async context manager).

    Args:
        port_base: ``0`` (default) gives every server a free ephemeral port; otherwise the
            servers listen on ``port_base`` .. ``port_base + 4`` in :data:`SERVICES` order.
        host: interface to bind. Default ``127.0.0.1``; the sandbox is for this machine.

    The servers exist from construction (script turns and inject faults before
    :meth:`start` if you like) and are attributes: ``.amplitude``, ``.salesforce``,
    ``.hubspot``, ``.chilipiper`` and ``.openai``.
    """

    def __init__(self, *, port_base: int = 0, host: str = "127.0.0.1") -> None:
        if port_base != 0 and not 1 <= port_base <= _MAX_PORT - len(SERVICES) + 1:
            raise ValueError(
                f"port_base must be 0 (ephemeral) or 1..{_MAX_PORT - len(SERVICES) + 1}, "
                f"got {port_base}"
            )
        self.port_base = port_base
        self.host = host
        self.amplitude = AmplitudeServer()
        self.salesforce = SalesforceServer()
        self.hubspot = HubSpotServer()
        self.chilipiper = ChiliPiperServer()
        self.openai = OpenAIServer()
        self._started = False

    @property
    def servers(self) -> dict[str, SandboxServer]:
        """Service name -> server, in :data:`SERVICES` order."""
        return {
            "amplitude": self.amplitude,
            "salesforce": self.salesforce,
            "hubspot": self.hubspot,
            "chilipiper": self.chilipiper,
            "openai": self.openai,
        }

    async def start(self) -> Sandbox:
        """Start every server. If one cannot listen (port taken), the others are stopped
        again and the ``OSError`` is raised, naming the service and port."""
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
        creds = SANDBOX_CREDENTIALS
        return {
            "AMPLITUDE_BASE_URL": self.amplitude.base_url,
            "AMPLITUDE_API_KEY": creds["AMPLITUDE_API_KEY"],
            "AMPLITUDE_SECRET_KEY": creds["AMPLITUDE_SECRET_KEY"],
            "SALESFORCE_INSTANCE_URL": self.salesforce.base_url,
            "SALESFORCE_CLIENT_ID": creds["SALESFORCE_CLIENT_ID"],
            "SALESFORCE_CLIENT_SECRET": creds["SALESFORCE_CLIENT_SECRET"],
            "HUBSPOT_BASE_URL": self.hubspot.base_url,
            "HUBSPOT_ACCESS_TOKEN": creds["HUBSPOT_ACCESS_TOKEN"],
            "CHILIPIPER_BASE_URL": self.chilipiper.base_url,
            "CHILIPIPER_API_KEY": creds["CHILIPIPER_API_KEY"],
            "CHILIPIPER_SCHEDULING_LINK": creds["CHILIPIPER_SCHEDULING_LINK"],
            "CHILIPIPER_BOOKING_URL": creds["CHILIPIPER_BOOKING_URL"],
            "OPENAI_BASE_URL": f"{self.openai.base_url}/v1",
            "OPENAI_API_KEY": creds["OPENAI_API_KEY"],
            "TRIALIST_EMAIL": TRIAL_USERS[0].email,
        }
