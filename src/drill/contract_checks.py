"""What two drill scenarios check in the vendor stand-ins after their turns (issue #26):
ChiliPiper's own conditions, a booking found through the documented meeting list, and a
locked Salesforce write saved once on the retry."""

from __future__ import annotations

from collections.abc import Callable

from src.drill.harness import Conversation, TurnResult
from src.sandbox.chilipiper import ChiliPiperServer
from src.sandbox.data import TRIAL_USERS
from src.services.chilipiper import MEETINGS_PATH

__all__ = ["CHILIPIPER_CONDITIONS", "booked_once_through_the_lookup", "note_saved_on_the_retry"]

JANE = TRIAL_USERS[0].email


# ChiliPiper's own conditions, set up on its stand-in (not HTTP faults).
CHILIPIPER_CONDITIONS: dict[str, Callable[[ChiliPiperServer], None]] = {
    "slot-taken": lambda s: s.steal_next_schedule(),
    "route-expired": lambda s: s.expire_routes(),
    "lost-after-applied": lambda s: s.lose_next_schedule(applied=True),
    "answer-lost": lambda s: s.drop_next_answer(),
}


def booked_once_through_the_lookup(conv: Conversation, turns: list[TurnResult]) -> list[str]:
    """``chilipiper-book-answer-lost``: the documented meeting list found the meeting,
    the caller heard it confirmed, and exactly one meeting exists."""
    server = conv.sandbox.chilipiper
    problems: list[str] = []
    mine = [m for m in server.meetings if m.guest_email.casefold() == JANE.casefold()]
    if len(mine) != 1:
        problems.append(f"{len(mine)} meetings for the caller (want exactly 1)")
    if not server.requests(MEETINGS_PATH, "PUT"):
        problems.append("the meeting was not looked up")
    if not any("You're all set" in " ".join(t.said) for t in turns):
        problems.append("the caller did not hear the booking confirmed")
    return problems


def note_saved_on_the_retry(conv: Conversation, turns: list[TurnResult]) -> list[str]:
    """``salesforce-lock-row``: the locked write was kept, and saved once on the retry."""
    server = conv.sandbox.salesforce
    writes = server.requests("*/sobjects/Task", "POST")
    problems: list[str] = []
    if not any(e.fault == "lock-row" for e in writes):
        problems.append("the write never met the lock")
    if len(server.tasks) != 1:
        problems.append(f"{len(server.tasks)} notes saved (want exactly 1)")
    return problems
