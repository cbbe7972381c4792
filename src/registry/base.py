"""What a vendor declaration is: :class:`Vendor` (name, env prefix, settings section,
client factory, sandbox stand-in, response cap, capability) and :class:`Registry`, the
vendors in order. The declarations themselves are in :mod:`.vendors`."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..settings.env import _float, _int, _secret, _str, _url

__all__ = [
    "MIB",
    "Capability",
    "ClientContext",
    "Registry",
    "Vendor",
    "VendorEnv",
    "lazy",
    "lazy_value",
]

MIB = 1024 * 1024


@dataclass(frozen=True)
class Capability:
    """What the model is told is unavailable while every configured vendor behind it
    has an open circuit: ``note`` is the system note it gets."""

    name: str
    note: str


@dataclass(frozen=True)
class VendorEnv:
    """The environment seen through a vendor's prefix: ``env.secret("API_KEY")`` reads
    ``<PREFIX>_API_KEY`` (errors name the full variable, never the value)."""

    env: Mapping[str, str]
    prefix: str

    def key(self, suffix: str) -> str:
        return f"{self.prefix}_{suffix}"

    def text(self, suffix: str, default: str = "") -> str:
        return _str(self.env, self.key(suffix), default)

    def secret(self, suffix: str) -> str:
        return _secret(self.env, self.key(suffix))

    def url(
        self,
        suffix: str,
        default: str = "",
        *,
        schemes: tuple[str, ...] = ("http", "https"),
        base: bool = True,
    ) -> str:
        """A URL parsed as its client will (:mod:`src.settings.urls`); ``base``: a
        vendor base URL (no query, fragment or credentials)."""
        return _url(self.env, self.key(suffix), default, schemes=schemes, base=base)

    def whole(self, suffix: str, default: int) -> int:
        return _int(self.env, self.key(suffix), default)

    def seconds(self, suffix: str, default: float) -> float:
        return _float(self.env, self.key(suffix), default)


@dataclass(frozen=True)
class ClientContext:
    """What a client factory gets besides its settings section.

    Attributes:
        options: the HTTP options (timeouts, the vendor's response cap).
        session: an explicit aiohttp session (``None``: the job's or the client's own).
        resilience: the resilience settings (:class:`~src.settings.ResilienceSettings`).
        quota_store / usage_cache: fleet-wide quota and cache (``None``: in memory).
    """

    options: Any
    session: Any = None
    resilience: Any = None
    quota_store: Any = None
    usage_cache: Any = None


def lazy(path: str) -> Callable[..., Any]:
    """``"package.module:attr"`` as a callable that imports on first call."""
    module, _, attr = path.partition(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    return call


def lazy_value(path: str) -> Callable[[], Any]:
    """``"package.module:attr"`` as a zero-argument callable returning the attribute."""
    module, _, attr = path.partition(":")
    return lambda: getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Vendor:
    """One vendor.

    Attributes:
        name: registry name: the breaker, bulkhead, retry budget, metric label, the
            attribute of the clients (``services.<name>``), settings and sandbox.
        env_prefix: its variables start with ``<env_prefix>_``.
        section: parses its settings section from the env; the section has a
            ``configured`` property (a vendor without configuration gets no client and
            its tools answer with a spoken fallback).
        client: ``(section, ClientContext) -> client`` for a configured section; the
            client has ``aclose()``.
        stand_in: builds its sandbox server (a :class:`~src.sandbox.SandboxServer`).
        sandbox_env: the env lines (credentials, links) that open its stand-in.
        max_response_bytes: default cap on one response body
            (``<PREFIX>_MAX_RESPONSE_BYTES`` overrides it).
        capability: what the model is told is down while its circuit is open.
        url_key: the variable of its address (default ``<PREFIX>_BASE_URL``).
        client_module: the module of its client, which ``client`` imports on first use;
            the worker's forkserver preloads it (:func:`src.heap.preload_modules`), so
            jobs share it instead of each importing its own copy.

    Its metrics carry ``name`` as their ``service`` label (breaker transitions, open
    circuits, fallbacks), as do its log lines.
    """

    name: str
    env_prefix: str
    section: Callable[[VendorEnv], Any]
    client: Callable[[Any, ClientContext], Any]
    stand_in: Callable[[], Any]
    sandbox_env: Callable[[], Mapping[str, str]] = field(default=lambda: {})
    max_response_bytes: int = MIB
    capability: Capability | None = None
    url_key: str = ""
    client_module: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or not self.name.islower():
            raise ValueError(f"vendor name {self.name!r} must be a lower-case identifier")
        if not self.url_key:
            object.__setattr__(self, "url_key", f"{self.env_prefix}_BASE_URL")

    def settings_from_env(self, env: Mapping[str, str]) -> Any:
        return self.section(VendorEnv(env, self.env_prefix))

    def default_settings(self) -> Any:
        return self.settings_from_env({})

    @property
    def response_cap_key(self) -> str:
        return f"{self.env_prefix}_MAX_RESPONSE_BYTES"


class Registry:
    """The vendors in order (the sandbox's ports follow it). A test may add a vendor
    with :meth:`extended`; nothing else changes it."""

    def __init__(self, *vendors: Vendor) -> None:
        self._vendors: dict[str, Vendor] = {}
        self._behind: dict[str, tuple[str, ...]] = {}  # asked before each model request
        for vendor in vendors:
            self.register(vendor)

    def register(self, vendor: Vendor) -> None:
        if vendor.name in self._vendors:
            raise ValueError(f"vendor {vendor.name!r} is already registered")
        self._vendors[vendor.name] = vendor
        self._behind.clear()

    def unregister(self, name: str) -> None:
        self._vendors.pop(name, None)
        self._behind.clear()

    @contextlib.contextmanager
    def extended(self, *vendors: Vendor) -> Iterator[Registry]:
        """The registry with ``vendors`` added for the duration of the block."""
        for vendor in vendors:
            self.register(vendor)
        try:
            yield self
        finally:
            for vendor in vendors:
                self.unregister(vendor.name)

    def __iter__(self) -> Iterator[Vendor]:
        return iter(tuple(self._vendors.values()))

    def __len__(self) -> int:
        return len(self._vendors)

    def __contains__(self, name: object) -> bool:
        return name in self._vendors

    def __getitem__(self, name: str) -> Vendor:
        return self._vendors[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._vendors)

    def capabilities(self) -> tuple[Capability, ...]:
        """The distinct capabilities, in registry order of their first vendor."""
        seen: dict[str, Capability] = {}
        for vendor in self:
            if vendor.capability is not None:
                seen.setdefault(vendor.capability.name, vendor.capability)
        return tuple(seen.values())

    def behind(self, capability: str) -> tuple[str, ...]:
        """The vendors behind ``capability``."""
        known = self._behind.get(capability)
        if known is None:
            known = self._behind[capability] = tuple(
                v.name for v in self if v.capability is not None and v.capability.name == capability
            )
        return known
