"""The vendor clients of one conversation, built from settings: one per registered vendor
(:data:`src.registry.VENDORS`), ``None`` for a vendor without configuration."""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp

from ..redaction import get_logger
from ..registry import VENDORS, ClientContext
from ..registry.vendors import VendorClients
from ..settings import Settings
from .http import HttpOptions
from .quota import QuotaStore, UsageCache

__all__ = ["TrialistServices"]

logger = get_logger("pandadoc.agent")


def __getattr__(name: str) -> Any:
    if name == "SERVICE_NAMES":  # kept for older callers: the registry's names, as of now
        return VENDORS.names()
    raise AttributeError(name)


class TrialistServices(VendorClients):
    """The vendor clients, by registry name (``services.<vendor>``); a vendor without
    configuration is ``None`` and its tools answer with a spoken fallback instead of
    failing. ``TrialistServices(hubspot=client)`` gives a set with only that client."""

    def __init__(self, **clients: Any) -> None:
        unknown = set(clients) - set(VENDORS.names())
        if unknown:
            raise TypeError(f"not registered vendors: {sorted(unknown)}")
        self._clients: dict[str, Any] = dict(clients)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._clients:
            return self._clients[name]
        if name in VENDORS:
            return None
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        elif name in VENDORS:
            self._clients[name] = value
        else:
            raise AttributeError(name)

    def configured(self) -> list[str]:
        """The registry names of the vendors that have a client, in registry order."""
        return [name for name in VENDORS.names() if self._clients.get(name) is not None]

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        session: aiohttp.ClientSession | None = None,
        quota_store: QuotaStore | None = None,
        usage_cache: UsageCache | None = None,
    ) -> TrialistServices:
        """The clients for ``settings``. ``quota_store`` / ``usage_cache`` back a
        vendor's client-side quota and usage cache; default: fresh in-memory ones,
        which hold for this conversation only (LiveKit runs each job in its own process).
        The entry point passes :class:`src.store.FleetQuotaStore` /
        :class:`src.store.FleetUsageCache`, shared across conversations and workers."""
        r, limits = settings.resilience, settings.response_limits
        base = HttpOptions(timeout=r.service_timeout, connect_timeout=min(1.0, r.service_timeout))
        clients: dict[str, Any] = {}
        for vendor in VENDORS:
            section = settings.vendors.get(vendor.name)
            if section is None or not section.configured:
                continue
            cap = limits.caps.get(vendor.name, vendor.max_response_bytes)
            context = ClientContext(
                options=dataclasses.replace(base, max_body_bytes=cap),
                session=session,
                resilience=r,
                quota_store=quota_store,
                usage_cache=usage_cache,
            )
            clients[vendor.name] = vendor.client(section, context)
        services = cls(**clients)
        missing = [name for name in VENDORS.names() if name not in clients]
        if missing:
            logger.warning("Not configured, tools will use spoken fallbacks: %s", missing)
        return services

    async def aclose(self) -> None:
        for client in list(self._clients.values()):
            if client is not None:
                await client.aclose()
