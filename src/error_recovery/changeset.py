"""Per-tool change sets over the session state, so the tools of one model reply can run
concurrently and a failing tool still leaves no trace.

A :class:`ToolChanges` is opened when a wrapped tool starts. It remembers, for each
top-level field of the state (dataclass fields, incl. ``slots=True``, or dict keys), the
value object it held and, for a ``list``/``dict``/``set`` value, a *shallow* copy of its
entries. Nothing is deep-copied: the cost is one reference per field plus the entries of
top-level containers, not the size of everything the state refers to.

On success the tool *commits*: the fields it changed are marked as saved by it. On failure
it *rolls back* only the fields that changed since it started, and only when no sibling
tool committed that field meanwhile (a sibling's save is never erased). When a sibling is
still running, the rollback of a field is deferred: it is applied when the last tool of
the state ends, and only if the field still holds the value the failed tool left in it
and no tool committed the field in between.

State classes that inherit :class:`WriteTracked` (``TrialistData`` does) also say *who*
assigned each field: a field assigned by a sibling is never rolled back or claimed by
another tool, however the writes interleave. Without it (plain dataclasses, dicts) the
owner of a change is inferred from what is seen when tools end, which is exact unless two
running tools write the same field.

Assumptions (true for :class:`~src.state.TrialistData`): tools change the state by
assigning fields or by mutating top-level ``list``/``dict``/``set`` values in place; values
deeper down (e.g. ``TrialUsage``) are replaced, not mutated.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ToolChanges", "WriteTracked", "tracks"]

_CONTAINERS = (list, dict, set)


def tracks(data: Any) -> bool:
    """Whether ``data`` is state this module tracks (a dict or a dataclass instance)."""
    return isinstance(data, dict) or (dataclasses.is_dataclass(data) and not isinstance(data, type))


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """A dataclass's field names, read once per class (they never change)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


_MISSING = object()


def _get(data: Any, name: Any) -> Any:
    if isinstance(data, dict):
        return data.get(name, _MISSING)
    return getattr(data, name, _MISSING)


def _set(data: Any, name: Any, value: Any) -> None:
    if isinstance(data, dict):
        if value is _MISSING:
            data.pop(name, None)
        else:
            data[name] = value
    else:
        setattr(data, name, value)


def _entries(value: Any) -> Any:
    """A shallow copy of a container's entries (``None`` for other values)."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    if isinstance(value, set):
        return set(value)
    return None


def _same_entries(value: Any, entries: Any) -> bool:
    if isinstance(value, dict):
        return value.keys() == entries.keys() and all(value[k] is entries[k] for k in value)
    if isinstance(value, list):
        if len(value) != len(entries):
            return False
        return all(a is b for a, b in zip(value, entries, strict=True))
    return bool(value == entries)


def _put_entries(value: Any, entries: Any) -> None:
    """Refill a container in place with ``entries`` (identity kept)."""
    if isinstance(value, dict):
        value.clear()
        value.update(entries)
    elif isinstance(value, list):
        value[:] = entries
    else:
        value.clear()
        value.update(entries)


@dataclass(slots=True)
class _Field:
    value: Any  # the object the field held when the tool started
    entries: Any  # shallow copy of a container's entries, else None


_ABSENT = _Field(_MISSING, None)  # a field (dict key) the state did not have at the start


@dataclass
class _Pending:
    """A failed tool's rollback of one field, waiting for running siblings to end."""

    before: _Field
    left: Any  # the value the failed tool left in the field
    left_entries: Any
    at: int  # version when it was deferred


def _holds(now: Any, pending: _Pending) -> bool:
    """Whether a field's value ``now`` is still what the failed tool left there."""
    return now is pending.left and (
        pending.left_entries is None or _same_entries(now, pending.left_entries)
    )


@dataclass
class _Ledger:
    """What the running tools of one state share: who committed what, and when."""

    version: int = 0
    active: int = 0
    committed: dict[Any, int] = field(default_factory=dict)  # field -> version
    pending: dict[Any, _Pending] = field(default_factory=dict)
    writer: dict[Any, ToolChanges | None] = field(default_factory=dict)  # WriteTracked


