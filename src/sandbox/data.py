"""Seeded demo data shared by the sandbox servers, so one email means the same person in
Amplitude, Salesforce and HubSpot. Plainly fictional (example.com addresses)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "DEMO_SLOTS_PER_DAY",
    "SANDBOX_CREDENTIALS",
    "SANDBOX_DISPATCHES",
    "TRIAL_USERS",
    "SandboxDispatch",
    "TrialUser",
]


@dataclass(frozen=True)
class TrialUser:
    email: str
    first_name: str
    last_name: str
    company: str
    title: str
    # Amplitude usage (counts over the trial so far)
    amplitude_id: int
    documents_created: int
    documents_sent: int
    documents_completed: int
    templates_created: int
    integrations: tuple[str, ...] = ()
    last_active_days_ago: int = 0
    trial_days_left: int = 10
    plan: str = "Business trial"
    # where the CRM record lives
    in_salesforce: bool = True
    in_hubspot: bool = True
    salesforce_object: str = "Lead"  # "Lead" or "Contact"
    # the CRM phone (Salesforce Phone, HubSpot phone), written as people type it; fictional
    # 555-01xx numbers. A SIP caller number matching it verifies the caller.
    phone: str = ""
    # HubSpot: who set that phone (``sourceType`` of its latest history value). ``FORM``:
    # the person typed it into a web form, so it cannot verify a phone caller.
    phone_source: str = "CRM_UI"
    extra: dict[str, str] = field(default_factory=dict)


TRIAL_USERS: tuple[TrialUser, ...] = (
    # Active, engaged trialist: in both CRMs (Salesforce Lead).
    TrialUser(
        email="jane.doe@acme.example.com",
        phone="(415) 555-0142",  # a Salesforce Lead's phone, and HubSpot's from a form
        phone_source="FORM",
        first_name="Jane",
        last_name="Doe",
        company="Acme Corp",
        title="Head of Sales Operations",
        amplitude_id=100001,
        documents_created=14,
        documents_sent=9,
        documents_completed=6,
        templates_created=3,
        integrations=("Salesforce", "Google Drive"),
        last_active_days_ago=0,
        trial_days_left=7,
    ),
    # Barely started: a Salesforce Contact, also in HubSpot.
    TrialUser(
        email="sam.lee@globex.example.com",
        phone="+1 212 555 0187",
        first_name="Sam",
        last_name="Lee",
        company="Globex",
        title="Office Manager",
        amplitude_id=100002,
        documents_created=1,
        documents_sent=0,
        documents_completed=0,
        templates_created=0,
        last_active_days_ago=5,
        trial_days_left=2,
        salesforce_object="Contact",
    ),
    # Only in HubSpot (Salesforce has no record): exercises the CRM fallback chain.
    TrialUser(
        email="maria.garcia@initech.example.com",
        phone="+1-512-555-0163",
        first_name="Maria",
        last_name="Garcia",
        company="Initech",
        title="Founder",
        amplitude_id=100003,
        documents_created=6,
        documents_sent=4,
        documents_completed=4,
        templates_created=1,
        integrations=("HubSpot",),
        last_active_days_ago=1,
        trial_days_left=12,
        in_salesforce=False,
    ),
    # In neither CRM, but has product usage.
    TrialUser(
        email="alex.kim@umbrella.example.com",
        first_name="Alex",
        last_name="Kim",
        company="Umbrella",
        title="Procurement Lead",
        amplitude_id=100004,
        documents_created=3,
        documents_sent=1,
        documents_completed=0,
        templates_created=0,
        last_active_days_ago=2,
        trial_days_left=9,
        in_salesforce=False,
        in_hubspot=False,
    ),
)


# Job dispatches as LiveKit would hand them to the agent, one per trust level (see
# src/identity.py): participant attributes and job metadata. The SIP one is a phone call
# from Sam's CRM number (``sip.phoneNumber`` is LiveKit's attribute for the caller's
# number); Sam still has to say the email, whose CRM phone is then compared.
@dataclass(frozen=True)
class SandboxDispatch:
    metadata: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


SANDBOX_DISPATCHES: dict[str, SandboxDispatch] = {
    "verified": SandboxDispatch(
        metadata='{"email": "jane.doe@acme.example.com", "name": "Jane Doe"}'
    ),
    "sip": SandboxDispatch(
        attributes={
            "sip.phoneNumber": "+12125550187",
            "sip.trunkPhoneNumber": "+18005550100",
            "sip.callID": "SCL_sandbox0001",
        }
    ),
    "none": SandboxDispatch(),
}

# Demo slots are offered on the next business days at these UTC hours.
DEMO_SLOTS_PER_DAY: tuple[int, ...] = (15, 17, 19)

# Credentials the sandbox servers accept (and print as env lines). Not secrets: they only
# open the local stand-ins. A stand-in may keep its own (its registry entry's sandbox_env).
SANDBOX_CREDENTIALS: dict[str, str] = {
    "AMPLITUDE_API_KEY": "sandbox-amplitude-api-key",
    "AMPLITUDE_SECRET_KEY": "sandbox-amplitude-secret-key",
    "SALESFORCE_CLIENT_ID": "sandbox-salesforce-client-id",
    "SALESFORCE_CLIENT_SECRET": "sandbox-salesforce-client-secret",
    "HUBSPOT_ACCESS_TOKEN": "sandbox-hubspot-private-app-token",
    "OPENAI_API_KEY": "sandbox-openai-api-key",
}
