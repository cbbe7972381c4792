"""Base of every sandbox server: a real aiohttp server on 127.0.0.1 with fault injection,
a request journal and an admin API so faults can be set from another process.

Faults are set per endpoint (an ``fnmatch`` pattern on the request path, ``"*"`` for all)
for the next ``count`` matching requests, or until cleared (``count=None``)::

    server.inject("/api/2/useractivity", FaultKind.SERVICE_UNAVAILABLE, count=2)
    server.inject("*", FaultKind.RATE_LIMITED, retry_after=1.5)
    server.inject("*", FaultKind.FLAPPING, every=2)      # every 2nd request fails (503)
    server.inject("*", FaultKind.HUGE_BODY, size_bytes=100_000_000)  # streamed, never held
    server.clear()

``REFUSE`` drops the connection without answering (the client sees a reset/disconnect);
:meth:`SandboxServer.go_down` closes the listening socket so connects are really refused,
and :meth:`SandboxServer.come_up` reopens it on the same port.

Admin API (never journaled, never faulted): ``GET /__sandbox/journal``,
``DELETE /__sandbox/journal``, ``GET/POST/DELETE /__sandbox/faults``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

__all__ = [
    "ADMIN_PREFIX",
    "Fault",
    "FaultKind",
    "JournalEntry",
    "SandboxServer",
    "bearer_token",
    "json_error",
]

ADMIN_PREFIX = "/__sandbox"
_SECRET_FIELD = re.compile(r"secret|password|token|key", re.IGNORECASE)
_SECRET_HEADERS = {"authorization", "x-api-key", "api-key", "cookie", "proxy-authorization"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FaultKind(StrEnum):
    REFUSE = "refuse"  # drop the connection without a response
    SERVER_ERROR = "500"
    SERVICE_UNAVAILABLE = "503"
    RATE_LIMITED = "429"  # with Retry-After
    HANG = "hang"  # never answer (until the fault is cleared or the server stops)
    SLOW = "slow"  # answer normally after delay_ms
    MALFORMED = "malformed"  # 200 with a body that is not the documented JSON
    UNAUTHORIZED = "401"
    FLAPPING = "flapping"  # every ``every``-th matching request fails with 503
    RANDOM = "random"  # each matching request fails with 503 with chance 1/``every`` (#15)
    # 200 with a valid JSON body of ``size_bytes``, streamed in chunks (never held in
    # memory here); HUGE_BODY declares its Content-Length, HUGE_STREAM is chunked.
    HUGE_BODY = "huge"
    HUGE_STREAM = "huge-stream"
    # The real answer's headers and first half, then the connection is reset.
    RESET_MID_BODY = "reset-body"
    # The vendor's "record locked by another transaction, try again" answer, nothing
    # applied (:meth:`SandboxServer.lock_row_answer`; Salesforce: 400 UNABLE_TO_LOCK_ROW).
    LOCK_ROW = "lock-row"


@dataclass
class Fault:
    kind: FaultKind
    endpoint: str = "*"
    count: int | None = None  # None: until cleared
    retry_after: float = 1.0  # RATE_LIMITED: seconds sent in Retry-After
    delay_ms: int = 0  # SLOW
    every: int = 2  # FLAPPING
    size_bytes: int = 10_000_000  # HUGE_BODY / HUGE_STREAM
    sent_bytes: int = 0  # HUGE_*: body bytes the client actually accepted
    seen: int = 0  # matching requests so far (FLAPPING counts all, others count hits)
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)
    # HANG: requests held by this fault wait for it; set when the fault is cleared.
    released: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "endpoint": self.endpoint,
            "count": self.count,
            "retry_after": self.retry_after,
            "delay_ms": self.delay_ms,
            "every": self.every,
            "size_bytes": self.size_bytes,
            "sent_bytes": self.sent_bytes,
            "seen": self.seen,
        }


@dataclass
class JournalEntry:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)
    status: int | None = None
    fault: str | None = None

    @property
    def json(self) -> Any:
        return self.body


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"message": message, **extra}, status=status)


def bearer_token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class SandboxServer:
    """Subclass and implement :meth:`add_routes`; call :meth:`start` to serve.

    Subclasses check credentials themselves (answering 401 like the vendor) and keep
    their seeded data on the instance, so each test gets fresh state.
    """

    name: str = "sandbox"

    def __init__(self) -> None:
        self.journal: list[JournalEntry] = []
        self.faults: list[Fault] = []
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.app = web.Application(middlewares=[self._middleware])
        self._add_admin_routes(self.app)
        self.add_routes(self.app)

    # -- to implement -------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def malformed_body(self, request: web.Request) -> web.Response:
        """The body sent for a MALFORMED fault: valid HTTP 200, broken payload."""
        return web.Response(status=200, text='{"truncated": ', content_type="application/json")

    def lock_row_answer(self, request: web.Request) -> web.Response:
        """The answer for a LOCK_ROW fault: the vendor's own transient "record busy"
        refusal (nothing applied). Vendors without one answer 409."""
        return json_error(409, "Conflict: the record is locked, try again")

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving; ``port=0`` picks a free ephemeral port. Returns the base URL."""
        self.host = host
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port)
        await self._site.start()
        server = self._site._server
        assert server is not None and isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        return self.base_url

    async def stop(self) -> None:
        for fault in self.faults:
            fault.released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def go_down(self) -> None:
        """Close the listening socket: new connections are refused (ECONNREFUSED)."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        # Kill kept-alive connections too, or pooled clients would still get answers.
        server = self._runner.server if self._runner is not None else None
        for proto in list(server.connections if server is not None else ()):
            if proto.transport is not None:
                proto.transport.abort()

    async def come_up(self) -> None:
        """Listen again on the same port after :meth:`go_down`."""
        if self._site is None and self._runner is not None:
            self._site = web.TCPSite(self._runner, self.host, self.port)
            await self._site.start()

    async def __aenter__(self) -> SandboxServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- faults -----------------------------------------------------------------------------
    def inject(
        self,
        endpoint: str = "*",
        kind: FaultKind | str = FaultKind.SERVICE_UNAVAILABLE,
        *,
        count: int | None = None,
        retry_after: float = 1.0,
        delay_ms: int = 0,
        every: int = 2,
        size_bytes: int = 10_000_000,
    ) -> Fault:
        """Fail matching requests. Later injections take precedence over earlier ones."""
        if count is not None and count < 1:
            raise ValueError("count must be >= 1 or None")
        if every < 1:
            raise ValueError("every must be >= 1")
        if size_bytes < 16:
            raise ValueError("size_bytes must be >= 16")
        fault = Fault(
            FaultKind(kind),
            endpoint,
            count=count,
            retry_after=retry_after,
            delay_ms=delay_ms,
            every=every,
            size_bytes=size_bytes,
        )
        self.faults.insert(0, fault)
        return fault

    def clear(self, endpoint: str | None = None) -> None:
        """Remove faults (all, or those set for ``endpoint``) and release the requests
        those faults hold; other endpoints' hung requests stay hung."""
        removed = [f for f in self.faults if endpoint is None or f.endpoint == endpoint]
        self.faults = [f for f in self.faults if f not in removed]
        for fault in removed:
            fault.released.set()

    # -- journal -----------------------------------------------------------------------------
    def requests(self, path: str | None = None, method: str | None = None) -> list[JournalEntry]:
        """Journaled requests, optionally filtered by path pattern (fnmatch) and method."""
        return [
            e
            for e in self.journal
            if (path is None or fnmatch.fnmatchcase(e.path, path))
            and (method is None or e.method == method.upper())
        ]

    def reset_journal(self) -> None:
        self.journal.clear()

    # -- internals -------------------------------------------------------------------------
    def _match_fault(self, path: str) -> Fault | None:
        for fault in self.faults:
            if not fnmatch.fnmatchcase(path, fault.endpoint):
                continue
            fault.seen += 1
            if fault.kind is FaultKind.FLAPPING and fault.seen % fault.every != 0:
                continue  # this one lets the request pass; older faults may still apply
            if fault.kind is FaultKind.RANDOM and fault.rng.random() * fault.every >= 1:
                continue
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
            return fault
        return None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(ADMIN_PREFIX):
            return await handler(request)
        raw = await request.read()
        body: Any
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
            if request.content_type == "application/x-www-form-urlencoded":
                body = {
                    k: ("<redacted>" if _SECRET_FIELD.search(k) else v)
                    for k, v in parse_qsl(body, keep_blank_values=True)
                }
        entry = JournalEntry(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={
                k: ("<redacted>" if k.lower() in _SECRET_HEADERS else v)
                for k, v in request.headers.items()
            },
            body=body,
        )
        self.journal.append(entry)
        fault = self._match_fault(request.path)
        entry.fault = fault.kind.value if fault else None
        response = await self._apply_fault(fault, request, handler)
        entry.status = response.status
        return response

    async def _apply_fault(
        self, fault: Fault | None, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        if fault is None:
            return await handler(request)
        kind = fault.kind
        if kind is FaultKind.REFUSE:
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing more to send on an aborted connection
        if kind in (FaultKind.SERVER_ERROR,):
            return json_error(500, "Internal Server Error")
        if kind in (FaultKind.SERVICE_UNAVAILABLE, FaultKind.FLAPPING, FaultKind.RANDOM):
            return json_error(503, "Service Unavailable")
        if kind is FaultKind.RATE_LIMITED:
            resp = json_error(429, "Too Many Requests")
            resp.headers["Retry-After"] = f"{fault.retry_after:g}"
            return resp
        if kind is FaultKind.UNAUTHORIZED:
            return json_error(401, "Unauthorized")
        if kind is FaultKind.MALFORMED:
            return self.malformed_body(request)
        if kind is FaultKind.LOCK_ROW:
            return self.lock_row_answer(request)
        if kind in (FaultKind.HUGE_BODY, FaultKind.HUGE_STREAM):
            return await _huge_body(fault, request, chunked=kind is FaultKind.HUGE_STREAM)
        if kind is FaultKind.RESET_MID_BODY:
            return await _reset_mid_body(await handler(request), request)
        if kind is FaultKind.HANG:
            await fault.released.wait()
            return json_error(503, "released")
        # SLOW
        await asyncio.sleep(fault.delay_ms / 1000)
        return await handler(request)

    def _add_admin_routes(self, app: web.Application) -> None:
        async def get_journal(request: web.Request) -> web.Response:
            return web.json_response([asdict(e) for e in self.journal])

        async def delete_journal(request: web.Request) -> web.Response:
            self.reset_journal()
            return web.json_response({"ok": True})

        async def get_faults(request: web.Request) -> web.Response:
            return web.json_response([f.to_json() for f in self.faults])

        async def post_fault(request: web.Request) -> web.Response:
            try:
                data = await request.json()
                fault = self.inject(
                    str(data.get("endpoint", "*")),
                    FaultKind(str(data["kind"])),
                    count=None if data.get("count") is None else int(data["count"]),
                    retry_after=float(data.get("retry_after", 1.0)),
                    delay_ms=int(data.get("delay_ms", 0)),
                    every=int(data.get("every", 2)),
                    size_bytes=int(data.get("size_bytes", 10_000_000)),
                )
            except (KeyError, ValueError, TypeError) as exc:
                return json_error(400, f"bad fault: {exc}")
            return web.json_response(fault.to_json(), status=201)

        async def delete_faults(request: web.Request) -> web.Response:
            self.clear(request.query.get("endpoint"))
            return web.json_response({"ok": True})

        app.router.add_get(f"{ADMIN_PREFIX}/journal", get_journal)
        app.router.add_delete(f"{ADMIN_PREFIX}/journal", delete_journal)
        app.router.add_get(f"{ADMIN_PREFIX}/faults", get_faults)
        app.router.add_post(f"{ADMIN_PREFIX}/faults", post_fault)
        app.router.add_delete(f"{ADMIN_PREFIX}/faults", delete_faults)


_CHUNK = 64 * 1024


async def _huge_body(fault: Fault, request: web.Request, *, chunked: bool) -> web.StreamResponse:
    """``{"pad": "xxx...x"}`` of ``fault.size_bytes`` bytes, written chunk by chunk; stops
    quietly when the client hangs up (which is what a capped client does)."""
    head, tail = b'{"pad": "', b'"}'
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    if chunked:
        resp.enable_chunked_encoding()
    else:
        resp.content_length = fault.size_bytes
    await resp.prepare(request)
    pad = fault.size_bytes - len(head) - len(tail)
    chunk = b"x" * _CHUNK
    try:
        await resp.write(head)
        while pad > 0:
            piece = chunk if pad >= _CHUNK else chunk[:pad]
            await resp.write(piece)
            fault.sent_bytes += len(piece)
            pad -= len(piece)
        await resp.write(tail)
        await resp.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client closed the connection
    return resp


async def _reset_mid_body(answer: web.StreamResponse, request: web.Request) -> web.StreamResponse:
    """Send ``answer``'s status, headers and the first half of its body, then reset."""
    body = answer.body if isinstance(answer, web.Response) else None
    raw = body if isinstance(body, bytes) else b'{"pad": "' + b"x" * 64 + b'"}'
    resp = web.StreamResponse(status=answer.status, headers={"Content-Type": "application/json"})
    resp.content_length = len(raw)
    await resp.prepare(request)
    await resp.write(raw[: len(raw) // 2])
    await asyncio.sleep(0)  # let the half reach the socket before the reset
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError  # nothing more to send on an aborted connection
