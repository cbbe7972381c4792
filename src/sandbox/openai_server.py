"""A scripted stand-in for the OpenAI API: **no real model runs here**.

It speaks the wire format the real ``livekit-plugins-openai`` clients use, so the agent can
run offline with the real plugins pointed at ``http://127.0.0.1:<port>/v1``:

``POST /v1/chat/completions``
    What ``openai.LLM`` calls (Chat Completions, always ``stream=True`` with
    ``stream_options.include_usage``; the plugin never uses the Responses API). Streams
    ``chat.completion.chunk`` SSE events like OpenAI: a role chunk, content deltas in a few
    pieces or ``tool_calls`` deltas (header with index/id/type/name, then the arguments in
    pieces), a finish chunk (``"stop"``/``"tool_calls"``), the usage chunk when asked for,
    then ``data: [DONE]``. Non-streaming requests get one ``chat.completion`` object.
``POST /v1/audio/speech``
    What ``openai.TTS`` calls. Answers with a quiet 400 Hz tone (24 kHz, 16-bit, mono) that
    lasts :attr:`OpenAIServer.ms_per_char` per input character, capped at
    :attr:`OpenAIServer.max_speech_s`. ``pcm`` and ``wav`` are served in the requested
    ``stream_format`` (SSE ``speech.audio.delta`` events, or raw bytes). Compressed formats
    (the plugin's default is ``mp3``) are answered with raw WAV bytes and
    ``Content-Type: audio/wav``, which the plugin decodes by content type.
``POST /v1/audio/transcriptions``
    What ``openai.STT`` calls (non-realtime): returns the next text of
    :attr:`OpenAIServer.transcripts`, else :data:`DEFAULT_TRANSCRIPT`.
``GET /v1/models``
    What ``LLM.prewarm()`` calls.

Each chat request consumes the next :class:`Turn` of :attr:`OpenAIServer.script`::

    server.script.append(Turn(tool_calls=[ToolCall("get_trial_usage", {"email": email})]))
    server.script.append(Turn(text="You have created 14 documents so far."))

When the script is empty, :func:`default_turn` answers from the latest message with the
keyword table :data:`KEYWORD_TOOLS`. Every request that reached the stand-in model is kept
in :attr:`OpenAIServer.requests_seen`; :meth:`OpenAIServer.tool_outputs` reads the tool
results the model was given.

Faults of :class:`~src.sandbox.base.SandboxServer` apply to every endpoint. One more, for
streams: :meth:`OpenAIServer.stall_after_first_chunk` sends the first chunk(s) of a
response, then nothing until the fault is cleared (the connection is then dropped).
Admin API for it: ``GET/POST /__sandbox/stall``; ``DELETE /__sandbox/faults`` clears it.

Credentials: ``Authorization: Bearer <SANDBOX_CREDENTIALS["OPENAI_API_KEY"]>``, else 401
with OpenAI's error body.
"""

from __future__ import annotations

import array
import asyncio
import base64
import email.policy
import fnmatch
import itertools
import json
import math
import re
import struct
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.parser import BytesParser
from typing import Any, NoReturn

from aiohttp import web

from .base import ADMIN_PREFIX, SandboxServer, bearer_token
from .data import SANDBOX_CREDENTIALS

__all__ = [
    "DEFAULT_TRANSCRIPT",
    "KEYWORD_TOOLS",
    "SAMPLE_RATE",
    "STAND_IN_NOTICE",
    "OpenAIServer",
    "ToolCall",
    "ToolOutput",
    "Turn",
    "default_turn",
    "openai_error",
]

SAMPLE_RATE = 24_000
"""Hz of the audio ``/v1/audio/speech`` returns (what ``openai.TTS`` expects), mono 16-bit."""

DEFAULT_TRANSCRIPT = "hello"
"""Text ``/v1/audio/transcriptions`` returns when :attr:`OpenAIServer.transcripts` is empty."""

STAND_IN_NOTICE = "This is the sandbox stand-in model, not a real one."

KEYWORD_TOOLS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # (tool name, words in the last user message that call it); the first row whose words
    # match *and* whose tool the request offers wins, so the specific rows come first.
    ("log_call_summary", ("summary", "note", "log")),
    ("book_demo", ("book", "schedule", "option", "first", "second", "third")),
    ("check_demo_availability", ("demo", "available", "availability", "times", "slots")),
    ("lookup_account", ("account", "record", "crm", "who")),
    ("get_trial_usage", ("usage", "documents", "trial")),
)
"""The default script's keyword table, matched on whole words, case-insensitively.

Arguments it sends (only those the tool's JSON schema declares): ``email`` (the first
address in the message) for ``get_trial_usage``/``lookup_account``; ``option`` (the first
number, or first/second/third, default 1) for ``book_demo``; ``summary`` (the user
message) and ``interest`` (``"medium"``) for ``log_call_summary``.
"""