class WriteTracked:
    """Base for state dataclasses: every field assignment is attributed to the tool run
    (the :class:`ToolChanges`) of the running task, if any."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        ledger = _LEDGERS.get(id(self))
        if ledger is not None:
            ledger.writer[name] = _CURRENT.get()


# One ledger per live state object while any tool on it runs (keyed by id: slotted
# dataclasses cannot be weakly referenced; the entry is dropped when the last tool ends).
_LEDGERS: dict[int, _Ledger] = {}
_CURRENT: ContextVar[ToolChanges | None] = ContextVar("tool_changes", default=None)


class ToolChanges:
    """The change set of one tool run over ``data`` (see the module doc)."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self._key = id(data)
        ledger = _LEDGERS.get(self._key)
        if ledger is None:
            ledger = _LEDGERS[self._key] = _Ledger()
        ledger.active += 1
        self._ledger = ledger
        self._started = ledger.version
        self._is_dict = isinstance(data, dict)
        items = (
            list(data.items())
            if self._is_dict
            else [(name, getattr(data, name, _MISSING)) for name in _field_names(type(data))]
        )
        # One reference per field; a container's entries only when it is one.
        self._before: dict[Any, _Field] = {
            name: _Field(value, _entries(value) if isinstance(value, _CONTAINERS) else None)
            for name, value in items
        }
        self._closed = False
        self._token = _CURRENT.set(self)

    def _written_by_other(self, name: Any) -> bool:
        """A :class:`WriteTracked` field last assigned by another tool (or outside one)
        since this tool started."""
        ledger = self._ledger
        return name in ledger.writer and ledger.writer[name] is not self

    def changed(self) -> Iterator[Any]:
        """Fields whose value or container entries differ from when the tool started."""
        data, before_all = self.data, self._before
        # A dataclass has the same fields throughout; a dict may gain or lose keys.
        names = before_all.keys() | data.keys() if self._is_dict else before_all.keys()
        for name in names:
            before = before_all.get(name, _ABSENT)
            now = _get(data, name)
            if now is not before.value or (
                before.entries is not None and not _same_entries(now, before.entries)
            ):
                yield name

    def commit(self) -> None:
        """The tool succeeded: what it changed is saved (and claims those fields)."""
        ledger = self._ledger
        ledger.version += 1
        for name in self.changed():
            if self._written_by_other(name):
                continue
            pending = ledger.pending.get(name)
            if pending is not None and self._left_by_failed_sibling(name, pending):
                continue  # the change we see is the failed sibling's, not ours
            ledger.committed[name] = ledger.version
            ledger.pending.pop(name, None)  # a save since the failure wins
        self._close()

    def _left_by_failed_sibling(self, name: Any, pending: _Pending) -> bool:
        """Whether ``name`` still holds what a failed sibling left and we started before
        that value was there (so we did not write it)."""
        before = self._before.get(name, _ABSENT)
        return _holds(_get(self.data, name), pending) and before.value is not pending.left

    def rollback(self) -> None:
        """The tool failed: undo its changes, never a sibling's save."""
        ledger = self._ledger
        for name in list(self.changed()):
            if self._written_by_other(name):
                continue  # assigned by a sibling: not ours to undo
            if ledger.committed.get(name, -1) > self._started:
                continue  # a sibling saved this field after we started: keep it
            before = self._before.get(name, _ABSENT)
            if ledger.active > 1 and ledger.writer.get(name) is not self:
                # Seen, not known to be ours, while siblings run: decide when they end.
                now = _get(self.data, name)
                ledger.pending[name] = _Pending(before, now, _entries(now), ledger.version)
            else:
                self._put_back(name, before)
        self._close()

    def _put_back(self, name: Any, before: _Field) -> None:
        now = _get(self.data, name)
        if before.entries is not None and now is before.value:
            _put_entries(now, before.entries)
            return
        if before.entries is not None:
            _put_entries(before.value, before.entries)
        _set(self.data, name, before.value)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A task or timer started inside the tool copied the context, and with it this
        # change set: drop the snapshot now, so such a copy does not keep it alive.
        self._before = {}
        with contextlib.suppress(ValueError):  # closed from another context: no reset there
            _CURRENT.reset(self._token)
        ledger = self._ledger
        for name, writer in list(ledger.writer.items()):
            if writer is self:
                del ledger.writer[name]
        ledger.active -= 1
        if ledger.active > 0:
            return
        for name, pending in ledger.pending.items():
            if ledger.committed.get(name, -1) > pending.at:
                continue
            if _holds(_get(self.data, name), pending):
                self._put_back(name, pending.before)
        _LEDGERS.pop(self._key, None)
