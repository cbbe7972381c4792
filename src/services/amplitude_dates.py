"""Lenient reading of Amplitude's free-form ``trial_end_date`` user property.

User properties are whatever the tracking code sent: an ISO date, an ISO date-time with
or without a zone, a US ``MM/DD/YYYY`` form, a month name, epoch milliseconds (or
seconds), a number, or an empty string. :func:`parse_trial_end` reads every form we can
read without guessing, and answers ``None`` for the rest, so one odd property costs the
caller one fact ("days left"), never their whole usage summary.

Date-times become the calendar date in UTC. Slash and dash forms with the year last are
read month first, as PandaDoc's US tracking plan writes them. Years outside 2000-2199 are
treated as unreadable (an epoch in the wrong unit, a typo).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

from ..redaction import get_logger

__all__ = ["parse_trial_end", "value_shape"]

logger = get_logger("pandadoc.services.amplitude")

_MIN_YEAR, _MAX_YEAR = 2000, 2199
_EPOCH_MS_FROM = 10**11  # larger numbers are milliseconds, smaller ones seconds
_US_NUMERIC = re.compile(r"(\d{1,2})[/\-.](\d{1,2})[/\-.](\d{4}|\d{2})")
_NAMED_FORMATS = ("%b %d, %Y", "%B %d, %Y", "%b %d %Y", "%B %d %Y", "%d %b %Y", "%d %B %Y")
_MAX_LEN = 64


def value_shape(value: Any) -> str:
    """A loggable outline of ``value``: its type, and for text its character classes
    (``9`` digit, ``a`` letter), e.g. ``str:99.99.9999`` -- never the value itself."""
    if not isinstance(value, str):
        return type(value).__name__
    text = value[:_MAX_LEN]
    outline = re.sub(r"[A-Za-z]", "a", re.sub(r"\d", "9", text))
    return f"str:{outline}" + ("..." if len(value) > _MAX_LEN else "")


def _in_range(day: date) -> date | None:
    return day if _MIN_YEAR <= day.year <= _MAX_YEAR else None


def _from_epoch(number: float) -> date | None:
    seconds = number / 1000 if abs(number) >= _EPOCH_MS_FROM else number
    try:
        return _in_range(datetime.fromtimestamp(seconds, UTC).date())
    except (OverflowError, OSError, ValueError):
        return None


def _compact(text: str) -> date | None:
    """``YYYYMMDD`` (ISO 8601 basic format)."""
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _from_text(text: str) -> date | None:
    if re.fullmatch(r"\d{8}", text) and text[:2] in ("20", "21"):
        return _compact(text)
    if re.fullmatch(r"-?\d+(?:\.\d+)?", text):
        return _from_epoch(float(text))
    iso = text[:-1] + "+00:00" if text[-1:] in "Zz" else text
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        pass
    else:
        if when.tzinfo is not None:
            when = when.astimezone(UTC)
        return _in_range(when.date())
    us = _US_NUMERIC.fullmatch(text)
    if us is not None:
        month, day, year = (int(g) for g in us.groups())
        year += 2000 if year < 100 else 0
        try:
            return _in_range(date(year, month, day))
        except ValueError:
            return None
    for form in _NAMED_FORMATS:
        try:
            return _in_range(datetime.strptime(text, form).date())
        except ValueError:
            continue
    return None


def parse_trial_end(value: Any) -> date | None:
    """The trial's last day from whatever Amplitude holds, ``None`` when absent, empty or
    unreadable. An unreadable (not merely empty) value is logged for operators with its
    shape (:func:`value_shape`), not its content."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    parsed: date | None = None
    if isinstance(value, bool):
        parsed = None
    elif isinstance(value, int | float):
        parsed = _from_epoch(float(value))
    elif isinstance(value, str) and len(value) <= _MAX_LEN:
        parsed = _from_text(value.strip())
    if parsed is None:
        logger.warning(
            "amplitude: trial_end_date unreadable (%s); usage is spoken without it",
            value_shape(value),
        )
    return parsed
