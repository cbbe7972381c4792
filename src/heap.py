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

__all__ = ["freeze_call_state", "freeze_preloaded"]


def freeze_call_state() -> int:
    """Freeze everything tracked so far; returns how many objects are frozen in all."""
    gc.freeze()
    return gc.get_freeze_count()


def freeze_preloaded() -> int:
    """What LiveKit's forkserver does after its imports: collect, then freeze."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
