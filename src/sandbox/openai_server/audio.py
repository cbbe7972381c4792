"""``POST /v1/audio/speech`` (a quiet tone as long as the text would take to say) and
``POST /v1/audio/transcriptions`` (multipart in, the next scripted text out)."""

from __future__ import annotations

import array
import base64
import email.policy
import math
import struct
from collections.abc import Mapping
from email.parser import BytesParser
from typing import Any

from aiohttp import web

from .wire import Stall, estimate_tokens, sse

__all__ = [
    "DEFAULT_TRANSCRIPT",
    "SAMPLE_RATE",
    "form_fields",
    "stream_speech",
    "tone",
    "transcription_response",
]

SAMPLE_RATE = 24_000
"""Hz of the audio ``/v1/audio/speech`` returns (what ``openai.TTS`` expects), mono 16-bit."""

DEFAULT_TRANSCRIPT = "hello"
"""Text ``/v1/audio/transcriptions`` returns when :attr:`OpenAIServer.transcripts` is empty."""

_TONE_HZ = 400  # divides 24 kHz: one period is exactly 60 samples, so the tone tiles
_TONE_AMPLITUDE = 0.05  # about -26 dBFS: audible, never loud
_AUDIO_CHUNK_BYTES = 4_800  # 100 ms of 24 kHz 16-bit mono per streamed chunk


def tone(duration_s: float) -> bytes:
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


async def stream_speech(
    request: web.Request,
    body: Mapping[str, Any],
    text: str,
    pcm: bytes,
    *,
    request_id: str,
    stall: Stall | None,
) -> web.StreamResponse:
    """Send the speech for ``text`` (``pcm``: its tone) in the ``response_format`` and
    ``stream_format`` of ``body``; with ``stall``, stop after the first 100 ms of audio."""
    fmt = str(body.get("response_format") or "mp3")
    if fmt == "pcm":
        audio, content_type = pcm, "audio/pcm"
    else:
        # We encode no compressed formats: WAV it is, declared so the client decodes it.
        audio, content_type = _wav(pcm), "audio/wav"
    stream_sse = body.get("stream_format") == "sse" and fmt in ("pcm", "wav")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream" if stream_sse else content_type,
            "x-request-id": request_id,
        }
    )
    await response.prepare(request)
    for n, start in enumerate(range(0, len(audio), _AUDIO_CHUNK_BYTES)):
        piece = audio[start : start + _AUDIO_CHUNK_BYTES]
        if stream_sse:
            delta = {"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode()}
            await response.write(sse(delta))
        else:
            await response.write(piece)
        if stall and n == 0:
            await stall(request)
    if stream_sse:
        tokens = {"input_tokens": estimate_tokens(text), "output_tokens": len(pcm) // 960}
        tokens["total_tokens"] = tokens["input_tokens"] + tokens["output_tokens"]
        await response.write(sse({"type": "speech.audio.done", "usage": tokens}))
    await response.write_eof()
    return response


def transcription_response(text: str, form: Mapping[str, bytes]) -> web.Response:
    """``text`` in the ``response_format`` the form asks for: text, verbose_json or json."""
    fmt = form.get("response_format", b"json").decode(errors="replace")
    if fmt == "text":
        return web.Response(text=text)
    if fmt == "verbose_json":
        return web.json_response({"text": text, "language": "english", "duration": 1.0})
    return web.json_response({"text": text})


def form_fields(content_type: str, body: bytes) -> dict[str, bytes]:
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
