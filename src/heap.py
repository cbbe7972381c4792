"""Short garbage-collector pauses in a job process (issue #10, load).

CPython's full collection pass walks every tracked object that is not frozen. LiveKit's
forkserver freezes what it preloads (``livekit.agents.ipc._preload_freeze``: collect, then
``gc.freeze()``), so a job process starts with the imports out of the collector's way. The
job then builds a session that lives as long as the call: plugins, HTTP clients, the agent,
its breakers and stores. Left in the collected generations, all of it is walked again on
every full pass, during the call, on the event loop: measured with fifty conversations in
one process, a full pass stalled the loop for 40-60 ms (after the import freeze) and for
over 200 ms without it.

:func:`freeze_after_start` is what the worker's entrypoint calls once ``session.start``
has returned: the session's long-lived objects leave the collector's scans. It does not
collect first (that full pass is the pause it avoids); a garbage cycle that already
exists is kept until the job process exits, which is one call, since LiveKit runs each
job in its own process. :func:`freeze_preloaded` is the forkserver's step, for a process
that was not started by one (the drill).
"""

from __future__ import annotations

import gc

__all__ = ["freeze_after_start", "freeze_preloaded"]


def freeze_after_start() -> int:
    """Freeze everything tracked so far; returns how many objects are frozen in all."""
    gc.freeze()
    return gc.get_freeze_count()


def freeze_preloaded() -> int:
    """What LiveKit's forkserver does after its imports: collect, then freeze."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
