"""The four vendor clients of one conversation, built from settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import aiohttp

from ..redaction import get_logger
from ..settings import Settings
from .amplitude import AmplitudeClient
from .chilipiper import ChiliPiperClient, SchedulingLink
from .http import HttpOptions
from .hubspot import HubSpotClient
from .quota import (
    MemoryQuotaStore,
    MemoryUsageCache,
    QuotaStore,
    UsageCache,
    VendorLimiter,
)
from .salesforce import SalesforceClient

__all__ = ["SERVICE_NAMES", "TrialistServices"]

logger = get_logger("pandadoc.agent")

SERVICE_NAMES = ("amplitude", "salesforce", "chilipiper", "hubspot")


@dataclass
class TrialistServices:
    """The four vendor clients; a service without configuration is ``None`` and its
    tools answer with a spoken fallback instead of failing."""

    amplitude: AmplitudeClient | None = None
    salesforce: SalesforceClient | None = None
    hubspot: HubSpotClient | None = None
    chilipiper: ChiliPiperClient | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        session: aiohttp.ClientSession | None = None,
        quota_store: QuotaStore | None = None,
        usage_cache: UsageCache | None = None,
    ) -> TrialistServices:
        """The clients for ``settings``. ``quota_store`` / ``usage_cache`` back
        Amplitude's client-side quota and usage cache; default: fresh in-memory ones,
        which hold for this conversation only (LiveKit runs each job in its own process).
        The entry point passes :class:`src.store.FleetQuotaStore` /
        :class:`src.store.FleetUsageCache`, shared across conversations and workers."""
        r, limits = settings.resilience, settings.response_limits
        base = HttpOptions(timeout=r.service_timeout, connect_timeout=min(1.0, r.service_timeout))

        def capped(max_body_bytes: int) -> HttpOptions:
            return dataclasses.replace(base, max_body_bytes=max_body_bytes)

        a, s, h, c = (
            settings.amplitude,
            settings.salesforce,
            settings.hubspot,
            settings.chilipiper,
        )
        services = cls(
            amplitude=AmplitudeClient(
                a.api_key,
                a.secret_key,
                a.base_url,
                options=capped(limits.amplitude),
                session=session,
                limiter=VendorLimiter(
                    "amplitude",
                    quota_store or MemoryQuotaStore(),
                    hourly_budget=a.hourly_query_budget,
                    max_concurrent=a.max_concurrent,
                    lease_s=2 * r.tool_deadline,
                ),
                cache=usage_cache or MemoryUsageCache(),
                cache_ttl=a.usage_cache_ttl,
            )
            if a.configured
            else None,
            salesforce=SalesforceClient(
                s.instance_url,
                s.client_id,
                s.client_secret,
                options=capped(limits.salesforce),
                session=session,
                task_owner_id=s.task_owner_id,
                intake_owner_id=s.intake_owner_id,
            )
            if s.configured
            else None,
            hubspot=HubSpotClient(
                h.access_token,
                h.base_url,
                options=capped(limits.hubspot),
                session=session,
                intake_record_id=h.intake_record_id,
            )
            if h.configured
            else None,
            chilipiper=ChiliPiperClient(
                c.api_key,
                SchedulingLink.concierge(c.concierge_router)
                if c.concierge_router
                else SchedulingLink.parse(c.scheduling_link),
                c.base_url,
                booking_url=c.booking_url,
                options=capped(limits.chilipiper),
                session=session,
            )
            if c.configured
            else None,
        )
        missing = [name for name in SERVICE_NAMES if getattr(services, name) is None]
        if missing:
            logger.warning("Not configured, tools will use spoken fallbacks: %s", missing)
        return services

    async def aclose(self) -> None:
        for client in (self.amplitude, self.salesforce, self.hubspot, self.chilipiper):
            if client is not None:
                await client.aclose()
