"""The voice activity detector of every job's session, built once per process in the
worker's ``prewarm`` (issue #29).

LiveKit's native build of the Silero model (``livekit.agents.inference.VAD``, package
livekit-local-inference) rather than the Silero plugin (``silero.VAD.load()``): the same
model, and the same decisions on recorded speech (``tests/test_vad_equivalence.py``:
every start and end of speech within one 32 ms inference window of the plugin's), without
onnxruntime and an inference session of its own in every job process. Its weights are
loaded once, in LiveKit's forkserver (``livekit.agents.ipc._preload``), and shared by the
jobs forked from it (``bench/memory_fork.py`` measures the job's private memory).

The native defaults are not the plugin's (the native VAD ends speech after 0.25 s of
silence, the plugin after 0.55 s), so :data:`DEFAULT_VAD_OPTIONS` holds the plugin's,
which this agent's turn-taking was built and tested with.
"""

from __future__ import annotations

from dataclasses import dataclass

from livekit.agents import inference, vad
from livekit.agents.types import NOT_GIVEN

__all__ = ["DEFAULT_VAD_OPTIONS", "VADOptions", "build_vad"]


@dataclass(frozen=True)
class VADOptions:
    """When speech starts and ends. Durations in seconds, thresholds are speech
    probabilities (0 to 1). Defaults: the Silero plugin's (livekit-plugins-silero 1.8.9)."""

    min_speech_duration: float = 0.05  # this much speech starts a segment
    min_silence_duration: float = 0.55  # this much silence ends it
    prefix_padding_duration: float = 0.5  # audio kept from before the start
    max_buffered_speech: float = 60.0  # longest segment buffered for the STT
    activation_threshold: float = 0.5  # a window at or above this is speech
    # While speaking, a window above this still counts as speech. None: the plugin's
    # and the native VAD's own rule, activation_threshold - 0.15 (at least 0.01).
    deactivation_threshold: float | None = None

    def __post_init__(self) -> None:
        for name in (
            "min_speech_duration",
            "min_silence_duration",
            "prefix_padding_duration",
            "max_buffered_speech",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 seconds")
        if not 0 < self.activation_threshold <= 1:
            raise ValueError("activation_threshold must be in (0, 1]")
        deactivation = self.deactivation_threshold
        if deactivation is not None and not 0 < deactivation <= self.activation_threshold:
            raise ValueError("deactivation_threshold must be in (0, activation_threshold]")


DEFAULT_VAD_OPTIONS = VADOptions()


def build_vad(options: VADOptions = DEFAULT_VAD_OPTIONS) -> vad.VAD:
    """The one place the session's VAD is built: LiveKit's native Silero VAD with
    ``options`` (the Silero plugin's by default)."""
    deactivation = options.deactivation_threshold
    return inference.VAD(
        model="silero",
        min_speech_duration=options.min_speech_duration,
        min_silence_duration=options.min_silence_duration,
        prefix_padding_duration=options.prefix_padding_duration,
        max_buffered_speech=options.max_buffered_speech,
        activation_threshold=options.activation_threshold,
        deactivation_threshold=deactivation if deactivation is not None else NOT_GIVEN,
    )
