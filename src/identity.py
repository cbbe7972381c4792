"""Who the caller is, as told by whoever dispatched the job."""

from __future__ import annotations

import json

from src.redaction import get_logger
from src.validation import is_valid_email

__all__ = ["identity_from_job"]

logger = get_logger("pandadoc.agent")


def identity_from_job(metadata: str, attributes: dict[str, str]) -> tuple[str | None, str | None]:
    """(email, name) of the trialist from participant attributes, else job metadata JSON.
    Untrusted input: anything malformed is ignored with a log line."""
    email = attributes.get("email") or None
    name = attributes.get("name") or None
    if metadata:
        try:
            meta = json.loads(metadata)
        except ValueError:
            logger.warning("Job metadata is not JSON; ignoring it")
            meta = {}
        if isinstance(meta, dict):
            email = email or (meta.get("email") if isinstance(meta.get("email"), str) else None)
            name = name or (meta.get("name") if isinstance(meta.get("name"), str) else None)
    if email is not None:
        email = email.strip().lower()
        if not is_valid_email(email):
            logger.warning("Ignoring a malformed trialist email from the job")
            email = None
    if name is not None:
        name = " ".join(name.split())[:80] or None
    return email, name
