"""What one conversation knows (LiveKit's ``session.userdata``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from src.error_recovery.changeset import WriteTracked
from src.identity import CallerIdentity, IdentityLedger
from src.services.amplitude import TrialUsage
from src.services.chilipiper import BookedMeeting, BookingSession, DemoSlot

__all__ = ["TrialistData"]


@dataclass
class TrialistData(WriteTracked):
    """What this conversation knows. The error-recovery wrapper opens a change set over it
    for each tool (:mod:`src.error_recovery.changeset`; ``WriteTracked`` says which tool
    assigned a field) and rolls back a failed tool's changes, so a failure never leaves
    half-written state, even while sibling tools of the same reply run.

    Attributes:
        email: the trialist's work email (participant attributes, job metadata, console
            setting, or said by the caller and validated).
        name: their name when known.
        timezone: IANA zone for speaking demo times.
        usage: product usage found in Amplitude.
        crm_source / crm_record_id / crm_summary: the CRM record found, if any.
        crm_owner_id: the Salesforce user who owns that record (Tasks are assigned to them).
        company: their company when the CRM knows it (fills booking forms).
        booking_session: the open ChiliPiper booking session (single-use route id and
            its start times) the offered options came from.
        offered_slots: demo options offered in this conversation, by option number.
        booked_meeting: the demo booked in this conversation.
        demo_requested: the slot id handed to sales through the CRM when booking failed.
        summaries_logged: call summaries saved to the CRM.
        identity: who the caller is and how far that is trusted (:mod:`src.identity`);
            decides what they may hear (:mod:`src.tools.policy`). An ``email`` given to
            the constructor without an identity is the job's own setting (console, tests)
            and counts as verified.
        identity_ledger: the lock and phone-check count shared by the identity decisions
            of this conversation (:class:`~src.identity.IdentityLedger`); never rolled back.
    """

    email: str | None = None
    name: str | None = None
    timezone: str = "America/New_York"
    usage: TrialUsage | None = None
    crm_source: str | None = None
    crm_record_id: str | None = None
    crm_owner_id: str | None = None
    crm_summary: str | None = None
    company: str | None = None
    booking_session: BookingSession | None = None
    offered_slots: dict[int, DemoSlot] = field(default_factory=dict)
    booked_meeting: BookedMeeting | None = None
    demo_requested: str | None = None
    summaries_logged: int = 0
    identity: CallerIdentity = field(default_factory=CallerIdentity)
    identity_ledger: IdentityLedger = field(default_factory=IdentityLedger, repr=False)

    def __post_init__(self) -> None:
        if self.email and self.identity.trust == "none":
            self.identity = CallerIdentity("verified", self.email, "console")

    def switch_email(self, email: str) -> None:
        """The conversation is now about ``email``: every field bound to the old address
        (its CRM record, owner and summary, its usage, the booking session and the demo
        times offered from it) is cleared by the same assignments, so they land in the
        same change set as the new address and a rollback restores them together."""
        if email == self.email:
            return
        self.email = email
        self.crm_source = self.crm_record_id = self.crm_owner_id = self.crm_summary = None
        self.company = None
        self.usage = None
        self.booking_session = None
        self.offered_slots = {}