_ASK_ABOUT = {
    "get_trial_usage": "your trial usage",
    "lookup_account": "your account record",
    "check_demo_availability": "demo availability",
    "book_demo": "booking a demo option",
    "log_call_summary": "logging a call summary",
}
_ORDINALS = {"first": 1, "second": 2, "third": 3}
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_NUMBER = re.compile(r"\b(\d+)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TOOL_REPLY_MAX_CHARS = 280
_TONE_HZ = 400  # divides 24 kHz: one period is exactly 60 samples, so the tone tiles
_TONE_AMPLITUDE = 0.05  # about -26 dBFS: audible, never loud
_AUDIO_CHUNK_BYTES = 4_800  # 100 ms of 24 kHz 16-bit mono per streamed chunk
_WORDS_PER_CHUNK = 3
_ARGUMENT_PIECES = 3


@dataclass(frozen=True)
class ToolCall:
    """One function call the stand-in model makes.

    ``arguments`` is sent JSON-encoded; pass a ``str`` to send it verbatim (e.g. broken
    JSON to test the agent). ``id`` defaults to a generated ``call_sandbox_<n>``.
    """

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    @property
    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments), separators=(",", ":"))


@dataclass(frozen=True)
class Turn:
    """One scripted model answer: ``text`` first (if any), then ``tool_calls`` (if any).

    ``finish_reason`` is ``"tool_calls"`` when there are tool calls, else ``"stop"``. A
    scripted turn is sent as written, even when the request did not offer the tool.
    """

    text: str = ""
    tool_calls: Sequence[ToolCall] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


@dataclass(frozen=True)
class ToolOutput:
    """A tool result the model received: ``name`` comes from the matching assistant call
    (``""`` if none), ``content`` is the text the agent sent as the tool's output."""

    name: str
    call_id: str
    content: str


@dataclass
class _Stall:
    endpoint: str
    count: int | None  # None: until cleared


def openai_error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> web.Response:
    """A JSON error response in OpenAI's shape: ``{"error": {message, type, param, code}}``."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status)


# -- the default keyword script ------------------------------------------------------------


def default_turn(body: Mapping[str, Any]) -> Turn:
    """What the stand-in model says when the script is empty, from the request ``body``.

    After tool results: a short spoken sentence built from them. After a user message:
    a tool call picked with :data:`KEYWORD_TOOLS` (only tools the request offers), or a
    text reply saying this is the stand-in and what one can ask. Otherwise a greeting.
    """
    messages = [m for m in body.get("messages") or () if isinstance(m, Mapping)]
    offered = _offered_tools(body)
    # Filler speech said while a tool ran lands after its result: look past plain
    # assistant text (no tool calls) to find what the model is answering.
    while (
        len(messages) > 1
        and messages[-1].get("role") == "assistant"
        and not messages[-1].get("tool_calls")
    ):
        messages.pop()
    if messages and messages[-1].get("role") == "tool":
        outputs: list[str] = []
        for message in reversed(messages):
            if message.get("role") != "tool":
                break
            outputs.insert(0, _content_text(message.get("content")))
        return Turn(text=_spoken_tool_reply(outputs))
    if messages and messages[-1].get("role") == "user":
        said = _content_text(messages[-1].get("content"))
        words = set(re.findall(r"[a-z]+", said.lower()))
        for name, keywords in KEYWORD_TOOLS:
            if name in offered and words.intersection(keywords):
                arguments = _keyword_arguments(name, said, offered[name])
                return Turn(tool_calls=[ToolCall(name, arguments)])
        return Turn(text=_help_text(offered))
    return Turn(text=f"Hi! {STAND_IN_NOTICE} How can I help with your PandaDoc trial?")


def _offered_tools(body: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Function name -> its JSON-schema ``parameters`` for each tool in the request."""
    offered: dict[str, Mapping[str, Any]] = {}
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            parameters = function.get("parameters")
            offered[function["name"]] = parameters if isinstance(parameters, Mapping) else {}
    return offered


