"""The sandbox in a process of its own, steered through its admin API.

In production the vendors and the model run on other machines. The load drill measures
how responsive one agent process stays with many conversations, so the stand-ins must not
run on that process's event loop: with the sandbox in-process, every vendor answer and
every streamed model chunk is served by the loop being measured. :class:`SandboxProcess`
starts ``python -m src.sandbox serve --ephemeral`` and reads the env lines it prints; it
offers :meth:`env` (like :meth:`Sandbox.env`) and :meth:`inject`, which sets a fault over
the admin API (the same one ``python -m src.sandbox fault`` uses)::

    async with SandboxProcess() as sandbox:
        await sandbox.inject("amplitude", FaultKind.FLAPPING, every=2)
        conv = Conversation(sandbox=sandbox, shared_sandbox=True)

Its :attr:`servers` is empty: there are no in-process servers whose journals could be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from .__main__ import service_urls_from_env
from .base import ADMIN_PREFIX, FaultKind, SandboxServer

__all__ = ["SandboxProcess"]

_ROOT = Path(__file__).resolve().parents[2]
_READY = "# Press Ctrl+C"
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 5.0


class SandboxProcess:
    """``python -m src.sandbox serve --ephemeral`` as a child process (an async context
    manager); see the module doc."""

    def __init__(self, *, python: str = sys.executable) -> None:
        self._python = python
        self._proc: asyncio.subprocess.Process | None = None
        self._env: dict[str, str] = {}
        self._http: aiohttp.ClientSession | None = None
        self._drains: list[asyncio.Task[None]] = []
        self._stderr: deque[str] = deque(maxlen=5)  # the last lines, for a start failure

    @property
    def servers(self) -> dict[str, SandboxServer]:
        """No in-process servers (see the module doc)."""
        return {}

    def env(self) -> dict[str, str]:
        if not self._env:
            raise RuntimeError("start the sandbox process before asking for its env()")
        return dict(self._env)

    async def start(self) -> SandboxProcess:
        self._proc = await asyncio.create_subprocess_exec(
            self._python,
            "-m",
            "src.sandbox",
            "serve",
            "--ephemeral",
            cwd=_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self._proc.stderr is not None
        self._drains.append(asyncio.create_task(self._drain(self._proc.stderr, self._stderr)))
        try:
            self._env = await asyncio.wait_for(self._read_env(), _START_TIMEOUT_S)
        except BaseException:
            await self.stop()
            raise
        assert self._proc.stdout is not None  # read on, so a full pipe never blocks the child
        self._drains.append(asyncio.create_task(self._drain(self._proc.stdout, None)))
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0))
        return self

    async def _read_env(self) -> dict[str, str]:
        assert self._proc is not None and self._proc.stdout is not None
        env: dict[str, str] = {}
        while True:
            line = (await self._proc.stdout.readline()).decode().strip()
            if not line:
                code = await self._proc.wait()
                await asyncio.sleep(0.05)  # let the stderr drain catch the last lines
                said = " / ".join(self._stderr)
                raise RuntimeError(f"the sandbox process exited with status {code}: {said}")
            if line.startswith(_READY):
                return env
            if not line.startswith("#") and "=" in line:
                key, value = line.split("=", 1)
                env[key] = value

    @staticmethod
    async def _drain(stream: asyncio.StreamReader, keep: deque[str] | None) -> None:
        while line := await stream.readline():
            if keep is not None:
                keep.append(line.decode(errors="replace").strip())

    async def inject(self, service: str, kind: FaultKind, **params: Any) -> None:
        """Set a fault on ``service`` (``endpoint`` ``"*"`` unless given; the other
        ``params`` as for :meth:`SandboxServer.inject`)."""
        url = service_urls_from_env(self.env()).get(service)
        if url is None or self._http is None:
            raise RuntimeError(f"no running sandbox service {service!r}")
        payload = {"endpoint": "*", **params, "kind": kind.value}
        async with self._http.post(f"{url}{ADMIN_PREFIX}/faults", json=payload) as response:
            if response.status != 201:
                raise RuntimeError(f"the sandbox refused the fault: HTTP {response.status}")

    async def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after 5 s); safe to call twice."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._env = {}
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        drains, self._drains = self._drains, []
        for task in drains:
            task.cancel()
        await asyncio.gather(*drains, return_exceptions=True)

    async def __aenter__(self) -> SandboxProcess:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
