"""The :class:`OpenAIServer` itself: its state and test API, auth, stalls, and the routes,
which hand the wire format to :mod:`.chat` and :mod:`.audio`."""

from __future__ import annotations

import asyncio
import fnmatch
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any, NoReturn

from aiohttp import web

from ..base import ADMIN_PREFIX, SandboxServer, bearer_token
from ..data import SANDBOX_CREDENTIALS
from .audio import DEFAULT_TRANSCRIPT, form_fields, stream_speech, tone, transcription_response
from .chat import chat_completion, chat_usage, stream_chat
from .script import ToolCall, ToolOutput, Turn, content_text, default_turn
from .wire import openai_error

__all__ = ["OpenAIServer"]


@dataclass
class _Stall:
    endpoint: str
    count: int | None  # None: until cleared


class OpenAIServer(SandboxServer):
    """Scripted OpenAI-compatible endpoint (a stand-in: no real model, canned replies).

    Attributes:
        script: turns consumed one per chat request, oldest first.
        requests_seen: JSON bodies of the chat requests the stand-in model answered (those
            refused by auth, validation or an injected fault are only in the journal).
        transcripts: texts ``/v1/audio/transcriptions`` returns, oldest first.
        ms_per_char: milliseconds of speech per input character. Default 60.
        max_speech_s: cap on one speech response, in seconds. Default 4.0.
    """

    name = "openai"
    api_key = SANDBOX_CREDENTIALS["OPENAI_API_KEY"]

    def __init__(self) -> None:
        self.script: deque[Turn] = deque()
        self.requests_seen: list[dict[str, Any]] = []
        self.transcripts: deque[str] = deque()
        self.ms_per_char = 60.0
        self.max_speech_s = 4.0
        self._stalls: list[_Stall] = []
        self._stall_release = asyncio.Event()
        self._ids = itertools.count(1)
        super().__init__()

    # -- test API -----------------------------------------------------------------------------
    def say(self, *turns: Turn | str) -> None:
        """Append turns to the script; a ``str`` is shorthand for ``Turn(text=...)``."""
        self.script.extend(Turn(text=t) if isinstance(t, str) else t for t in turns)

    def stall_after_first_chunk(
        self, count: int | None = None, *, endpoint: str = "/v1/chat/completions"
    ) -> None:
        """Make the next ``count`` streamed responses (``None``: all, until cleared) stop
        after their first chunk(s) and send nothing more until :meth:`clear`, which then
        drops the connection.

        Chat streams send the role chunk and the first content or tool-call chunk; speech
        sends its first 100 ms of audio. ``endpoint`` is an ``fnmatch`` pattern on the path.
        """
        if count is not None and count < 1:
            raise ValueError("count must be >= 1 or None")
        self._stalls.insert(0, _Stall(endpoint, count))

    def clear(self, endpoint: str | None = None) -> None:
        """Remove faults and stalls (all, or those set for ``endpoint``); release hung
        and stalled requests."""
        self._stalls = [s for s in self._stalls if endpoint is not None and s.endpoint != endpoint]
        # Stalled streams wait on the event they saw; set it and start a fresh one.
        self._stall_release.set()
        self._stall_release = asyncio.Event()
        super().clear(endpoint)

    async def stop(self) -> None:
        self._stall_release.set()
        await super().stop()

    @property
    def last_request(self) -> dict[str, Any]:
        """The JSON body of the latest chat request the model answered."""
        if not self.requests_seen:
            raise LookupError("the stand-in model has not answered any chat request yet")
        return self.requests_seen[-1]

    def tool_outputs(self, request: int = -1) -> list[ToolOutput]:
        """Tool results in the messages of ``requests_seen[request]`` (default: the latest),
        in order, each named after the assistant tool call it answers."""
        if not self.requests_seen:
            return []
        names: dict[str, str] = {}
        outputs: list[ToolOutput] = []
        for message in self.requests_seen[request].get("messages") or ():
            for call in message.get("tool_calls") or ():
                names[str(call.get("id"))] = str((call.get("function") or {}).get("name", ""))
            if message.get("role") == "tool":
                call_id = str(message.get("tool_call_id", ""))
                content = content_text(message.get("content"))
                outputs.append(ToolOutput(names.get(call_id, ""), call_id, content))
        return outputs

    def speech_duration(self, text: str, speed: float = 1.0) -> float:
        """Seconds of audio ``/v1/audio/speech`` returns for ``text`` at ``speed``."""
        seconds = len(text) * self.ms_per_char / 1000 / max(speed, 0.25)
        return round(min(seconds, self.max_speech_s), 3)

    # -- routes -------------------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get(f"{ADMIN_PREFIX}/stall", self._get_stalls)
        app.router.add_post(f"{ADMIN_PREFIX}/stall", self._post_stall)

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        token = bearer_token(request)
        if token == self.api_key:
            return None
        if token is None:
            message = "You didn't provide an API key (Authorization: Bearer <key>)."
            return openai_error(401, message, code=None)
        # Never echo the key back: it would end up in client logs.
        return openai_error(401, "Incorrect API key provided.", code="invalid_api_key")

    async def _json_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except ValueError:
            return openai_error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return openai_error(400, "The request body must be a JSON object.")
        return body

    def _take_stall(self, path: str) -> bool:
        for stall in self._stalls:
            if not fnmatch.fnmatchcase(path, stall.endpoint):
                continue
            if stall.count is not None:
                stall.count -= 1
                if stall.count <= 0:
                    self._stalls.remove(stall)
            return True
        return False

    async def _stall(self, request: web.Request) -> NoReturn:
        await self._stall_release.wait()  # binds the current event before suspending
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # the connection is gone; nothing more to send

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        if denied := self._unauthorized(request):
            return denied
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return openai_error(400, "'messages' must be a non-empty array.", param="messages")
        if not isinstance(body.get("model"), str):
            return openai_error(400, "you must provide a model parameter", param="model")
        self.requests_seen.append(body)
        turn = self.script.popleft() if self.script else default_turn(body)
        calls = [
            ToolCall(c.name, c.arguments, c.id or f"call_sandbox_{next(self._ids)}")
            for c in turn.tool_calls
        ]
        completion_id = f"chatcmpl-sandbox-{next(self._ids)}"
        usage = chat_usage(body["messages"], turn, calls)
        if not body.get("stream"):
            completion = chat_completion(completion_id, body["model"], turn, calls, usage)
            return web.json_response(completion)
        stall = self._take_stall(request.path)
        return await stream_chat(
            request,
            body,
            turn,
            calls,
            completion_id=completion_id,
            usage=usage,
            request_id=f"req_sandbox_{next(self._ids)}",
            stall=self._stall if stall else None,
        )

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        if denied := self._unauthorized(request):
            return denied
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        text = body.get("input")
        if not isinstance(text, str) or not text:
            return openai_error(400, "'input' must be a non-empty string.", param="input")
        speed = body.get("speed", 1.0)
        pcm = tone(self.speech_duration(text, float(speed) if speed else 1.0))
        stall = self._take_stall(request.path)
        return await stream_speech(
            request,
            body,
            text,
            pcm,
            request_id=f"req_sandbox_{next(self._ids)}",
            stall=self._stall if stall else None,
        )

    async def _transcriptions(self, request: web.Request) -> web.Response:
        if denied := self._unauthorized(request):
            return denied
        form = form_fields(request.headers.get("Content-Type", ""), await request.read())
        if "file" not in form:
            return openai_error(400, "'file' is required (multipart/form-data).", param="file")
        text = self.transcripts.popleft() if self.transcripts else DEFAULT_TRANSCRIPT
        return transcription_response(text, form)

    async def _models(self, request: web.Request) -> web.Response:
        if denied := self._unauthorized(request):
            return denied
        models = ["gpt-4o-mini", "gpt-4.1", "gpt-4o-mini-tts", "gpt-4o-mini-transcribe"]
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "sandbox"} for m in models]
        return web.json_response({"object": "list", "data": data})

    async def _get_stalls(self, request: web.Request) -> web.Response:
        return web.json_response([{"endpoint": s.endpoint, "count": s.count} for s in self._stalls])

    async def _post_stall(self, request: web.Request) -> web.Response:
        try:
            data = await request.json() if request.can_read_body else {}
            count = data.get("count")
            self.stall_after_first_chunk(
                None if count is None else int(count),
                endpoint=str(data.get("endpoint", "/v1/chat/completions")),
            )
        except (AttributeError, ValueError, TypeError) as exc:
            return openai_error(400, f"bad stall: {exc}")
        return web.json_response({"endpoint": self._stalls[0].endpoint, "count": count}, status=201)
