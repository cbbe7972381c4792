"""Session listeners LiveKit's EventEmitter calls without introspecting them (issue #29)."""

from __future__ import annotations

import inspect
from typing import Any

from livekit.rtc import EventEmitter

from src.events import listener


class Seen:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def on(self, event: Any) -> None:
        self.events.append(event)


def test_a_bound_method_listener_gets_each_event_once() -> None:
    seen = Seen()
    emitter: EventEmitter[str] = EventEmitter()
    emitter.on("item", listener(seen.on))
    emitter.emit("item", "first")
    emitter.emit("item", "second")
    assert seen.events == ["first", "second"]


def test_its_signature_is_ready_not_computed() -> None:
    seen = Seen()
    wrapped = listener(seen.on)
    assert "__signature__" in vars(wrapped)
    assert list(inspect.signature(wrapped).parameters) == ["event"]
    assert wrapped.__qualname__ == "Seen.on"  # logs and tracebacks still name the handler