def _keyword_arguments(name: str, said: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    candidates: dict[str, Any] = {}
    if name in ("get_trial_usage", "lookup_account"):
        if email := _EMAIL.search(said):
            candidates["email"] = email.group(0)
    elif name == "book_demo":
        candidates["option"] = _option_number(said)
    elif name == "log_call_summary":
        candidates["summary"] = said
        candidates["interest"] = "medium"
    properties = schema.get("properties")
    declared = properties if isinstance(properties, Mapping) else {}
    return {key: value for key, value in candidates.items() if key in declared}


def _option_number(said: str) -> int:
    if number := _NUMBER.search(said):
        return int(number.group(1))
    for word in re.findall(r"[a-z]+", said.lower()):
        if word in _ORDINALS:
            return _ORDINALS[word]
    return 1


def _help_text(offered: Mapping[str, Any]) -> str:
    topics = [_ASK_ABOUT[name] for name, _ in KEYWORD_TOOLS if name in offered]
    if not topics:
        return f"{STAND_IN_NOTICE} I can chat, but no tools are available right now."
    listed = topics[0] if len(topics) == 1 else ", ".join(topics[:-1]) + f", or {topics[-1]}"
    return f"{STAND_IN_NOTICE} You can ask me about {listed}."


def _spoken_tool_reply(outputs: Sequence[str]) -> str:
    """Tool outputs as one or two plain sentences: no braces, quotes or JSON syntax."""
    text = " ".join(_plain(output) for output in outputs if output.strip())
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        return "Done."
    sentences = _SENTENCE_END.split(text)
    reply = " ".join(sentences[:2])
    if len(reply) > _TOOL_REPLY_MAX_CHARS:
        reply = reply[:_TOOL_REPLY_MAX_CHARS].rsplit(" ", 1)[0] + "."
    return reply


def _plain(output: str) -> str:
    try:
        value = json.loads(output)
    except ValueError:
        return re.sub(r"[{}\[\]\"`]", "", output)
    if isinstance(value, Mapping):
        for key in ("message", "summary", "text", "result"):
            if isinstance(value.get(key), str):
                return str(value[key])
        facts = [
            f"{str(k).replace('_', ' ')} {v}"
            for k, v in value.items()
            if isinstance(v, str | int | float | bool)
        ]
        return (", ".join(facts[:6]) + ".") if facts else ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value if isinstance(v, str | int | float)) + "."
    return str(value)


