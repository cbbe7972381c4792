"""The turn: every tool call of one model reply shares one deadline (``TURN_DEADLINE``)
and at most one filler sentence.

LiveKit runs the tool calls of one reply concurrently, each with its own ``RunContext``;
what they share is the reply's ``SpeechHandle`` (``context.speech_handle``). The first
tool call of a reply opens a :class:`Turn` keyed on it; later calls of the same reply get
what is left of the turn. While a tool body runs, :data:`CURRENT_DEADLINE` holds its
deadline on the agent's retry clock, so nested steps (the CRM chain's fair share) plan
inside what is left of the turn.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

__all__ = ["CURRENT_DEADLINE", "Turn", "TurnBook"]

CURRENT_DEADLINE: ContextVar[float | None] = ContextVar("tool_deadline_at", default=None)
"""The running tool's deadline on the retry clock (``None`` outside a tool)."""


@dataclass
class Turn:
    """One reply's tool budget: ``deadline_at`` on the retry clock, and whether its one
    filler sentence was claimed."""

    deadline_at: float
    filler_claimed: bool = False
    step: int = 0  # the reply's step (LiveKit reuses one handle for its tool-reply steps)

    def claim_filler(self, sentence: str) -> Callable[[int], str | None]:
        """A filler source for ``RunContext.with_filler``: the first tool of the turn
        whose filler fires says ``sentence``; every other one stays quiet."""

        def source(step: int) -> str | None:
            if self.filler_claimed:
                return None
            self.filler_claimed = True
            return sentence

        return source


class TurnBook:
    """The open turns of one agent, keyed on the reply's ``SpeechHandle`` (held weakly:
    a turn is forgotten with its reply)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._turns: weakref.WeakKeyDictionary[Any, Turn] = weakref.WeakKeyDictionary()

    def turn_for(self, context: Any, turn_deadline: float) -> Turn:
        """The turn ``context``'s tool call belongs to (a fresh one when LiveKit gives no
        speech handle, e.g. a tool run outside a session)."""
        handle = getattr(context, "speech_handle", None)
        if handle is None:
            return Turn(self.clock() + turn_deadline)
        # One speech handle carries a reply and the replies that follow its tool results
        # (num_steps grows): each step is a new model reply, with a budget and filler of
        # its own, or a step after a slow one would find its time already spent.
        step = getattr(handle, "num_steps", 0)
        turn = self._turns.get(handle)
        if turn is None or turn.step != step:
            turn = self._turns[handle] = Turn(self.clock() + turn_deadline, step=step)
        return turn
