"""Demo times from ChiliPiper: offer, book, and hand the chosen time to sales through the
CRM when booking cannot be confirmed."""

from __future__ import annotations

from livekit.agents.llm import ToolError

from src.phrases import (
    ASK_EMAIL,
    BOOK_FALLBACK,
    NO_SLOTS,
    NO_SLOTS_OFFERED,
    NOT_AN_OPTION,
    SLOT_TAKEN,
    SLOTS_FALLBACK,
    already_booked,
    demo_handed_to_sales,
    demo_options,
)
from src.services.chilipiper import DemoSlot, SlotUnavailable, spoken_time
from src.state import TrialistData
from src.tools.crm import crm_write
from src.tools.runtime import ToolRuntime, zone

__all__ = ["book_demo", "demo_slots"]


async def demo_slots(rt: ToolRuntime, data: TrialistData) -> str:
    """Open demo times, numbered as options; saves them in ``data``."""
    client = rt.services.chilipiper
    if client is None:
        raise ToolError(SLOTS_FALLBACK)
    slots = await rt.protected(
        "chilipiper",
        lambda: client.get_demo_slots(rt.now(), days=5, limit=3),
        SLOTS_FALLBACK,
    )
    if not slots:
        return NO_SLOTS
    data.offered_slots = {i: slot for i, slot in enumerate(slots, start=1)}
    tz = zone(data.timezone)
    return demo_options({i: s.spoken(tz) for i, s in data.offered_slots.items()})


async def book_demo(rt: ToolRuntime, data: TrialistData, option: int) -> str:
    """Book the offered time ``option``; one demo per caller."""
    if not data.offered_slots:
        raise ToolError(NO_SLOTS_OFFERED)
    slot = data.offered_slots.get(option) if isinstance(option, int) else None
    if slot is None:
        raise ToolError(NOT_AN_OPTION)
    tz = zone(data.timezone)
    if data.booked_meeting is not None:
        if data.booked_meeting.slot_id == slot.slot_id:
            return data.booked_meeting.spoken_summary(tz)
        # One demo per caller: never a second meeting by accident.
        raise ToolError(already_booked(spoken_time(data.booked_meeting.starts_at, tz)))
    if not data.email:
        raise ToolError(ASK_EMAIL)
    client = rt.services.chilipiper
    if client is None:
        raise ToolError(BOOK_FALLBACK)
    email, name = data.email, data.name or ""
    deadline_at = rt.deadline()
    try:
        # Safe to retry: the client sends a deterministic idempotency key. The
        # reserve leaves time to hand the request to sales if booking fails.
        meeting = await rt.protected(
            "chilipiper",
            lambda: client.book_demo(email, name, slot),
            BOOK_FALLBACK,
            reraise=(SlotUnavailable,),
            deadline_at=deadline_at - rt.reserve(),
        )
    except SlotUnavailable:
        raise ToolError(SLOT_TAKEN) from None
    except ToolError:
        return await hand_demo_to_sales(rt, data, slot, deadline_at)
    data.booked_meeting = meeting
    return meeting.spoken_summary(tz)


async def hand_demo_to_sales(
    rt: ToolRuntime, data: TrialistData, slot: DemoSlot, deadline_at: float
) -> str:
    """Graceful degradation when booking fails: the chosen time goes to the sales
    team as a CRM task/note, so the caller still gets a human follow-up."""
    when = slot.spoken(zone(data.timezone))
    body = (
        f"The trialist asked for a PandaDoc demo on {when} "
        f"({slot.starts_at.isoformat()}). Automatic booking could not be confirmed "
        "(it may or may not exist in ChiliPiper); please check, and confirm the time "
        "with them by email."
    )
    try:
        outcome = await crm_write(rt, data, "Demo requested", body, deadline_at)
    except ToolError:  # no CRM could answer the lookup
        outcome = "unknown"
    if outcome in ("saved", "queued"):
        data.demo_requested = slot.slot_id
        return demo_handed_to_sales(when, queued=outcome == "queued")
    raise ToolError(BOOK_FALLBACK)