def _content_text(content: Any) -> str:
    """Message ``content`` as text: a plain string or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return ""


# -- wire helpers ---------------------------------------------------------------------------


def _text_pieces(text: str) -> list[str]:
    """``text`` in a few pieces of about three words that join back to exactly ``text``."""
    words = re.findall(r"\s*\S+\s*", text) or ([text] if text else [])
    return [
        "".join(words[i : i + _WORDS_PER_CHUNK]) for i in range(0, len(words), _WORDS_PER_CHUNK)
    ]


def _argument_pieces(arguments: str) -> list[str]:
    if not arguments:
        return []
    size = max(1, math.ceil(len(arguments) / _ARGUMENT_PIECES))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


def _estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _sse(payload: Mapping[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _tone(duration_s: float) -> bytes:
    """``duration_s`` seconds of the quiet tone as 16-bit little-endian mono PCM."""
    period = SAMPLE_RATE // _TONE_HZ
    peak = _TONE_AMPLITUDE * 32767
    one = array.array(
        "h", (round(peak * math.sin(2 * math.pi * i / period)) for i in range(period))
    )
    samples = round(duration_s * SAMPLE_RATE)
    pcm = one.tobytes() * (samples // period + 1)
    return pcm[: samples * 2]


def _wav(pcm: bytes) -> bytes:
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(pcm),
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        1,  # mono
        SAMPLE_RATE,
        SAMPLE_RATE * 2,
        2,
        16,
        b"data",
        len(pcm),
    )
    return header + pcm


# -- the server -----------------------------------------------------------------------------


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
                content = _content_text(message.get("content"))
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
        prompt_tokens = _estimate_tokens(json.dumps(body["messages"]))
        completion_tokens = _estimate_tokens(turn.text + "".join(c.arguments_json for c in calls))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        if not body.get("stream"):
            return web.json_response(_completion(completion_id, body["model"], turn, calls, usage))

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        stall = self._take_stall(request.path)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "x-request-id": f"req_sandbox_{next(self._ids)}",
            }
        )
        await response.prepare(request)
        base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fp_sandbox",
        }
        for n, choices in enumerate(_chunk_choices(turn, calls)):
            chunk: dict[str, Any] = {**base, "choices": choices}
            if include_usage:
                chunk["usage"] = None
            await response.write(_sse(chunk))
            if stall and n >= 1:  # role chunk + first content/tool chunk are out
                await self._stall(request)
        if include_usage:
            await response.write(_sse({**base, "choices": [], "usage": usage}))
        await response.write(_sse("[DONE]"))
        await response.write_eof()
        return response

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        if denied := self._unauthorized(request):
            return denied
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        text = body.get("input")
        if not isinstance(text, str) or not text:
            return openai_error(400, "'input' must be a non-empty string.", param="input")
        fmt = str(body.get("response_format") or "mp3")
        speed = body.get("speed", 1.0)
        pcm = _tone(self.speech_duration(text, float(speed) if speed else 1.0))
        stall = self._take_stall(request.path)
        if fmt == "pcm":
            audio, content_type = pcm, "audio/pcm"
        else:
            # We encode no compressed formats: WAV it is, declared so the client decodes it.
            audio, content_type = _wav(pcm), "audio/wav"
        sse = body.get("stream_format") == "sse" and fmt in ("pcm", "wav")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream" if sse else content_type,
                "x-request-id": f"req_sandbox_{next(self._ids)}",
            }
        )
        await response.prepare(request)
        for n, start in enumerate(range(0, len(audio), _AUDIO_CHUNK_BYTES)):
            piece = audio[start : start + _AUDIO_CHUNK_BYTES]
            if sse:
                delta = {"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()}
                await response.write(_sse(delta))
            else:
                await response.write(piece)
            if stall and n == 0:
                await self._stall(request)
        if sse:
            tokens = {"input_tokens": _estimate_tokens(text), "output_tokens": len(pcm) // 960}
            tokens["total_tokens"] = tokens["input_tokens"] + tokens["output_tokens"]
            await response.write(_sse({"type": "speech.audio.done", "usage": tokens}))
        await response.write_eof()
        return response

    async def _transcriptions(self, request: web.Request) -> web.Response:
        if denied := self._unauthorized(request):
            return denied
        form = _form_fields(request.headers.get("Content-Type", ""), await request.read())
        if "file" not in form:
            return openai_error(400, "'file' is required (multipart/form-data).", param="file")
        text = self.transcripts.popleft() if self.transcripts else DEFAULT_TRANSCRIPT
        fmt = form.get("response_format", b"json").decode(errors="replace")
        if fmt == "text":
            return web.Response(text=text)
        if fmt == "verbose_json":
            return web.json_response({"text": text, "language": "english", "duration": 1.0})
        return web.json_response({"text": text})

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


def _form_fields(content_type: str, body: bytes) -> dict[str, bytes]:
    """Name -> raw value of each part of a ``multipart/form-data`` body.

    The journal middleware has already consumed the request stream, so ``request.post()``
    cannot parse it again; the cached bytes are parsed here instead.
    """
    if not content_type.startswith("multipart/form-data"):
        return {}
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload
    return fields


def _chunk_choices(turn: Turn, calls: Sequence[ToolCall]) -> Iterator[list[dict[str, Any]]]:
    """The ``choices`` of each streamed chunk, as OpenAI orders them."""

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    def header(index: int, call: ToolCall) -> dict[str, Any]:
        function = {"name": call.name, "arguments": ""}
        return {"index": index, "id": call.id, "type": "function", "function": function}

    first_call = 0
    if turn.text or not calls:
        yield choice({"role": "assistant", "content": "", "refusal": None})
        for piece in _text_pieces(turn.text):
            yield choice({"content": piece})
    else:
        # A tool-only answer carries the first call's header in the role chunk.
        yield choice(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [header(0, calls[0])],
                "refusal": None,
            }
        )
        yield from (
            choice({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in _argument_pieces(calls[0].arguments_json)
        )
        first_call = 1
    for index, call in enumerate(calls[first_call:], start=first_call):
        yield choice({"tool_calls": [header(index, call)]})
        for piece in _argument_pieces(call.arguments_json):
            yield choice({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield choice({}, turn.finish_reason)


def _completion(
    completion_id: str,
    model: str,
    turn: Turn,
    calls: Sequence[ToolCall],
    usage: Mapping[str, Any],
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": turn.text or None, "refusal": None}
    if calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments_json},
            }
            for c in calls
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_sandbox",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": turn.finish_reason,
            }
        ],
        "usage": dict(usage),
    }
