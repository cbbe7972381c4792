"""What the agents of one worker process share per vendor (issue #15): the rate rule's
sliding window, the bulkhead, the retry budget and the latency history.
:func:`reset_process_protection` forgets it all (a fresh process)."""

from __future__ import annotations

from ..latency import reset_trackers
from .budget import reset_process_budgets
from .bulkhead import reset_process_bulkheads
from .window import reset_process_windows

__all__ = ["reset_process_protection"]


def reset_process_protection() -> None:
    reset_process_windows()
    reset_process_bulkheads()
    reset_process_budgets()
    reset_trackers()
