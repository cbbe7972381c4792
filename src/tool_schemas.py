"""Tool schemas built once per tool, not once per model request (issue #10, load).

LiveKit turns every function tool into its JSON schema on *every* model request: it
builds a new pydantic model class from the tool's signature and asks pydantic for its
schema (``livekit.agents.llm.utils.build_strict_openai_schema`` and
``build_legacy_openai_schema``). Measured in the load drill: about 5 ms of CPU per request
with this agent's tools, and each request leaves a heap of cyclic garbage (a class per
tool) that brings on the collector's full passes, which stalled the event loop for
200 ms and more with fifty conversations in one process.

LiveKit also builds that model class again to validate the arguments of every tool
call; it is cached the same way (the class itself, reused).

A tool's schema depends only on its function (signature, type hints, docstring), whether
it is bound to an agent, and its :class:`~livekit.agents.llm.FunctionToolInfo` (name,
description, flags). :func:`install` wraps LiveKit's two builders and the model function
with a cache each (:class:`_Memo`) on exactly that key; every provider format (OpenAI,
Anthropic, Google, AWS, realtime) reads the builders through the module, so all of them
get the cached schema. The key is the tool's fields as they are (no copies), and every
caller gets the one cached schema, frozen (:class:`FrozenSchema`: a ``dict`` whose nested
dicts and lists refuse edits), so no caller can change the next request's and none pays
for a copy. LiveKit's provider formats only read the schema (they build their own dicts
around it). Measured in issue #29: the key used to be built with ``dataclasses.astuple``
(a deep copy of the tool's metadata, about 0.65 ms a request) and each schema handed out
as a deep copy (about 0.75 ms). Tools the key cannot describe (no ``__wrapped__``
function) are built as before, uncached.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import typing
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from livekit.agents.llm import utils as llm_utils
from livekit.agents.llm.tool_context import FunctionTool

__all__ = [
    "CACHE_LIMIT",
    "FrozenSchema",
    "cache_info",
    "clear",
    "freeze",
    "install",
    "resolve_annotations",
    "uninstall",
]

logger = logging.getLogger("src.tool_schemas")

CACHE_LIMIT = 256  # distinct entries kept per cache; an agent has about ten tools
_MARK = "__trialist_schema_cache__"


def _key(tool: Any, variant: tuple[Hashable, ...]) -> tuple[Hashable, ...] | None:
    if not isinstance(tool, FunctionTool):
        return None
    func = getattr(tool, "__wrapped__", None)
    info = getattr(tool, "info", None)
    if func is None or not dataclasses.is_dataclass(info) or isinstance(info, type):
        return None
    # ``FunctionTool.__get__`` gives a bound tool its own ``__signature__`` (without self).
    bound = "__signature__" in vars(tool)
    try:
        fields = tuple(getattr(info, f.name) for f in dataclasses.fields(info))
        key = (func, bound, *fields, *variant)
        hash(key)
    except TypeError:  # an unhashable field in a future FunctionToolInfo
        return None
    return key


def _refuse(self: object, *args: object, **kwargs: object) -> Any:
    raise TypeError("a cached tool schema is read-only: copy.deepcopy() it to edit")


class FrozenSchema(dict[str, Any]):
    """A cached tool schema: a plain ``dict`` to every reader (``json.dumps``,
    ``isinstance(x, dict)``), but edits raise ``TypeError``. ``copy.deepcopy`` gives an
    ordinary, editable copy."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {key: _thaw(value) for key, value in self.items()}

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


