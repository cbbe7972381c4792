"""Keep secrets and personal data out of logs.

``redact`` masks email addresses, phone numbers, bearer/basic credentials and every value
registered with :func:`register_secret`. :class:`RedactingFilter` applies it to each log
record (message *and* arguments) so a careless ``logger.info("%s", email)`` is still safe;
:func:`install_redaction` attaches the filter to the root handlers and our loggers.
"""

from __future__ import annotations

import logging
import numbers
import re
import threading
from typing import Any

__all__ = [
    "RedactingFilter",
    "get_logger",
    "install_redaction",
    "mask_email",
    "redact",
    "register_secret",
]

# Emails: a superset of what src.validation.is_valid_email accepts, so every address the
# agent could take from a caller is masked: dot-atom local parts with any non-special
# character (RFC 6531 letters, "o'brien", "a/b"), quoted local parts ("john doe"@x.org),
# also as they appear JSON-escaped inside tool arguments (\"john doe\"@x.org or
# jos\u00e9@x.org), and dotted domains of letters, digits, hyphens and non-ASCII.
_LOCAL_CH = r"""[^\s@"(),:;<>\[\]]"""
_QUOTED_LOCAL = (
    r'\\"(?:[^"\\\r\n]|\\[^"]){0,128}?\\"'  # JSON-escaped: \"john doe\"
    r'|"(?!\\")(?:[^"\\\r\n]|\\.){0,128}?"'  # plain: "john doe"
)
_LABEL_CH = r"(?:[^\W_]|[^\x00-\x7f\s])"
_LABEL = rf"{_LABEL_CH}(?:(?:{_LABEL_CH}|-)*{_LABEL_CH})?"
# A local part starts where a run of local-part characters starts (the lookbehind keeps a
# long run from being rescanned from every position: linear, not quadratic).
_EMAIL = re.compile(rf"(?:{_QUOTED_LOCAL}|(?<!{_LOCAL_CH}){_LOCAL_CH}+)@{_LABEL}(?:\.{_LABEL})+")
# International or North-American style numbers with at least 9 digits; dates and ids with
# fewer digits, and ISO timestamps (no spaces/parentheses between groups), are left alone.
# Separators include non-breaking/thin spaces and Unicode dashes.
_PHONE = re.compile(r"(?<![\w-])\+?\d[\d ().\-\u00a0\u2009\u202f\u2010-\u2015]{7,}\d(?![\w-])")
# A credential after its scheme or name. Values, not words: the value must contain a digit
# or one of + / = (every real token does), or be 20+ characters, so "access token
# rejected, refreshing it once" survives while "Bearer 00D!AQ4x.abc" does not.
_CRED_CH = r"[A-Za-z0-9._~+/=!\-]"
_CREDENTIAL = re.compile(
    rf"(?i)\b(bearer|basic|api-key|token)\s+(?=(?:{_CRED_CH}*?[0-9+/=])|{_CRED_CH}{{20}})"
    rf"{_CRED_CH}{{6,}}"
)
# name=value / "name": "value" pairs whose value is a secret (query strings, form bodies,
# JSON, headers), whatever the value looks like.
_SECRET_PAIR = re.compile(
    r"""(?i)(\b(?:access_token|refresh_token|id_token|client_secret|api_?key|apikey|"""
    r"""secret_key|password|passwd|authorization|x-api-key|signature|sig)["']?\s*[:=]\s*"""
    r"""["']?)(?!<secret>)(?:(?:bearer|basic|digest|token|api-key)\s+)?[^\s"'&,;}]+"""
)
# user:password@ in a URL.
_URL_USERINFO = re.compile(r"(?<=://)[^/\s:@]*:[^/\s@]+@")  # user may be empty
_HAS_DIGITS = re.compile(r"\d")
_MIN_SECRET_LEN = 4

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember ``value`` so :func:`redact` masks it wherever it appears. Short values
    (under 4 characters) are ignored: masking them would shred ordinary words."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.add(value)


def mask_email(email: str) -> str:
    """``jane.doe@acme.com`` -> ``j***@acme.com`` (keeps the domain for debugging); a
    local part that does not start with a letter or digit (quoted, escaped) -> ``***``."""
    local, _, domain = email.rpartition("@")
    if not local:
        return "***"
    first = local[0] if local[0].isalnum() else ""
    return f"{first}***@{domain}"


def _phone_sub(match: re.Match[str]) -> str:
    digits = sum(ch.isdigit() for ch in match.group(0))
    return "<phone>" if digits >= 9 else match.group(0)


def redact(text: str) -> str:
    """Return ``text`` with registered secrets, credentials, emails and phone numbers masked."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "<secret>")
    # Cheap membership tests first: most log lines hold no "@", "=", ":" or digit.
    if "@" in text:
        if "://" in text:
            text = _URL_USERINFO.sub("<secret>@", text)
        text = _EMAIL.sub(lambda m: mask_email(m.group(0)), text)
    if "=" in text or ":" in text:
        text = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}<secret>", text)
    if " " in text:
        text = _CREDENTIAL.sub(lambda m: f"{m.group(1)} <secret>", text)
    if _HAS_DIGITS.search(text) is not None:
        text = _PHONE.sub(_phone_sub, text)
    return text


def _redact_arg(arg: Any) -> Any:
    if isinstance(arg, str):
        return redact(arg)
    if isinstance(arg, numbers.Number) or arg is None:
        return arg  # keeps %d / %.2f formatting working
    return redact(str(arg))


def _redact_extra(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict | list | tuple | set):
        return redact(str(value))
    return value


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class RedactingFilter(logging.Filter):
    """A logging filter that rewrites each record's message and args through :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        if record.exc_info and record.exc_info[1] is not None:
            # Format the traceback now, redacted, and drop the live exception: formatters
            # (LiveKit's JSON one included) then print the safe text instead.
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS:
                setattr(record, key, _redact_extra(value))
        return True


_FILTER = RedactingFilter()


def install_redaction(*logger_names: str) -> None:
    """Attach the redacting filter to the root logger's handlers and the named loggers.

    Idempotent. Handler-level filters also cover records propagated from third-party
    loggers (livekit, aiohttp, openai), which logger-level filters would miss.
    """
    root = logging.getLogger()
    for handler in root.handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    for name in ("pandadoc", *logger_names):
        lg = logging.getLogger(name)
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with the redacting filter attached: use it for every
    logger of this project, so redaction does not depend on how handlers are set up."""
    lg = logging.getLogger(name)
    if _FILTER not in lg.filters:
        lg.addFilter(_FILTER)
    return lg
