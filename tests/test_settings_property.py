"""Issue #30: every variable ``.env.example`` lists, given any string, either gives a
one-line :class:`SettingsError` naming a variable, or settings from which every client
and the store are built and a request formed exactly as the clients form it (aiohttp with
a connector that stops where a socket would open; the OpenAI SDK's own request builder;
LiveKit's worker URL; the Redis client's connection object). No network, no files.

The list of variables is read from ``.env.example``, so a variable added there (and to
the loader) is covered without touching this file; a second test keeps the two lists
equal.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse
from zoneinfo import ZoneInfo

import aiohttp
import httpx2 as httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from src.openai_client import TrialistOpenAI
from src.services.http import ServiceHttp
from src.services.wiring import TrialistServices
from src.settings import Settings, SettingsError, settings_from_env
from src.store import open_store

ROOT = Path(__file__).resolve().parent.parent
VARIABLES = re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M)

# Everything configured, so every client is built (the sandbox's kind of values).
FULL = {
    "LIVEKIT_URL": "wss://example.livekit.cloud",
    "LIVEKIT_API_KEY": "APIkey123",
    "LIVEKIT_API_SECRET": "secret-secret-secret-secret-0001",
    "OPENAI_API_KEY": "sk-test-key",
    "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    "DEEPGRAM_API_KEY": "dg-test-key",
    "AMPLITUDE_API_KEY": "amp-key",
    "AMPLITUDE_SECRET_KEY": "amp-secret",
    "SALESFORCE_INSTANCE_URL": "https://acme.my.salesforce.com",
    "SALESFORCE_CLIENT_ID": "client-id",
    "SALESFORCE_CLIENT_SECRET": "client-secret",
    "HUBSPOT_ACCESS_TOKEN": "pat-na1-token",
    "CHILIPIPER_API_KEY": "cp-key",
    "CHILIPIPER_SCHEDULING_LINK": "pandadoc-demo",
    "RESILIENCE_STORE_URL": "memory://",
}
# Set one of the two, not both: the router is tried without the link.
EXCLUSIVE = {"CHILIPIPER_CONCIERGE_ROUTER": "CHILIPIPER_SCHEDULING_LINK"}

HOSTILE = [
    "",
    " ",
    "\t",
    "\x00",
    "a\nb",
    "0",
    "-1",
    "99999999999999999999",
    "1e309",
    "nan",
    "inf",
    "true",
    "x" * 5000,
    "http://[::1",
    "http://[::1]:8080/v1",
    "https://exa mple.com",
    "http://host:99999",
    "http://host:abc",
    "http://host:0",
    "http://host:",
    "http://user:pass@host",
    "http://host/?q=1#f",
    "http://" + "a" * 5000,
    "http://" + "a" * 64 + ".com",
    "http://ü.example.com",
    "http://%41.com",
    "http://a..b",
    "ws://localhost:7880",
    "redis://localhost:abc/0",
    "redis://:pa/ss@localhost:6379/0",
    "redis://:pa#ss@localhost:6379/0",
    "redis://:pa%2Fss@localhost:6379/0",
    "redis://localhost:6379/0?foo=bar",
    "rediss://localhost/0?ssl_cert_reqs=bogus",
    "redis://localhost/abc",
    "redis://[::1]:6379/1",
    "sqlite:///",
    "sqlite:///tmp/",
    "sqlite:///" + "d" * 600,
    "sqlite:///tmp/a\x00b.db",
    "memory://",
    "Europe/Paris",
    "America",
    "../../etc/passwd",
    "/etc",
    "/tmp",
    "pandadoc-demo",
    "3f2a9c1e-0000-4000-8000-00000000000g",
]
_SCHEMES = st.sampled_from(["http", "https", "ws", "wss", "redis", "rediss", "sqlite", "memory"])
_PARTS = st.text(alphabet=st.sampled_from(list(":/@#?[]%. -_aZ09ü\x00")), max_size=12)
URLISH = st.builds(lambda s, a, b: f"{s}://{a}{b}", _SCHEMES, _PARTS, _PARTS)
VALUES = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=40), URLISH)


class _Reached(Exception):
    """The request got as far as opening a socket: everything before it worked."""


class _NoConnect(aiohttp.BaseConnector):
    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
        raise _Reached(str(req.url))


def _env(variable: str, value: str, full: bool) -> dict[str, str]:
    env = dict(FULL) if full else {}
    env.pop(EXCLUSIVE.get(variable, ""), None)
    env[variable] = value
    return env


async def _requests(s: Settings, livekit: str) -> None:
    """Each vendor client is built; its base URL takes a path and aiohttp sends to it; so
    does LiveKit's worker with ``LIVEKIT_URL`` (which LiveKit reads itself)."""
    async with aiohttp.ClientSession(connector=_NoConnect()) as session:
        services = TrialistServices.from_settings(s, session=session)
        bases = {
            "amplitude": s.amplitude.base_url,
            "salesforce": s.salesforce.instance_url,
            "hubspot": s.hubspot.base_url,
            "chilipiper": s.chilipiper.base_url,
        }
        for name, base in bases.items():
            if getattr(services, name) is None and not base:
                continue
            http = ServiceHttp(name, base, session=session)
            with pytest.raises(_Reached):
                await http.request("GET", "/probe", headers={"Authorization": "Bearer t"})
        if s.chilipiper.booking_url:
            with pytest.raises(_Reached):
                await session.get(s.chilipiper.booking_url)
        if livekit:  # what LiveKit's worker does with LIVEKIT_URL (worker.py)
            parse = urlparse(livekit)
            scheme = parse.scheme.replace("http", "ws")
            url = urljoin(f"{scheme}://{parse.netloc}{parse.path}".rstrip("/") + "/", "agent")
            with pytest.raises(_Reached):
                await session.ws_connect(url, headers={"Authorization": "Bearer jwt"})


