"""The shared CRM record: one spoken sentence, whichever CRM it came from."""

from __future__ import annotations

import pytest

from src.services.crm import CrmContact, speakable


def contact(source: str = "salesforce", **fields: str | None) -> CrmContact:
    return CrmContact(id=fields.pop("id", None) or "00Q000000000000AAA", source=source, **fields)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            contact(first_name="Sam", last_name="Lee", company="Globex", title="Office Manager"),
            "Sam Lee works at Globex as Office Manager.",
        ),
        (
            contact(first_name="Ana", last_name="Ruiz", company="[not provided]", title="CTO"),
            "Ana Ruiz works as CTO.",
        ),
        (contact(last_name="Ruiz", company="Initech"), "Ruiz works at Initech."),
        (
            contact(first_name="Jane", company="Acme Corp", source="hubspot"),
            "Jane works at Acme Corp.",
        ),
        (
            contact(first_name="Jane", last_name="Doe", company="n/a", title="https://x.example"),
            "I found Jane Doe in our records.",
        ),
        (contact(company="Initech", source="hubspot"), "I found a record for someone at Initech."),
        (contact(company="https://x.io", title="n/a"), "I found a matching record."),
        (
            contact(first_name="undefined", last_name="NaN", company="acme.com"),
            "I found a record for someone at acme.com.",
        ),
        (
            contact(source="hubspot", lifecycle_stage="marketingqualifiedlead", owner="81234567"),
            "I found a matching record.",
        ),
        (
            contact(object_type="Lead", status="Open - Not Contacted", owner="Rep Name"),
            "I found a matching record.",
        ),
    ],
)
def test_spoken_summary_is_one_plain_sentence(record: CrmContact, expected: str) -> None:
    spoken = record.spoken_summary()
    assert spoken == expected
    assert record.id not in spoken
    for jargon in ("Lead", "Contact", "salesforce", "hubspot", "_", "None", "Open -", "Rep"):
        assert jargon not in spoken


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("  Acme   Corp ", "Acme Corp"),
        ("N/A", None),
        ("tbd", None),
        ("<b>Acme</b>", None),
        ("sales@acme.example.com", None),
        ("www.acme.example.com", None),
        ("x" * 81, None),
        (None, None),
        ("undefined", None),
        ("NaN", None),
        ("#N/A", None),
        ("0", None),
        ("True", None),
        ("%%%", None),
        ("--None--", None),
        ("00Q5e0000000001AAA", None),
        ("Acme\u200b Corp", None),
        ("Head of Sales Ops", "Head of Sales Ops"),
        ("3M", "3M"),
        ("O'Brien & Co.", "O'Brien & Co."),
    ],
)
def test_speakable(value: str | None, expected: str | None) -> None:
    assert speakable(value) == expected


def test_a_record_needs_an_id() -> None:
    with pytest.raises(ValueError):
        CrmContact(id="", source="hubspot")
    assert contact(first_name="Jane", last_name="Doe").full_name == "Jane Doe"
    assert contact().full_name is None
