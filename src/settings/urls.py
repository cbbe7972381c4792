"""One check for every URL setting (issue #30): a value is parsed at start-up by the
parser of the client that will use it, or refused in one line naming the variable.

- :func:`check_http_url`: vendor base URLs and ``CHILIPIPER_BOOKING_URL`` (aiohttp, so
  yarl), ``LIVEKIT_URL`` (LiveKit's worker connects with aiohttp: yarl) and
  ``OPENAI_BASE_URL`` (the OpenAI SDK: httpx).
- :func:`check_store_url`: ``RESILIENCE_STORE_URL``: Redis's own ``parse_url`` and a
  connection object built (not connected), SQLite's path limits, ``memory://``.

Besides the client's parser, the address is read once more by the RFC 3986 rules
(``scheme://[userinfo@]host[:port]``) and both readings must agree: a password holding
``/`` or ``#`` makes Python's parser see another host than the one meant, so it is
refused with the hint to percent-encode it. Host: an IP literal or DNS labels (1-63
characters of letters, digits, ``-`` and ``_``, at most 253 in all, IDNA-encoded first);
port: 1-65535 in digits. A refusal never contains the value: it may hold a password.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

from .model import SettingsError

__all__ = ["MAX_URL_LENGTH", "check_http_url", "check_metrics_dir", "check_store_url"]

MAX_URL_LENGTH = 2048
SQLITE_MAX_PATH = 512  # bytes: SQLite's unix VFS (MAX_PATHNAME) refuses longer file names
NAME_MAX = 255  # bytes per path component (Linux, macOS)
STORE_SCHEMES = ("sqlite", "redis", "rediss", "memory")
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
_PERCENT_HINT = "percent-encode a password holding / ? # @ or : (/ as %2F)"


def _refuse(name: str, what: str) -> SettingsError:
    return SettingsError(f"{name} {what}")


def _text(name: str, value: str, *, spaces: bool = False) -> None:
    """Length, characters a URL never holds raw, text that encodes."""
    if len(value) > MAX_URL_LENGTH:
        raise _refuse(name, f"must be at most {MAX_URL_LENGTH} characters")
    for char in value:
        if ord(char) < 32 or ord(char) == 127 or (char.isspace() and not spaces):
            raise _refuse(name, "must not contain spaces or control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(name, "must be valid text (UTF-8)") from None


def _authority(rest: str) -> tuple[str, str]:
    """``(authority, what follows)`` of what follows ``scheme://``."""
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return rest[:end], rest[end:]