@functools.cache
def _shared_http_client() -> httpx.AsyncClient:
    return httpx.AsyncClient()  # its TLS context takes ~70 ms to build: once, not per example


def _openai_request(s: Settings) -> None:
    """The OpenAI SDK forms its chat request (URL and headers) for these settings."""
    from openai._models import FinalRequestOptions

    m = s.models
    client = TrialistOpenAI(  # as chat_client() builds it, on one shared HTTP client
        api_key=m.openai_api_key or "sk-x",
        base_url=m.openai_base_url or None,
        max_retries=0,
        http_client=_shared_http_client(),
    )
    request = client._build_request(
        FinalRequestOptions.construct(
            method="post", url="/chat/completions", json_data={"model": m.llm_model}
        )
    )
    assert request.url.host
    assert request.url.port is None or 1 <= request.url.port <= 65535


def _store(s: Settings) -> None:
    store = open_store(s.fleet.store_url)
    redis = getattr(store, "_redis", None)
    if redis is not None:
        redis.connection_pool.make_connection()


def _usable(s: Settings, env: Mapping[str, str]) -> None:
    ZoneInfo(s.agent.timezone)
    asyncio.run(_requests(s, env.get("LIVEKIT_URL", "").strip()))
    _openai_request(s)
    _store(s)


@settings(
    max_examples=int(os.environ.get("SETTINGS_PROPERTY_EXAMPLES", "400")),
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(variable=st.sampled_from(VARIABLES), value=VALUES, full=st.booleans())
@example(variable="TRIALIST_TIMEZONE", value="x" * 5000, full=False)  # ZoneInfo: OSError
def test_any_value_is_refused_in_one_line_or_works(variable: str, value: str, full: bool) -> None:
    env = _env(variable, value, full)
    try:
        s = settings_from_env(env)
    except SettingsError as exc:
        message = str(exc)
        assert "\n" not in message
        assert any(name in message for name in VARIABLES), message
        return  # that it never echoes the value: tests/test_settings_urls.py
    _usable(s, env)


def _read_by_loader(env: Mapping[str, str]) -> set[str]:
    seen: set[str] = set()

    class Recording(dict[str, str]):
        def get(self, key: str, default: Any = None) -> Any:
            seen.add(key)
            return super().get(key, default)

        def __getitem__(self, key: str) -> str:
            seen.add(key)
            return super().__getitem__(key)

    settings_from_env(Recording(env))
    return seen


def test_env_example_and_the_loader_list_the_same_variables() -> None:
    read = _read_by_loader({}) | _read_by_loader(FULL)
    assert sorted(read - set(VARIABLES)) == [], "read by the loader, missing in .env.example"
    assert sorted(set(VARIABLES) - read) == [], "in .env.example, never read by the loader"
    assert len(VARIABLES) == len(set(VARIABLES)), "a variable listed twice in .env.example"