class _FrozenList(list[Any]):
    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = clear = extend = insert = pop = remove = reverse = sort = _refuse

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [_thaw(value) for value in self]

    def __copy__(self) -> list[Any]:
        return list(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


def freeze(value: Any) -> Any:
    """``value`` with every dict and list in it replaced by a read-only one."""
    if isinstance(value, dict):
        return FrozenSchema({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return _FrozenList(freeze(item) for item in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_thaw(item) for item in value]
    return value


class _Memo:
    """One bounded LRU cache of what ``build`` makes of a tool, with counters."""

    def __init__(self, build: Callable[..., Any], keep: Callable[[Any], Any]) -> None:
        self.build = build
        self.keep = keep  # what is cached (and handed to every caller) of what was built
        self.entries: OrderedDict[tuple[Hashable, ...], Any] = OrderedDict()
        self.stats = {"hits": 0, "misses": 0, "uncached": 0}

    def __call__(self, tool: Any, **kwargs: Any) -> Any:
        key = _key(tool, tuple(sorted(kwargs.items())))
        if key is None:
            self.stats["uncached"] += 1
            return self.build(tool, **kwargs)
        value = self.entries.get(key)
        if value is None:
            self.stats["misses"] += 1
            value = self.entries[key] = self.keep(self.build(tool, **kwargs))
            if len(self.entries) > CACHE_LIMIT:
                self.entries.popitem(last=False)
        else:
            self.stats["hits"] += 1
            self.entries.move_to_end(key)
        return value


# LiveKit function -> what is kept and handed out: a schema frozen (no caller can edit the
# next request's); the arguments model is the class itself (validating changes nothing).
_KEEP: dict[str, Callable[[Any], Any]] = {
    "build_strict_openai_schema": freeze,
    "build_legacy_openai_schema": freeze,
    "function_arguments_to_pydantic_model": lambda model: model,
}
_memos: dict[str, _Memo] = {}


def resolve_annotations(owner: type) -> int:
    """Evaluate the annotations of ``owner``'s tools once, in place. LiveKit calls
    ``typing.get_type_hints`` on a tool at every call (to find its ``RunContext``
    parameter); written as strings (``from __future__ import annotations``), each is then
    compiled and evaluated again. Returns how many tools were resolved."""
    resolved = 0
    for value in vars(owner).values():
        if not isinstance(value, FunctionTool):
            continue
        func = value.__wrapped__  # type: ignore[attr-defined]
        hints = typing.get_type_hints(func, include_extras=True)
        annotations = func.__annotations__  # the dict the tool shares (functools.wraps)
        annotations.clear()
        annotations.update(hints)
        resolved += 1
    return resolved


def install() -> None:
    """Wrap LiveKit's schema builders and arguments model with the caches (idempotent)."""
    for name, keep in _KEEP.items():
        current = getattr(llm_utils, name, None)
        if current is None:
            logger.warning("LiveKit has no llm.utils.%s; it is built per request", name)
            continue
        if hasattr(current, _MARK):
            continue
        known = _memos.get(name)
        memo = known if known is not None and known.build is current else _Memo(current, keep)
        _memos[name] = memo

        @functools.wraps(current)
        def wrapper(tool: Any, _memo: _Memo = memo, **kwargs: Any) -> Any:
            return _memo(tool, **kwargs)

        setattr(wrapper, _MARK, current)
        setattr(llm_utils, name, wrapper)


def uninstall() -> None:
    """Put LiveKit's own builders back (the bench's stock-LiveKit rows); the caches stay
    and a later :func:`install` uses them again."""
    for name in _KEEP:
        current = getattr(llm_utils, name, None)
        original = getattr(current, _MARK, None)
        if original is not None:
            setattr(llm_utils, name, original)


def clear() -> None:
    """Forget every cached value and the counters (tests)."""
    for memo in _memos.values():
        memo.entries.clear()
        memo.stats = dict.fromkeys(memo.stats, 0)


def cache_info() -> dict[str, int]:
    """``hits``, ``misses``, ``uncached`` and ``size`` of the two schema caches together,
    and the same counts of the arguments-model cache as ``model_*``."""
    info = dict.fromkeys(("hits", "misses", "uncached", "size"), 0)
    for name, memo in _memos.items():
        prefix = "model_" if name == "function_arguments_to_pydantic_model" else ""
        counts = {**memo.stats, "size": len(memo.entries)}
        for stat, value in counts.items():
            info[prefix + stat] = info.get(prefix + stat, 0) + value
    return info
