"""One declaration per vendor: everything the agent, the settings, the sandbox and the
console know about a vendor is here, and everything else iterates over :data:`VENDORS`.

Per vendor: its name (the breaker, bulkhead, retry budget, metric and log label), its
settings section and env prefix (``AMPLITUDE_API_KEY`` ...), its client factory, its sandbox
stand-in (ports follow registry order), its response cap, and the capability the model
is told is down while its circuit is open. Resilience4j configures every aspect of
protection per named backend in one place; this is that place.

Heavy things (clients, stand-ins) are named by factories that import on call, so the
registry is cheap to import anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..phrases import ACCOUNT_DOWN_NOTE, BOOKING_DOWN_NOTE, USAGE_DOWN_NOTE
from ..services.chilipiper_model import SchedulingLink
from ..settings.model import SettingsError
from ..validation import is_valid_salesforce_id
from .base import MIB, Capability, ClientContext, Registry, Vendor, VendorEnv, lazy, lazy_value

if TYPE_CHECKING:
    from ..services.amplitude import AmplitudeClient
    from ..services.chilipiper import ChiliPiperClient
    from ..services.hubspot import HubSpotClient
    from ..services.salesforce import SalesforceClient

__all__ = [
    "VENDORS",
    "AmplitudeSettings",
    "ChiliPiperSettings",
    "HubSpotSettings",
    "SalesforceSettings",
    "VendorClients",
]

# -- the four vendors -------------------------------------------------------------------------


class VendorClients:
    """The typed view of ``services.<vendor>`` (:class:`~src.services.wiring.TrialistServices`)
    for these vendors; a vendor added without a line here is reached the same way, untyped."""

    amplitude: AmplitudeClient | None
    salesforce: SalesforceClient | None
    hubspot: HubSpotClient | None
    chilipiper: ChiliPiperClient | None


USAGE = Capability("usage", USAGE_DOWN_NOTE)
ACCOUNT = Capability("account", ACCOUNT_DOWN_NOTE)
BOOKING = Capability("booking", BOOKING_DOWN_NOTE)


@dataclass(frozen=True)
class AmplitudeSettings:
    """Amplitude credentials and address, and our client-side share of its quota.

    Attributes:
        hourly_query_budget: User Search + User Activity queries per sliding hour
            (``AMPLITUDE_HOURLY_QUERY_BUDGET``, 360: Amplitude's documented per-project
            limit; a usage lookup costs 2). 0 turns the budget off.
        max_concurrent: requests in flight at once (``AMPLITUDE_MAX_CONCURRENT``, 5, the
            documented limit across all Dashboard REST endpoints of a project:
            ``reference/apis/vendor-facts.md``, as
            ``src.services.amplitude.MAX_CONCURRENT_REQUESTS``), fleet-wide. 0 turns the cap off.
        usage_cache_ttl: seconds a person's usage is reused without a request
            (``AMPLITUDE_USAGE_CACHE_TTL``, 600). 0 turns the cache off.
    """

    api_key: str = ""
    secret_key: str = ""
    base_url: str = "https://amplitude.com"
    hourly_query_budget: int = 360
    max_concurrent: int = 5
    usage_cache_ttl: float = 600.0

    def __post_init__(self) -> None:
        if self.hourly_query_budget < 0:
            raise SettingsError("AMPLITUDE_HOURLY_QUERY_BUDGET must be >= 0 (0 turns it off)")
        if self.max_concurrent < 0:
            raise SettingsError("AMPLITUDE_MAX_CONCURRENT must be >= 0 (0 turns it off)")
        if self.usage_cache_ttl < 0:
            raise SettingsError("AMPLITUDE_USAGE_CACHE_TTL must be >= 0 seconds (0 turns it off)")

    @property
    def configured(self) -> bool:
        return bool(self.api_key and self.secret_key)

    @classmethod
    def from_env(cls, env: VendorEnv) -> AmplitudeSettings:
        d = cls()
        return cls(
            api_key=env.secret("API_KEY"),
            secret_key=env.secret("SECRET_KEY"),
            base_url=env.url("BASE_URL", d.base_url),
            hourly_query_budget=env.whole("HOURLY_QUERY_BUDGET", d.hourly_query_budget),
            max_concurrent=env.whole("MAX_CONCURRENT", d.max_concurrent),
            usage_cache_ttl=env.seconds("USAGE_CACHE_TTL", d.usage_cache_ttl),
        )


def _amplitude_client(s: AmplitudeSettings, ctx: ClientContext) -> Any:
    from ..services.amplitude import AmplitudeClient
    from ..services.quota import MemoryQuotaStore, MemoryUsageCache, VendorLimiter

    return AmplitudeClient(
        s.api_key,
        s.secret_key,
        s.base_url,
        options=ctx.options,
        session=ctx.session,
        limiter=VendorLimiter(
            "amplitude",
            ctx.quota_store or MemoryQuotaStore(),
            hourly_budget=s.hourly_query_budget,
            max_concurrent=s.max_concurrent,
            lease_s=2 * ctx.resilience.tool_deadline,
        ),
        cache=ctx.usage_cache or MemoryUsageCache(),
        cache_ttl=s.usage_cache_ttl,
    )


@dataclass(frozen=True)
class SalesforceSettings:
    """Salesforce org and connected app. ``task_owner_id``: who owns a Task when its
    record has no user owner (``SALESFORCE_TASK_OWNER_ID``, a 15/18-character id).
    ``intake_owner_id``: who owns the *unverified intake* Task (no ``WhoId``) that a
    non-verified caller's notes and demo hand-offs become (``SALESFORCE_INTAKE_OWNER_ID``;
    empty: ``task_owner_id``, else the integration user)."""

    instance_url: str = ""
    client_id: str = ""
    client_secret: str = ""
    task_owner_id: str = ""
    intake_owner_id: str = ""

    def __post_init__(self) -> None:
        for name, value in (
            ("SALESFORCE_TASK_OWNER_ID", self.task_owner_id),
            ("SALESFORCE_INTAKE_OWNER_ID", self.intake_owner_id),
        ):
            if value and not is_valid_salesforce_id(value):
                raise SettingsError(
                    f"{name} must be a 15- or 18-character Salesforce id "
                    "(an 18-character id must end with its checksum)"
                )

    @property
    def configured(self) -> bool:
        return bool(self.instance_url and self.client_id and self.client_secret)

    @property
    def base_url(self) -> str:
        return self.instance_url

    @classmethod
    def from_env(cls, env: VendorEnv) -> SalesforceSettings:
        return cls(
            instance_url=env.url("INSTANCE_URL"),
            client_id=env.secret("CLIENT_ID"),
            client_secret=env.secret("CLIENT_SECRET"),
            task_owner_id=env.text("TASK_OWNER_ID"),
            intake_owner_id=env.text("INTAKE_OWNER_ID"),
        )


def _salesforce_client(s: SalesforceSettings, ctx: ClientContext) -> Any:
    from ..services.salesforce import SalesforceClient

    return SalesforceClient(
        s.instance_url,
        s.client_id,
        s.client_secret,
        options=ctx.options,
        session=ctx.session,
        task_owner_id=s.task_owner_id,
        intake_owner_id=s.intake_owner_id,
    )


@dataclass(frozen=True)
class HubSpotSettings:
    """HubSpot private app. ``intake_record_id``: the contact (a placeholder "unverified
    intake" contact) that a non-verified caller's notes are associated with
    (``HUBSPOT_INTAKE_RECORD_ID``, digits; empty: the note is associated with nothing)."""

    access_token: str = ""
    base_url: str = "https://api.hubapi.com"
    intake_record_id: str = ""

    def __post_init__(self) -> None:
        if self.intake_record_id and not (
            self.intake_record_id.isascii() and self.intake_record_id.isdigit()
        ):
            raise SettingsError("HUBSPOT_INTAKE_RECORD_ID must be a HubSpot record id (digits)")

    @property
    def configured(self) -> bool:
        return bool(self.access_token)

    @classmethod
    def from_env(cls, env: VendorEnv) -> HubSpotSettings:
        return cls(
            access_token=env.secret("ACCESS_TOKEN"),
            base_url=env.url("BASE_URL", cls.base_url),
            intake_record_id=env.text("INTAKE_RECORD_ID"),
        )


def _hubspot_client(s: HubSpotSettings, ctx: ClientContext) -> Any:
    from ..services.hubspot import HubSpotClient

    return HubSpotClient(
        s.access_token,
        s.base_url,
        options=ctx.options,
        session=ctx.session,
        intake_record_id=s.intake_record_id,
    )


@dataclass(frozen=True)
class ChiliPiperSettings:
    """ChiliPiper demo booking through a scheduling link (``init-simple`` then
    ``schedule-simple``).

    Attributes:
        api_key: ``CHILIPIPER_API_KEY``; its token needs the scheduling-link read and
            schedule permissions, plus ``meeting.read`` (reconciling an unknown outcome).
        scheduling_link: ``CHILIPIPER_SCHEDULING_LINK``, the link's slug or its id (UUID).
        concierge_router: ``CHILIPIPER_CONCIERGE_ROUTER``, a Concierge router's slug, used
            instead of a scheduling link (its token needs the Concierge route and schedule
            permissions, plus ``meeting.read``).
        booking_url: ``CHILIPIPER_BOOKING_URL``, the link's public booking page, handed to
            sales when booking by voice is not possible (optional).
        concierge_fields: ``CHILIPIPER_CONCIERGE_FIELDS``, the Concierge router's form
            field for each of our facts, ``(fact, field)`` pairs; empty: the default
            (``email=PersonEmail,first_name=PersonFirstName,last_name=PersonLastName,
            company=CompanyName``).
    """

    api_key: str = ""
    base_url: str = "https://fire.chilipiper.com/api/fire-edge"
    scheduling_link: str = ""
    booking_url: str = ""
    concierge_router: str = ""
    concierge_fields: tuple[tuple[str, str], ...] = ()

    @property
    def configured(self) -> bool:
        return bool(self.api_key and (self.scheduling_link or self.concierge_router))

    @classmethod
    def from_env(cls, env: VendorEnv) -> ChiliPiperSettings:
        link, router = _scheduling_link(env)
        return cls(
            api_key=env.secret("API_KEY"),
            base_url=env.url("BASE_URL", cls.base_url),
            scheduling_link=link,
            concierge_router=router,
            booking_url=env.url("BOOKING_URL", schemes=("https", "http"), base=False),
            concierge_fields=_concierge_fields(env),
        )


def _concierge_fields(env: VendorEnv) -> tuple[tuple[str, str], ...]:
    """``<PREFIX>_CONCIERGE_FIELDS`` (see :func:`~src.services.chilipiper_wire.
    concierge_fields`); a bad one stops the worker at start with one line naming the
    variable and the entry."""
    from ..services.chilipiper_wire import concierge_fields

    try:
        return concierge_fields(env.text("CONCIERGE_FIELDS"))
    except ValueError as exc:
        raise SettingsError(f"{env.key('CONCIERGE_FIELDS')}: {exc}") from None


def _scheduling_link(env: VendorEnv) -> tuple[str, str]:
    """``(<PREFIX>_SCHEDULING_LINK, <PREFIX>_CONCIERGE_ROUTER)``, exactly one set when
    the vendor has a key. A link is a slug, or an id that must be a well-formed UUID; a
    router is a slug. A bad one stops the worker at start (the message names the
    variable, never the value)."""
    name, router_name = env.key("SCHEDULING_LINK"), env.key("CONCIERGE_ROUTER")
    value, router = env.text("SCHEDULING_LINK"), env.text("CONCIERGE_ROUTER")
    if value and router:
        raise SettingsError(f"set {name} or {router_name}, not both")
    if not value and not router:
        if env.text("API_KEY"):
            raise SettingsError(f"{name} (or {router_name}) is required with {env.key('API_KEY')}")
        return "", ""
    try:
        if router:
            return "", SchedulingLink.concierge(router).router or ""
        link = SchedulingLink.parse(value)
    except ValueError as exc:
        raise SettingsError(f"{router_name if router else name}: {exc}") from None
    return link.id or link.slug or "", ""


def _chilipiper_client(s: ChiliPiperSettings, ctx: ClientContext) -> Any:
    from ..services.chilipiper import ChiliPiperClient
    from ..services.chilipiper_wire import DEFAULT_CONCIERGE_FIELDS

    return ChiliPiperClient(
        s.api_key,
        SchedulingLink.concierge(s.concierge_router)
        if s.concierge_router
        else SchedulingLink.parse(s.scheduling_link),
        s.base_url,
        booking_url=s.booking_url,
        options=ctx.options,
        session=ctx.session,
        concierge_fields=s.concierge_fields or DEFAULT_CONCIERGE_FIELDS,
    )


def _credentials(*keys: str) -> Callable[[], Mapping[str, str]]:
    def env() -> Mapping[str, str]:
        from ..sandbox.data import SANDBOX_CREDENTIALS

        return {key: SANDBOX_CREDENTIALS[key] for key in keys}

    return env


VENDORS = Registry(
    Vendor(
        "amplitude",
        env_prefix="AMPLITUDE",
        section=AmplitudeSettings.from_env,
        client=_amplitude_client,
        client_module="src.services.amplitude",
        stand_in=lazy("src.sandbox.amplitude:AmplitudeServer"),
        sandbox_env=_credentials("AMPLITUDE_API_KEY", "AMPLITUDE_SECRET_KEY"),
        # The activity page (up to 1000 events, well under 1 MB) is the only large answer
        # we ask for: 3 MiB decodes in about 10 ms, validated in batches that yield.
        max_response_bytes=3 * MIB,
        capability=USAGE,
    ),
    Vendor(
        "salesforce",
        env_prefix="SALESFORCE",
        section=SalesforceSettings.from_env,
        client=_salesforce_client,
        client_module="src.services.salesforce",
        stand_in=lazy("src.sandbox.salesforce:SalesforceServer"),
        sandbox_env=_credentials("SALESFORCE_CLIENT_ID", "SALESFORCE_CLIENT_SECRET"),
        capability=ACCOUNT,
        url_key="SALESFORCE_INSTANCE_URL",
    ),
    Vendor(
        "hubspot",
        env_prefix="HUBSPOT",
        section=HubSpotSettings.from_env,
        client=_hubspot_client,
        client_module="src.services.hubspot",
        stand_in=lazy("src.sandbox.hubspot:HubSpotServer"),
        sandbox_env=_credentials("HUBSPOT_ACCESS_TOKEN"),
        capability=ACCOUNT,
    ),
    Vendor(
        "chilipiper",
        env_prefix="CHILIPIPER",
        section=ChiliPiperSettings.from_env,
        client=_chilipiper_client,
        client_module="src.services.chilipiper",
        stand_in=lazy("src.sandbox.chilipiper:ChiliPiperServer"),
        sandbox_env=lazy_value("src.sandbox.chilipiper:SANDBOX_ENV"),
        capability=BOOKING,
    ),
)
"""The vendors, in port order: with sandbox port base ``N`` the i-th listens on ``N + i``
(the model's stand-in keeps ``N + 4``; a fifth vendor takes ``N + 5``)."""
