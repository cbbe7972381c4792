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
description, flags). :func:`install` wraps LiveKit's two builders with a cache on exactly
that key; every provider format (OpenAI, Anthropic, Google, AWS, realtime) reads the
builders through the module, so all of them get the cached schema. Each call returns a
deep copy, so a caller that edits its schema cannot change the next request's. Tools the
key cannot describe (no ``__wrapped__`` function) are built as before, uncached.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from livekit.agents.llm import utils as llm_utils
from livekit.agents.llm.tool_context import FunctionTool

__all__ = ["CACHE_LIMIT", "cache_info", "clear", "install"]

logger = logging.getLogger("src.tool_schemas")

CACHE_LIMIT = 256  # distinct (tool, variant) schemas kept; an agent has about ten
_cache: OrderedDict[tuple[Hashable, ...], dict[str, Any]] = OrderedDict()
_stats = {
    "hits": 0,
    "misses": 0,
    "uncached": 0,
    "model_hits": 0,
    "model_misses": 0,
    "model_uncached": 0,
}
_MARK = "__trialist_schema_cache__"


def _key(
    tool: FunctionTool[..., Any], variant: tuple[Hashable, ...]
) -> tuple[Hashable, ...] | None:
    func = getattr(tool, "__wrapped__", None)
    info = getattr(tool, "info", None)
    if func is None or not dataclasses.is_dataclass(info) or isinstance(info, type):
        return None
    # ``FunctionTool.__get__`` gives a bound tool its own ``__signature__`` (without self).
    bound = "__signature__" in vars(tool)
    try:
        key = (func, bound, *dataclasses.astuple(info), *variant)
        hash(key)
    except TypeError:  # an unhashable field in a future FunctionToolInfo
        return None
    return key


def _cached(build: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    @functools.wraps(build)
    def wrapper(function_tool: FunctionTool[..., Any], **kwargs: Any) -> dict[str, Any]:
        variant = (build.__name__, *sorted(kwargs.items()))
        key = _key(function_tool, variant)
        if key is None:
            _stats["uncached"] += 1
            return build(function_tool, **kwargs)
        schema = _cache.get(key)
        if schema is None:
            _stats["misses"] += 1
            schema = build(function_tool, **kwargs)
            _cache[key] = schema
            if len(_cache) > CACHE_LIMIT:
                _cache.popitem(last=False)
        else:
            _stats["hits"] += 1
            _cache.move_to_end(key)
        return copy.deepcopy(schema)

    setattr(wrapper, _MARK, build)
    return wrapper


def _cached_model(build: Callable[..., type[Any]]) -> Callable[..., type[Any]]:
    """The arguments model LiveKit validates a tool call's arguments with: one class per
    tool, reused (a pydantic model class is not changed by validating with it)."""
    models: OrderedDict[tuple[Hashable, ...], type[Any]] = OrderedDict()

    @functools.wraps(build)
    def wrapper(func: Any) -> type[Any]:
        key = _key(func, ("model",)) if isinstance(func, FunctionTool) else None
        if key is None:
            _stats["model_uncached"] += 1
            return build(func)
        model = models.get(key)
        if model is None:
            _stats["model_misses"] += 1
            model = models[key] = build(func)
            if len(models) > CACHE_LIMIT:
                models.popitem(last=False)
        else:
            _stats["model_hits"] += 1
        return model

    setattr(wrapper, _MARK, build)
    return wrapper


_WRAPPERS: dict[str, Callable[[Any], Any]] = {
    "build_strict_openai_schema": _cached,
    "build_legacy_openai_schema": _cached,
    "function_arguments_to_pydantic_model": _cached_model,
}


def install() -> None:
    """Wrap LiveKit's schema builders and arguments model with the caches (idempotent)."""
    for name, wrap in _WRAPPERS.items():
        current = getattr(llm_utils, name, None)
        if current is None:
            logger.warning("LiveKit has no llm.utils.%s; it is built per request", name)
            continue
        if not hasattr(current, _MARK):
            setattr(llm_utils, name, wrap(current))


def clear() -> None:
    """Forget every cached schema and the counters (tests)."""
    _cache.clear()
    for name in _stats:
        _stats[name] = 0


def cache_info() -> dict[str, int]:
    """``hits``, ``misses``, ``uncached`` and ``size`` of the schema cache, and the
    ``model_*`` counts of the arguments-model cache."""
    return {**_stats, "size": len(_cache)}
