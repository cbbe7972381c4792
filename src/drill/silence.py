"""What the caller hears, as the drill measures it (issue #27): the pieces of text that
reach them with their arrival times, and the longest silence between them.

The measure is what reaches the caller (transcription pieces, every ``say`` included; on
the audio path, audio frames as they would play), not internal events."""

from __future__ import annotations

import time
from collections.abc import Sequence

from livekit.agents.voice import io

__all__ = ["SILENCE_BUDGET", "TextSink", "longest_silence"]

SILENCE_BUDGET = 3.0
"""Seconds: the longest silence a caller may hear in any turn, under any single failure."""


class TextSink(io.TextOutput):
    """The session's transcription output without a room: what reaches the caller as
    text (the model's pieces and every ``say``), with arrival times (``perf_counter``)."""

    def __init__(self) -> None:
        super().__init__(label="drill-text", next_in_chain=None)
        self.arrivals: list[float] = []

    async def capture_text(self, text: str) -> None:
        if text.strip():
            self.arrivals.append(time.perf_counter())

    def flush(self) -> None:
        pass


def longest_silence(
    start: float, arrivals: Sequence[float], durations: Sequence[float] | None = None
) -> float | None:
    """The longest gap a caller hears from ``start`` (the end of their turn) to the end
    of what reached them: pieces at ``arrivals``; with ``durations`` (audio frames), each
    plays after the one before it for its duration, so a gap is counted from the end of
    the audio already queued, not from when it was delivered. ``None`` when nothing
    arrived (the caller heard no reply at all: a silent turn, judged on its own)."""
    if not arrivals:
        return None
    longest = 0.0
    heard_until = start
    for i, at in enumerate(arrivals):
        longest = max(longest, at - heard_until)
        heard_until = max(heard_until, at) + (durations[i] if durations is not None else 0.0)
    return longest
