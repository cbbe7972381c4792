"""The turn: every tool call of one model reply shares one deadline (``TURN_DEADLINE``)
and at most two progress sentences: the filler, then, if the answer is still not ready
about ``PROGRESS_DELAY`` seconds in, one of :data:`~src.phrases.PROGRESS`.

LiveKit runs the tool calls of one reply concurrently, each with its own ``RunContext``;
what they share is the reply's ``SpeechHandle`` (``context.speech_handle``). The first
tool call of a reply opens a :class:`Turn` keyed on it; later calls of the same reply get
what is left of the turn. While a tool body runs, :data:`CURRENT_DEADLINE` holds its
deadline on the agent's retry clock, so nested steps (the CRM chain's fair share) plan
inside what is left of the turn.

Each tool's ``RunContext.with_filler`` scheduler asks its :class:`FillerSource` what to
say when the caller has been waiting; the source decides by the rules of the turn and the
call (:meth:`FillerSource.__call__`), so they hold whichever tool's scheduler fires.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from src.phrases import PROGRESS

__all__ = ["CURRENT_DEADLINE", "FillerSource", "Turn", "TurnBook"]

CURRENT_DEADLINE: ContextVar[float | None] = ContextVar("tool_deadline_at", default=None)
"""The running tool's deadline on the retry clock (``None`` outside a tool)."""


@dataclass
class Turn:
    """One reply's tool budget: ``deadline_at`` on the retry clock, and the progress
    sentences the caller heard while its tools worked (at most two: the filler, then one
    of ``progress``)."""

    deadline_at: float
    filler_claimed: bool = False
    step: int = 0  # the reply's step (LiveKit reuses one handle for its tool-reply steps)
    progress_said: bool = False
    # The call's progress sentences said so far (shared by the call's turns: TurnBook).
    heard: set[str] = field(default_factory=set)
    progress: Sequence[str] = PROGRESS
    clock: Callable[[], float] | None = None  # the retry clock (TurnBook's)
    filler_at: float = 0.0  # when the filler was said, on ``clock``
    progress_after: float = 1.0  # seconds after the filler before a progress sentence

    def claim_filler(self, sentence: str) -> FillerSource:
        """A filler source for one tool's ``RunContext.with_filler`` (see
        :class:`FillerSource`): the turn's first sentence is ``sentence``."""
        return FillerSource(self, sentence)


class FillerSource:
    """What one tool of a :class:`Turn` says when its filler scheduler fires (LiveKit
    calls it with the fire's step; ``None`` says nothing and the scheduler tries again
    after its interval). The rules, whichever tool of the turn fires:

    * the first fire of the turn says the filler ``sentence``;
    * the next, at least ``progress_after`` seconds later (a sibling's scheduler may
      fire with the first), says a progress sentence the call has not heard yet; then
      nothing more (at most two per turn; none once the call has heard every variant);
    * nothing once this tool's answer is ready (:meth:`answered`): the scheduler of a
      finished tool may still be winding down.
    """

    __slots__ = ("done", "sentence", "turn")

    def __init__(self, turn: Turn, sentence: str) -> None:
        self.turn = turn
        self.sentence = sentence
        self.done = False

    def answered(self) -> None:
        """This tool's answer is ready: it says nothing more."""
        self.done = True

    def __call__(self, step: int) -> str | None:
        turn = self.turn
        if self.done or turn.progress_said:
            return None
        now = turn.clock() if turn.clock is not None else 0.0
        if not turn.filler_claimed:
            turn.filler_claimed = True
            turn.filler_at = now
            return self.sentence
        if now - turn.filler_at < turn.progress_after:
            return None
        sentence = next((s for s in turn.progress if s not in turn.heard), None)
        turn.progress_said = True  # one try per turn, said or not: never a third sentence
        if sentence is not None:
            turn.heard.add(sentence)
        return sentence


class TurnBook:
    """The open turns of one agent (one call), keyed on the reply's ``SpeechHandle``
    (held weakly: a turn is forgotten with its reply), and the progress sentences the
    call has heard."""

    def __init__(
        self,
        clock: Callable[[], float],
        progress: Sequence[str] = PROGRESS,
        *,
        progress_after: float = 1.0,
    ) -> None:
        self.clock = clock
        self.progress = progress
        self.progress_after = progress_after
        self.heard: set[str] = set()
        self._turns: weakref.WeakKeyDictionary[Any, Turn] = weakref.WeakKeyDictionary()

    def _new(self, turn_deadline: float, step: int = 0) -> Turn:
        return Turn(
            self.clock() + turn_deadline,
            step=step,
            heard=self.heard,
            progress=self.progress,
            clock=self.clock,
            progress_after=self.progress_after,
        )

    def turn_for(self, context: Any, turn_deadline: float) -> Turn:
        """The turn ``context``'s tool call belongs to (a fresh one when LiveKit gives no
        speech handle, e.g. a tool run outside a session)."""
        handle = getattr(context, "speech_handle", None)
        if handle is None:
            return self._new(turn_deadline)
        # One speech handle carries a reply and the replies that follow its tool results
        # (num_steps grows): each step is a new model reply, with a budget and filler of
        # its own, or a step after a slow one would find its time already spent.
        step = getattr(handle, "num_steps", 0)
        turn = self._turns.get(handle)
        if turn is None or turn.step != step:
            turn = self._turns[handle] = self._new(turn_deadline, step)
        return turn
