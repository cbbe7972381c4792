"""Configuration, read from the environment in one place.

``load_settings()`` reads ``.env.local`` then ``.env`` (python-dotenv; real environment
variables win), validates every value and returns frozen dataclasses. A bad value raises
:class:`SettingsError` naming the variable and what is expected, never echoing the value
(it may be a secret). Every secret is registered with :mod:`src.redaction` so it cannot
reach a log line. Each vendor's section is declared with the vendor
(:mod:`src.registry.vendors`) and read under its prefix: ``settings.<vendor>``. See
``.env.example`` for the full, commented list.
"""

from .env import load_settings, settings_from_env
from .model import (
    DEFAULT_RESILIENCE,
    AgentSettings,
    FleetSettings,
    ModelSettings,
    ResilienceSettings,
    ResponseLimits,
    Settings,
    SettingsError,
)

__all__ = [
    "DEFAULT_RESILIENCE",
    "AgentSettings",
    "FleetSettings",
    "ModelSettings",
    "ResilienceSettings",
    "ResponseLimits",
    "Settings",
    "SettingsError",
    "load_settings",
    "settings_from_env",
]
