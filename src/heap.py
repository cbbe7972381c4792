"""Short garbage-collector pauses in a job process (issue #10, load).

CPython's full collection pass walks every tracked object that is not frozen. LiveKit's
forkserver freezes what it preloads (``livekit.agents.ipc._preload_freeze``: collect, then
``gc.freeze()``), so a job process starts with the imports out of the collector's way. The
job then builds what lives as long as the call: the session, plugins, HTTP clients, the
agent with its breakers and stores, and, once the greeting has played, the open model
streams and the greeting itself. Left in the collected generations, all of it is walked
again on every full pass, during the call, on the event loop. Measured in the load drill
(fifty conversations in one process): a full pass stalled the loop for over 200 ms with
nothing frozen, about 40 ms with the imports frozen, and about 15 ms once each call's
state is frozen as below.

:func:`freeze_call_state` is what the worker's entrypoint calls twice: once
``session.start`` has returned, and once the greeting has been spoken. It does not
collect first (that full pass is the pause it avoids), so a garbage cycle that exists at
that moment is kept until the job process exits; LiveKit runs each job in its own
process, so that is one call's worth, once. :func:`freeze_preloaded` is the forkserver's
step, for a process that was not started by one (the drill).
"""

from __future__ import annotations

import gc
import sys

__all__ = ["FIRST_CALL_IMPORTS", "freeze_call_state", "freeze_preloaded", "preload_modules"]


def freeze_call_state() -> int:
    """Freeze everything tracked so far; returns how many objects are frozen in all."""
    gc.freeze()
    return gc.get_freeze_count()


def freeze_preloaded() -> int:
    """What LiveKit's forkserver does after its imports: collect, then freeze."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


# Imported by every call on first use, not by the worker's main file (besides the vendor
# clients, which the registry names): python-dotenv (the job reads the main file again,
# settings included), and what the model client and LiveKit load on a session's first
# request. Found by listing ``sys.modules`` of a job after ten turns against the
# forkserver's (``bench/memory_fork.py``); ``tests/test_bench_smoke.py`` checks that a
# conversation imports no module of ours late.
FIRST_CALL_IMPORTS = (
    "dotenv",
    "anyio._backends._asyncio",
    "anyio.streams.memory",
    "anyio.streams.stapled",
    "openai.resources.models",
    "livekit.agents.llm.async_toolset",
)


def preload_modules(*, redis: bool = False) -> list[str]:
    """The modules for LiveKit's forkserver to import once, before any job forks (its
    ``preload_modules``): every ``src`` module loaded by now, i.e. what the worker's main
    file imports, the vendors' clients (imported by the registry on first use), what every
    call imports on first use (:data:`FIRST_CALL_IMPORTS`), and
    the Redis store when the fleet uses it (imported on first use otherwise). A job then
    shares their pages instead of holding its own copy; measured in
    ``bench/memory_fork.py`` (issue #29). The main file itself is left out: LiveKit's job
    runs it again as ``__mp_main__``."""
    main = getattr(sys.modules.get("__main__"), "__spec__", None)
    skip = {getattr(main, "name", None), "src.agent"}
    ours = sorted(n for n in list(sys.modules) if n.split(".")[0] == "src" and n not in skip)
    from src.registry import VENDORS  # loaded by the main file already

    late = [v.client_module for v in VENDORS if v.client_module]
    ours += [n for n in (*late, *FIRST_CALL_IMPORTS) if n not in ours]
    if redis and "src.store.redis_store" not in ours:
        ours.append("src.store.redis_store")
    return ours
