"""Every sentence a caller can hear, in one place.

Tool outputs here are what the model is handed and passes on in its own words; the
session-level sentences (apology, goodbye, greeting) are spoken as they are. None of them
is ever technical: no service names, status codes, ids or error text. Sentences that carry
values (a time, a count, a name) are small functions that return plain words.

:data:`ERROR_RESPONSES` (the spec's six phrase types, each with natural variants) stays
importable from :mod:`src.error_recovery`, as the spec requires.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from num2words import num2words

# --------------------------------------------------------------------------------------
# The spec's phrase types (ErrorRecoveryMixin.get_error_response picks a variant)
# --------------------------------------------------------------------------------------

ERROR_RESPONSES: Mapping[str, tuple[str, ...]] = {
    "tool_failure": (
        "Let me try finding that information another way.",
        "Hmm, that didn't come through. Let me try another way.",
        "I couldn't pull that up just now. Let's try a different route.",
    ),
    "connection_issue": (
        "I'm experiencing a brief connection issue. Bear with me for just a second.",
        "I'm having a little trouble reaching that right now. One moment.",
        "My connection to that hiccuped for a second. Bear with me.",
    ),
    "timeout": (
        "That's taking longer than expected. Let me try a quicker approach.",
        "That's running a bit slow today. Let me try something faster.",
        "That's taking a while to come back. Let's not keep you waiting.",
    ),
    "service_unavailable": (
        "That service appears to be temporarily unavailable. Let's continue without it for now.",
        "I can't reach that right now, but we can keep going without it.",
        "That part isn't available at the moment. Let's carry on with everything else.",
    ),
    "data_not_found": (
        "I couldn't find that information. Can you clarify what you're looking for?",
        "I didn't find anything for that. Could you tell me a bit more?",
        "Nothing came up for that. Could you double-check the details for me?",
    ),
    "generic": (
        "I encountered an issue, but I'm still here to help. What else can I do for you?",
        "Something went sideways on my end, but I'm still here. What else can I help with?",
        "I hit a small snag, but we can keep going. What would you like to do next?",
    ),
}

# --------------------------------------------------------------------------------------
# Tool fallbacks (tool outputs the model passes on)
# --------------------------------------------------------------------------------------

USAGE_FALLBACK = (
    "I can't pull up your trial activity right now, but I'm happy to help with anything else."
)
USAGE_NOT_FOUND = (
    "I couldn't find a trial under that email. Could you double-check the address for me?"
)
ACCOUNT_FALLBACK = (
    "I can't reach your account details right now, but we can keep going without them."
)
ACCOUNT_NOT_FOUND = "I couldn't find an account under that email yet, and that's okay."
SLOTS_FALLBACK = (
    "I can't see the demo calendar right now. I can try again in a moment, or we can keep chatting."
)
NO_SLOTS = "There are no open demo times in the next few days. Want me to check further out?"
BOOK_FALLBACK = (
    "I couldn't lock in that time just now, so it isn't booked yet. Shall I try again in a moment?"
)
NO_SLOTS_OFFERED = "I haven't offered any demo times yet. Let me check what's open."
NOT_AN_OPTION = "That isn't one of the times I offered. Which of those works best?"
NOTE_QUEUED = (
    "I couldn't save that note just now. I'll hold on to it and try again before we finish."
)
# Honest: the outcome is unknown, and re-sending could duplicate it (operators get an
# error log line to check the CRM by hand).
NOTE_UNCONFIRMED = "I couldn't confirm that the note was saved, so please don't count on it."
NOTE_FAILED = "I couldn't save that note, so please don't count on it."
# A write the vendor cannot be asked about (src.registry.kinds.WRITE_WITHOUT_LOOKUP) whose
# outcome is unknown: not repeated (now or on a later call), and said so honestly.
WRITE_NOT_CONFIRMED = (
    "I couldn't confirm that went through, and I won't try again in case it did. "
    "The team will check it and follow up with you."
)
NOTE_NO_CRM = "I can't reach our records right now, so I couldn't save that note."
NOTE_NO_RECORD = "There's no account on file to attach that note to yet, so I haven't saved it."
NOTE_SAVED = "Thanks, I've saved a note of our call for the team."
NOTE_EMPTY = "What would you like me to note down from our call?"
ASK_EMAIL = "What's the email address on your PandaDoc trial?"
BAD_EMAIL = "That email address doesn't sound quite right. Could you spell it out for me?"

# Filler speech while a tool works (RunContext.with_filler).
FILLER = "One moment while I pull that up."
FILLER_WRITE = "One moment while I take care of that."
# A slow turn's second (and last) progress sentence, about 3 s in (src/tools/turn.py):
# never the same one twice in a call, so each is used at most once.
PROGRESS = (
    "Still checking, thanks for waiting.",
    "Still working on it, thanks for bearing with me.",
    "Almost there, thanks for your patience.",
    "Just a little longer, I'm still on it.",
)

# LiveKit itself answers a malformed tool call with parser text (pydantic messages, type
# names, URLs). The model must never see or repeat that: it gets these sentences instead.
BAD_TOOL_ARGUMENTS = (
    "That request was missing a detail in a form I can use. "
    "Ask the caller to say it again in plain words."
)
UNKNOWN_TOOL = "There is no such action. Carry on with the actions you have."


def demo_options(offers: Mapping[int, str]) -> str:
    """The demo times on offer, by option number (``{1: "Tuesday at 3 PM", ...}``)."""
    listed = "; ".join(f"option {i} is {when}" for i, when in offers.items())
    return f"Open demo times: {listed}. Ask which one works best."


def already_booked(when: str) -> str:
    """A second booking is refused: one demo per caller."""
    return (
        f"You already have a demo booked for {when}. "
        "If you'd like a different time, our sales team can move it for you."
    )


def booked(when: str | None) -> str:
    """The booking is confirmed; ``when`` is ``None`` when the caller's zone is unknown
    (better no time than a time in the wrong zone)."""
    if when is None:
        return "You're all set for the demo at the time you picked."
    return f"You're all set for a demo on {when}."


def demo_handed_to_sales(when: str, *, queued: bool) -> str:
    """Booking failed; the chosen time went (or will go, when ``queued``) to sales."""
    if queued:
        return (
            f"I couldn't confirm the booking directly. I've noted {when} for our "
            "sales team and will pass it on before we finish."
        )
    return (
        f"I couldn't confirm the booking directly, so I've passed {when} to our "
        "sales team, and they'll confirm it with you by email."
    )


# --------------------------------------------------------------------------------------
# What the vendors told us, in plain words
# --------------------------------------------------------------------------------------

EXACT_BELOW = 1000
"""Counts below this are said exactly; larger ones are rounded down to two significant
figures and said as "over ..." (nobody says "eighty-eight thousand, one hundred and
fifteen documents" on a call)."""


@lru_cache(maxsize=2048)
def _words(n: int) -> str:
    # Cached: num2words takes about 15 µs a number, and the same small counts recur on
    # every usage answer. It writes "one thousand, two hundred": that comma is for
    # reading, not speech.
    return str(num2words(n, lang="en")).replace(",", "")


def say_count(n: int) -> str:
    """A count as a person would say it: ``"zero"``, ``"ninety-nine"``, ``"one hundred"``,
    ``"over eighty-eight thousand"`` (88,115), ``"two thousand"`` (exactly 2,000)."""
    if n < 0:
        n = 0  # a count is never negative; never speak "minus"
    if n < EXACT_BELOW:
        return _words(n)
    scale = 10 ** (len(str(n)) - 2)
    rounded = n // scale * scale
    return _words(rounded) if rounded == n else f"over {_words(rounded)}"


def count_of(n: int, word: str) -> str:
    """``"one document"``, ``"fourteen documents"``."""
    return f"{say_count(n)} {word}{'' if n == 1 else 's'}"


def usage_sentence(
    created: int,
    sent: int,
    completed: int,
    *,
    days_left: int | None,
    last_active_days_ago: int | None,
) -> str:
    """One short sentence about a trial, e.g. "You've created fourteen documents and sent
    nine, six of them already completed, and you have seven days left in your trial."
    Plain words only: no event names, ids or field names."""
    if created == 0:
        usage = "You haven't created any documents yet"
    elif sent == 0:
        it = "it" if created == 1 else "any"
        usage = f"You've created {count_of(created, 'document')} but haven't sent {it} yet"
    else:
        usage = f"You've created {count_of(created, 'document')} and sent {say_count(sent)}"
        if completed and completed >= sent:
            usage += ", all of them completed" if sent > 1 else ", and it's been completed"
        elif completed:
            usage += f", {say_count(completed)} of them already completed"
    return f"{usage}{_trial_tail(days_left, last_active_days_ago)}."


def _trial_tail(days_left: int | None, last_active_days_ago: int | None) -> str:
    if days_left is not None:
        if days_left < 0:
            return ", and your trial has ended"
        if days_left == 0:
            return ", and today is the last day of your trial"
        return f", and you have {count_of(days_left, 'day')} left in your trial"
    if last_active_days_ago is None or last_active_days_ago < 2:
        return ""
    return f", and you were last in {count_of(last_active_days_ago, 'day')} ago"


def crm_sentence(name: str, company: str, title: str) -> str:
    """Who the CRM says the caller is, e.g. "Jane Doe works at Acme Corp as Head of Sales
    Operations." Each part is already speakable text or empty."""
    if name and company and title:
        return f"{name} works at {company} as {title}."
    if name and company:
        return f"{name} works at {company}."
    if name and title:
        return f"{name} works as {title}."
    if name:
        return f"I found {name} in our records."
    if company:
        return f"I found a record for someone at {company}."
    return "I found a matching record."


# --------------------------------------------------------------------------------------
# Session-level sentences (spoken as they are)
# --------------------------------------------------------------------------------------

APOLOGY = "I apologize for the interruption."
GOODBYE = (
    "I'm sorry, I'm having trouble on my end, so let's pick this up another time. "
    "Thank you for your patience, and goodbye."
)


def greeting(name: str | None) -> str:
    """The agent's first words: the caller's first name when known."""
    hello = f"Hi {name.split()[0]}! " if name and name.split() else "Hi there! "
    return hello + "I'm Ava from PandaDoc. How is your trial going so far?"


# --------------------------------------------------------------------------------------
# Caller identity and privacy (src/tools/policy.py): refusals are spoken as they are
# --------------------------------------------------------------------------------------

#: A verified caller asked about a different email: nothing is fetched.
ONLY_THIS_CALL = (
    "I can only look up the account on this call, so I can't check anyone else's details. "
    "Happy to keep going with yours, though."
)
#: The caller's identity is only claimed: no usage figures or CRM details are read back.
PRIVACY_CLAIMED = (
    "For your privacy, I can only go over trial and account details when you reach us "
    "through your PandaDoc account. I can still book you a demo with our team, or help "
    "with any questions about PandaDoc."
)


# --------------------------------------------------------------------------------------
# Demo booking through ChiliPiper's two-step API (issue #13)
# --------------------------------------------------------------------------------------


def slot_taken(offers: Mapping[int, str]) -> str:
    """The chosen time went to someone else; ``offers`` are the fresh options (may be
    empty)."""
    if not offers:
        return (
            "Someone just took that time, and there are no other open demo times in the "
            "next few days. Want me to pass your interest to our sales team?"
        )
    return "Someone just took that time. " + demo_options(offers)


def demo_link_from_sales(when: str, *, queued: bool) -> str:
    """Booking by voice was not possible; sales will send a link to pick the time."""
    if queued:
        return (
            f"I couldn't book that directly. I've noted {when} for our sales team, and "
            "they'll email you a link to confirm it or pick another time."
        )
    return (
        f"I couldn't book that directly, so I've passed {when} to our sales team, and "
        "they'll email you a link to confirm it or pick another time."
    )


# --------------------------------------------------------------------------------------
# Fleet scope: exactly-once CRM writes (src/outbox.py)
# --------------------------------------------------------------------------------------

# The note may or may not have reached the CRM; it will be looked for by its write id and
# sent only if it is certainly not there, so no duplicate and no loss.
NOTE_WILL_CONFIRM = (
    "Our records were slow to confirm that note, so I'll make sure that's saved, and only once."
)


# --------------------------------------------------------------------------------------
# Turn scope: model watchdogs (src/watchdogs.py)
# --------------------------------------------------------------------------------------

MODEL_WAIT_FILLER = "Just a second."
"""Said when the model has not started its answer after ``LLM_FIRST_TOKEN_TIMEOUT``."""
MODEL_STALL_BRIDGE = "One moment."
"""Said when the model's answer goes quiet mid-way (it may be preparing an action)."""
MODEL_STALL_REPAIR = "Sorry, I lost my train of thought there. Could you say that again?"
"""Ends a reply whose model stream stopped mid-sentence: the caller hears a natural close,
and the model, reading the history, sees an unfinished answer, not a finished one."""
TROUBLE_HEARING = "I'm having trouble hearing you right now. Please say that again in a moment."
"""Said (before the spec's apology) when speech recognition fails: the agent can still
speak, so it says what is wrong instead of waiting in silence."""


# --------------------------------------------------------------------------------------
# Adaptive protection: degraded capabilities (issue #15, src/tools/degraded.py)
# --------------------------------------------------------------------------------------

BOOKING_DOWN_OPENING = (
    "Just so you know, I can't book demo times directly today, but I can pass your "
    "preferred times to our team and they'll follow up."
)
"""Added to the greeting when a conversation starts while booking is down: expectations
are set once, and the rest of the call the model knows not to offer booking."""

# What the model is told (never spoken as such) while a capability's circuit is open.
BOOKING_DOWN_NOTE = (
    "Right now demo times cannot be checked or booked. Do not offer, promise or try to "
    "book a demo time. If the caller wants a demo, say you can't book times directly "
    "today and offer to pass their preferred times to the team, who will follow up."
)
USAGE_DOWN_NOTE = (
    "Right now the caller's trial usage cannot be looked up. Do not promise to check it; "
    "help with anything else."
)
ACCOUNT_DOWN_NOTE = (
    "Right now the caller's account record cannot be looked up. Do not promise to check "
    "it; help with anything else."
)
