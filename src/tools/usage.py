"""Product usage from Amplitude."""

from __future__ import annotations

from collections.abc import Awaitable

from livekit.agents.llm import ToolError

from src.errors import InvalidRequest, NotFound
from src.phrases import USAGE_FALLBACK, USAGE_NOT_FOUND
from src.registry import READ
from src.services.amplitude import TrialUsage
from src.state import TrialistData
from src.tools.policy import Refusal, readable_address
from src.tools.runtime import ToolRuntime

__all__ = ["trial_usage"]


async def trial_usage(rt: ToolRuntime, data: TrialistData, email: str) -> str:
    """The caller's trial usage as one spoken sentence; saves it in ``data``. Only for
    the caller's own, verified identity (:mod:`src.tools.policy`)."""
    access = await readable_address(rt, data, email, "get_trial_usage")
    if isinstance(access, Refusal):
        return access.sentence
    address = access.email
    client = rt.services.amplitude
    if client is None:
        raise ToolError(USAGE_FALLBACK)
    # A cached answer needs no request, so it is given even while the circuit is open.
    result = await client.cached_usage(address)
    if result is None:
        attempts = 0

        def lookup() -> Awaitable[TrialUsage]:
            nonlocal attempts
            attempts += 1  # a retry looks in the cache again: another job may have filled it
            return client.get_trial_usage(address, cached=attempts > 1)

        try:
            result = await rt.protected(
                "amplitude",
                lookup,
                USAGE_FALLBACK,
                kind=READ,
            )
        except (NotFound, InvalidRequest):
            raise ToolError(USAGE_NOT_FOUND) from None
    data.email = address
    data.usage = result
    return result.spoken_summary()
