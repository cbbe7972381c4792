"""Phone verification only from a phone the caller cannot have set themselves (issue #25):
a Salesforce Contact's phone, never a Lead's; a HubSpot phone whose latest value did not
come from a form. Through a real AgentSession where the claim is about what is said; the
clients and the sandbox's phone history checked directly below that."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from prometheus_client import REGISTRY

from src.error_recovery.changeset import ToolChanges
from src.errors import NotFound
from src.identity import CallerIdentity
from src.phrases import ACCOUNT_FALLBACK, PRIVACY_CLAIMED
from src.sandbox import Sandbox
from src.sandbox.base import FaultKind
from src.sandbox.data import SANDBOX_CREDENTIALS
from src.services.hubspot import HubSpotClient, _latest_source, _PhoneValue
from src.services.salesforce import SalesforceClient
from src.settings import SettingsError, settings_from_env
from src.state import TrialistData
from tests.test_agent import tool_output
from tests.test_identity_seam import JANE, NOBODY, SAM, SAM_NUMBER, STRANGER_NUMBER, call

MARIA = "maria.garcia@initech.example.com"  # only in HubSpot, phone set by a rep (CRM_UI)
JANE_NUMBER = "14155550142"  # Jane's phone: on her Salesforce Lead, and from a HubSpot form
STRANGER_PHONE = "+1 (310) 555-0199"


def refusals(reason: str, tool: str = "get_trial_usage") -> float:
    labels = {"tool": tool, "reason": reason}
    return REGISTRY.get_sample_value("pandadoc_identity_refusals_total", labels) or 0.0


def phone_call(number: str) -> TrialistData:
    return TrialistData(identity=CallerIdentity(caller_number=number))


async def ask_usage(rig: Any, email: str) -> str:
    result = await rig.say(f"How is my trial usage? I'm {email}")
    return str(tool_output(result, "get_trial_usage").output)


@pytest.mark.parametrize(("object_type", "verified"), [("Lead", False), ("Contact", True)])
async def test_only_a_salesforce_contacts_phone_verifies(object_type: str, verified: bool) -> None:
    email = "lee.web@leadgen.example.com"  # not in HubSpot, no usage: only the CRM decides
    async with call(phone_call(STRANGER_NUMBER)) as (sandbox, rig):
        sandbox.salesforce.add_person(
            email, "Lee", "Web", object_type=object_type, phone=STRANGER_PHONE
        )
        before = refusals("sip_no_match", "lookup_account")
        result = await rig.say(f"What's on my account record? I'm {email}")
        said = tool_output(result, "lookup_account").output
        assert rig.data.identity.verified is verified
        if verified:
            assert '"Lee Web"' in said  # the record, as quoted data
        else:
            assert said == PRIVACY_CLAIMED
            assert refusals("sip_no_match", "lookup_account") == before + 1
            # The Lead was never even read: only the Contact query went out.
            [query] = sandbox.salesforce.requests("/services/data/*/query")
            assert "FROM Contact" in query.query["q"]


async def test_a_form_set_hubspot_phone_does_not_verify(caplog: pytest.LogCaptureFixture) -> None:
    before = refusals("sip_untrusted")
    async with call(phone_call(JANE_NUMBER)) as (sandbox, rig):
        with caplog.at_level(logging.INFO, logger="pandadoc.agent"):
            said = await ask_usage(rig, JANE)  # her own number, but from a Lead and a form
        assert said == PRIVACY_CLAIMED and rig.data.identity.trust == "claimed"
        assert sandbox.amplitude.journal == []
    assert refusals("sip_untrusted") == before + 1
    assert "(sip_untrusted)" in caplog.text and "j***@acme.example.com" in caplog.text
    assert "could have set" in caplog.text
    assert JANE not in caplog.text and "5550142" not in caplog.text


@pytest.mark.parametrize(("source", "verified"), [("FORM", False), ("CRM_UI", True)])
async def test_the_phones_latest_source_decides(source: str, verified: bool) -> None:
    async with call(phone_call(STRANGER_NUMBER)) as (sandbox, rig):
        # Someone changes Maria's phone to their own: through a form, or a rep does it.
        sandbox.hubspot.set_phone(MARIA, STRANGER_PHONE, source)
        said = await ask_usage(rig, MARIA)
        assert rig.data.identity.verified is verified
        assert ("six documents" in said) is verified
        [read] = sandbox.hubspot.requests("/crm/v3/objects/contacts/batch/read")
        assert read.body["propertiesWithHistory"] == ["phone"]
        assert read.body["idProperty"] == "email"


async def test_sip_verify_from_off_checks_nothing() -> None:
    async with call(phone_call(SAM_NUMBER), {"SIP_VERIFY_FROM": "off"}) as (sandbox, rig):
        assert await ask_usage(rig, SAM) == PRIVACY_CLAIMED
        assert rig.data.identity.trust == "claimed"
        assert sandbox.salesforce.requests("/services/data/*") == []
        assert sandbox.hubspot.journal == []


async def test_a_check_the_crm_cannot_answer_does_not_count() -> None:
    async with call(phone_call(SAM_NUMBER)) as (sandbox, rig):
        for server in (sandbox.salesforce, sandbox.hubspot):
            server.inject("/services/data/*", FaultKind.SERVICE_UNAVAILABLE)
            server.inject("/crm/*", FaultKind.SERVICE_UNAVAILABLE)
        assert await ask_usage(rig, SAM) == ACCOUNT_FALLBACK
        assert rig.data.identity_ledger.phone_checks == []
        sandbox.clear()
        for name in ("salesforce", "hubspot"):
            rig.agent.circuit_breakers[name].reset()
        assert "one document" in await ask_usage(rig, SAM)
        assert rig.data.identity.describe() == "verified(sip)"


async def test_a_salesforce_contact_match_wins_even_when_hubspot_has_nobody() -> None:
    async with call(phone_call(SAM_NUMBER)) as (sandbox, rig):
        sandbox.hubspot.contacts.clear()
        assert "one document" in await ask_usage(rig, SAM)
        # Both CRMs were asked, whatever the first answered: the same work for any address.
        assert len(sandbox.hubspot.requests("/crm/v3/objects/contacts/batch/read")) == 1


# -- the clients and the sandbox ------------------------------------------------------------


async def test_hubspot_batch_read_reports_the_phones_latest_source() -> None:
    async with Sandbox() as sandbox:
        hs = HubSpotClient(SANDBOX_CREDENTIALS["HUBSPOT_ACCESS_TOKEN"], sandbox.hubspot.base_url)
        async with hs:
            contact, source = await hs.find_contact_phone(MARIA.upper())
            assert (contact.last_name, source) == ("Garcia", "CRM_UI")
            assert (await hs.find_contact_phone(JANE))[1] == "FORM"
            sandbox.hubspot.set_phone(JANE, "+1 415 555 0100", "CRM_UI")  # a rep fixed it
            contact, source = await hs.find_contact_phone(JANE)
            assert (contact.phone, source) == ("+1 415 555 0100", "CRM_UI")
            with pytest.raises(NotFound):
                await hs.find_contact_phone(NOBODY)
        [missing] = sandbox.hubspot.requests("/crm/v3/objects/contacts/batch/read")[-1:]
        assert missing.status == 207  # HubSpot's multi-status for an input it cannot find


def test_a_phone_history_that_cannot_be_read_is_not_trusted() -> None:
    old = _PhoneValue(value="+1 1", timestamp="2025-01-01T00:00:00Z", sourceType="CRM_UI")
    new = _PhoneValue(value="+1 2", timestamp="2025-02-01T00:00:00.000Z", sourceType="FORM")
    assert _latest_source([old, new], "+1 2") == "FORM"  # by time, not by list order
    assert _latest_source([new, old], "+1 2") == "FORM"
    assert _latest_source([old], "+1 2") is None  # history does not explain the value
    assert _latest_source([], "+1 2") is None
    bad = _PhoneValue(value="+1 2", timestamp="yesterday", sourceType="CRM_UI")
    assert _latest_source([bad], "+1 2") is None


async def test_salesforce_intake_task_has_no_who_and_is_found_by_its_ref() -> None:
    ref = "0123456789abcdef0123456789abcdef"
    async with Sandbox() as sandbox:
        sf = SalesforceClient(
            sandbox.salesforce.base_url,
            SANDBOX_CREDENTIALS["SALESFORCE_CLIENT_ID"],
            SANDBOX_CREDENTIALS["SALESFORCE_CLIENT_SECRET"],
            intake_owner_id="005Hs00000A1b2eIAB",
        )
        async with sf:
            jane = await sf.find_person(JANE)
            assert not await sf.task_exists(None, ref)
            await sf.create_task(jane.id, f"On Jane (ref {ref})", "")
            assert not await sf.task_exists(None, ref)  # a Task on a record is not intake
            await sf.create_task(None, f"Intake (ref {ref})", "")
            assert await sf.task_exists(None, ref)
        on_jane, intake = sandbox.salesforce.tasks
        assert on_jane["WhoId"] == jane.id and "WhoId" not in intake
        assert intake["OwnerId"] == "005Hs00000A1b2eIAB"  # the intake owner ...
        assert "OwnerId" not in on_jane  # ... owns intake Tasks only


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SIP_VERIFY_FROM", "leads"),
        ("SALESFORCE_INTAKE_OWNER_ID", "005-not-an-id"),
        ("HUBSPOT_INTAKE_RECORD_ID", "intake"),
    ],
)
def test_identity_settings_are_validated(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings_from_env({name: value})
    assert name in str(info.value) and value not in str(info.value)


def test_identity_settings_defaults_and_values() -> None:
    settings = settings_from_env({})
    assert settings.agent.sip_verify_from == "contacts"
    assert settings.salesforce.intake_owner_id == settings.hubspot.intake_record_id == ""
    settings = settings_from_env({"SIP_VERIFY_FROM": "OFF", "HUBSPOT_INTAKE_RECORD_ID": "42"})
    assert (settings.agent.sip_verify_from, settings.hubspot.intake_record_id) == ("off", "42")


def test_a_changed_email_clears_the_old_fields_in_one_change_set() -> None:
    data = TrialistData(
        email=JANE,
        crm_source="salesforce",
        crm_record_id="00Q5e0000000001AAA",
        crm_owner_id="005Hs00000A1b2cIAB",
        crm_summary="Jane Doe works at Acme Corp.",
        company="Acme Corp",
        offered_slots={1: object()},  # type: ignore[dict-item]
    )
    bound = ("crm_source", "crm_record_id", "crm_owner_id", "crm_summary", "company")
    before = {name: getattr(data, name) for name in (*bound, "email", "offered_slots")}
    changes = ToolChanges(data)
    data.switch_email(NOBODY)
    assert data.email == NOBODY and data.offered_slots == {}
    assert all(getattr(data, name) is None for name in bound)
    assert data.usage is None and data.booking_session is None
    changes.rollback()  # the tool failed: the old address comes back whole
    assert {name: getattr(data, name) for name in before} == before
    changes = ToolChanges(data)
    data.switch_email(NOBODY)
    changes.commit()
    assert (data.email, data.crm_record_id, data.offered_slots) == (NOBODY, None, {})