def _host_port(name: str, hostport: str, hint: str = "") -> tuple[str, int | None]:
    """Host (without brackets) and port of ``host[:port]`` by RFC 3986."""
    more = f"; {hint}" if hint else ""
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket:
            raise _refuse(name, f"has an unclosed [ in its host{more}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _refuse(name, f"must have a valid IPv6 address between [ and ]{more}") from None
        if after and not after.startswith(":"):
            raise _refuse(name, f"must have a valid host and port{more}")
        port_text = after[1:] if after else ""
    else:
        host, colon, port_text = hostport.partition(":")
        if colon and ":" in port_text:
            raise _refuse(name, f"must put an IPv6 host in [ ]{more}")
    if not host:
        raise _refuse(name, f"must have a host{more}")
    if port_text == "":
        return host, None
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise _refuse(name, f"must have a port between 1 and 65535{more}")
    return host, int(port_text)


def _check_host(name: str, raw_host: str) -> None:
    """``raw_host``: the host as the client sends it (IDNA-encoded, no brackets)."""
    try:
        ipaddress.ip_address(raw_host)
        return
    except ValueError:
        pass
    labels = raw_host[:-1].split(".") if raw_host.endswith(".") else raw_host.split(".")
    if len(raw_host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise _refuse(name, "must have a valid host name (letters, digits, - and .)")


def _same_host(mine: str, theirs: str) -> bool:
    """Whether the client reads the host we read (an IDN host is checked once encoded)."""
    if not mine.isascii():
        return True
    try:
        return ipaddress.ip_address(mine) == ipaddress.ip_address(theirs)
    except ValueError:
        return mine.lower().rstrip(".") == theirs.lower().rstrip(".")


def _scheme(name: str, value: str, schemes: Sequence[str]) -> tuple[str, str]:
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in schemes:
        raise _refuse(name, f"must be an absolute URL ({'/'.join(schemes)})")
    return scheme.lower(), rest


def _parsed_by_client(
    name: str, value: str, parser: Literal["yarl", "httpx"]
) -> tuple[str, str, int | None, bool]:
    """``(host, raw_host, port, has query or fragment)`` as the client reads them."""
    try:
        if parser == "httpx":
            import httpx2 as httpx  # the OpenAI SDK's HTTP package

            hurl = httpx.URL(value)
            return (
                hurl.host,
                hurl.raw_host.decode("ascii"),
                hurl.port,
                bool(hurl.query or hurl.fragment),
            )
        from yarl import URL  # aiohttp's

        url = URL(value)
        return (
            url.host or "",
            url.raw_host or "",
            url.explicit_port,
            bool(url.raw_query_string or url.raw_fragment),
        )
    except Exception:  # yarl: ValueError/UnicodeError; httpx: InvalidURL
        raise _refuse(name, "must be a valid URL") from None


def check_http_url(
    name: str,
    value: str,
    *,
    schemes: Sequence[str] = ("http", "https"),
    parser: Literal["yarl", "httpx"] = "yarl",
    base: bool = True,
) -> str:
    """``value`` (without a trailing ``/``) when its client can use it, ``""`` for empty.

    ``base``: paths are appended to it (a query or fragment would end up in the middle of
    every request URL, so it is refused)."""
    value = value.strip().rstrip("/")
    if not value:
        return ""
    _text(name, value)
    _, rest = _scheme(name, value, schemes)
    authority, _after = _authority(rest)
    if "@" in authority:
        raise _refuse(name, "must not carry a user name or password")
    host, port = _host_port(name, authority)
    c_host, raw_host, c_port, extra = _parsed_by_client(name, value, parser)
    if not _same_host(host, c_host) or c_port != port:
        raise _refuse(name, "must have a valid host and port")
    _check_host(name, raw_host)
    if base and extra:
        raise _refuse(name, "must not have a query (?) or fragment (#): paths are added to it")
    return value


def check_store_url(name: str, value: str) -> tuple[str, tuple[str, ...]]:
    """``(url, secrets)`` for ``RESILIENCE_STORE_URL``; ``secrets``: the password as
    written and decoded, for :func:`src.redaction.register_secret`."""
    url = value.strip()
    _text(name, url, spaces=url.startswith("sqlite://"))
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in STORE_SCHEMES:
        raise _refuse(name, "must start with sqlite://, redis://, rediss:// or memory://")
    if scheme == "memory":
        return url, ()
    if scheme == "sqlite":
        _check_sqlite_path(name, rest)
        return url, ()
    return url, _check_redis(name, url, rest)


def _check_sqlite_path(name: str, path: str) -> None:
    """What ``SqliteStore(url[len("sqlite://"):])`` will open."""
    if not path.strip("/"):
        raise _refuse(
            name, "needs a file path after sqlite://, e.g. sqlite:///var/lib/agent/store.db"
        )
    if path.endswith("/") or Path(path).name in ("", ".", ".."):
        raise _refuse(name, "must name a file, not a directory")
    try:
        absolute = os.fsencode(os.path.abspath(path))
        parts = [os.fsencode(part) for part in Path(path).parts]
    except (UnicodeError, ValueError):
        raise _refuse(name, "must be a file path the system can encode") from None
    if len(absolute) > SQLITE_MAX_PATH or any(len(part) > NAME_MAX for part in parts):
        raise _refuse(
            name, f"file path is too long for SQLite (at most {SQLITE_MAX_PATH} bytes in all)"
        )
    if os.path.isdir(path):
        raise _refuse(name, "must name a file, not a directory")


def _check_redis(name: str, url: str, rest: str) -> tuple[str, ...]:
    from redis.asyncio.connection import ConnectionPool, parse_url

    authority, after = _authority(rest)
    hint = _PERCENT_HINT if "@" in after else ""
    more = f"; {hint}" if hint else ""
    userinfo, at, hostport = authority.rpartition("@")
    host, port = _host_port(name, hostport, hint)
    path, _, _query = after.partition("?")
    if "#" in after or not re.fullmatch(r"/?|/\d{1,9}", path):
        raise _refuse(name, f"must end in a database number, e.g. redis://host:6379/0{more}")
    raw_password = userinfo.partition(":")[2] if at else ""
    try:
        parsed = parse_url(url)  # the Redis client's own reading; then its options, as a
        # connection object (not connected): an unknown option or bad value fails here
        ConnectionPool.from_url(url).make_connection()  # type: ignore[no-untyped-call]
    except Exception:  # ValueError, TypeError (unknown option), RedisError (bad value)
        raise _refuse(
            name, "must be a valid Redis URL (host, port, /db and known options)"
        ) from None
    if not _same_host(host, parsed.get("host") or "") or parsed.get("port") != port:
        raise _refuse(name, f"must have a valid host and port; {_PERCENT_HINT}")
    if unquote(raw_password) != (parsed.get("password") or ""):
        raise _refuse(name, f"has a password the Redis client reads differently; {_PERCENT_HINT}")
    try:
        raw_host = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        raise _refuse(name, "must have a valid host name (letters, digits, - and .)") from None
    _check_host(name, raw_host)
    secrets = {raw_password, unquote(raw_password)} - {""}
    return tuple(sorted(secrets))


def check_metrics_dir(name: str, value: str) -> str:
    """``PROMETHEUS_MULTIPROC_DIR``: LiveKit's worker creates it and deletes every file in
    it at start, so it must be a path the system takes and hold nothing but metrics
    files (``*.db``). Empty: the default (a directory of its own under the temp dir)."""
    if not value:
        return ""
    _text(name, value, spaces=True)
    try:
        os.fsencode(value)
        path = Path(value)
        not_a_dir = path.exists() and not path.is_dir()
        others = path.is_dir() and any(
            not (entry.suffix == ".db" or entry.is_dir()) for entry in path.iterdir()
        )
    except (OSError, UnicodeError, ValueError):  # SettingsError is raised after this
        raise _refuse(name, "must be a directory path this user can read") from None
    if not_a_dir:
        raise _refuse(name, "must be a directory")
    if others:
        raise _refuse(
            name,
            "holds files other than metrics (*.db), and the worker deletes every file "
            "in it at start: point it at a directory of its own",
        )
    return value
