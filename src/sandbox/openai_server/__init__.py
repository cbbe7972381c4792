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
keyword table :func:`keyword_tools` (the tools' declared keywords). Every request that
reached the stand-in model is kept in :attr:`OpenAIServer.requests_seen`;
:meth:`OpenAIServer.tool_outputs` reads the tool results the model was given.

Faults of :class:`~src.sandbox.base.SandboxServer` apply to every endpoint. One more, for
streams: :meth:`OpenAIServer.stall_after_first_chunk` sends the first chunk(s) of a
response, then nothing until the fault is cleared (the connection is then dropped).
Admin API for it: ``GET/POST /__sandbox/stall``; ``DELETE /__sandbox/faults`` clears it.

Credentials: ``Authorization: Bearer <SANDBOX_CREDENTIALS["OPENAI_API_KEY"]>``, else 401
with OpenAI's error body.

Modules: :mod:`.script` (turns and the default keyword script), :mod:`.chat` and
:mod:`.audio` (the wire format of each endpoint), :mod:`.server` (:class:`OpenAIServer`:
state, auth, stalls, routes), :mod:`.wire` (what they share).
"""

from .audio import DEFAULT_TRANSCRIPT, SAMPLE_RATE
from .script import STAND_IN_NOTICE, ToolCall, ToolOutput, Turn, default_turn, keyword_tools
from .server import OpenAIServer
from .wire import openai_error

__all__ = [
    "DEFAULT_TRANSCRIPT",
    "SAMPLE_RATE",
    "STAND_IN_NOTICE",
    "OpenAIServer",
    "ToolCall",
    "ToolOutput",
    "Turn",
    "default_turn",
    "keyword_tools",
    "openai_error",
]
