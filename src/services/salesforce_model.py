"""Salesforce's answers as we read them (``reference/apis/salesforce-*.yml``): the OAuth
token, SOQL query results of Leads and Contacts, created records and counts, and the
mapping of a record to :class:`~src.services.crm.CrmContact`."""

from __future__ import annotations

import re
from typing import Any, Literal

import pydantic

from ..validation import is_valid_salesforce_id
from .crm import CrmContact

SERVICE = "salesforce"


class TokenResponse(pydantic.BaseModel):
    access_token: str = pydantic.Field(min_length=1)
    token_type: str | None = None
    expires_in: float | None = None  # seconds; absent or <= 0: valid until a 401


class Attributes(pydantic.BaseModel):
    type: str


class Named(pydantic.BaseModel):
    Id: str | None = None
    Name: str | None = None


class Record(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")

    attributes: Attributes
    Id: str = pydantic.Field(min_length=15, max_length=18)
    FirstName: str | None = None
    LastName: str | None = None
    Company: str | None = None
    Title: str | None = None
    Phone: str | None = None
    Status: str | None = None
    Owner: Named | None = None
    Account: Named | None = None


class QueryResult(pydantic.BaseModel):
    totalSize: int = pydantic.Field(ge=0)
    done: bool
    records: list[Record]


class CreateResult(pydantic.BaseModel):
    id: str = pydantic.Field(min_length=15, max_length=18)
    success: bool
    errors: list[Any] = pydantic.Field(default_factory=list)


RECORD_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")


def owner_user_id(record: Record) -> str | None:
    """The owner's id when the owner is a User (key prefix ``005``): a Lead can be owned
    by a queue (``00G``), and a Task is then assigned to the configured fallback."""
    owner_id = record.Owner.Id if record.Owner is not None else None
    return owner_id if owner_id and is_valid_salesforce_id(owner_id, prefix="005") else None


def to_contact(record: Record) -> CrmContact:
    object_type: Literal["Lead", "Contact"] = (
        "Contact" if record.attributes.type == "Contact" else "Lead"
    )
    company = record.Account.Name if record.Account is not None else record.Company
    return CrmContact(
        id=record.Id,
        object_type=object_type,
        first_name=record.FirstName or None,
        last_name=record.LastName or None,
        company=company or None,
        title=record.Title or None,
        status=record.Status or None,
        owner=(record.Owner.Name or None) if record.Owner is not None else None,
        phone=record.Phone or None,
        owner_id=owner_user_id(record),
        source=SERVICE,
    )


class CountResult(pydantic.BaseModel):
    totalSize: int = pydantic.Field(ge=0)
