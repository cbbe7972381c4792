"""Tool schemas are built once per tool (src/tool_schemas.py), and are exactly LiveKit's."""

from __future__ import annotations

import copy
import json
import pickle
import typing
from collections.abc import Iterator

import pytest
from livekit.agents import Agent, function_tool
from livekit.agents.llm import FunctionTool, ToolContext
from livekit.agents.llm import utils as llm_utils
from livekit.agents.llm._provider_format import anthropic as anthropic_format
from livekit.agents.llm._provider_format import openai as openai_format

from src import tool_schemas
from src.agent import PandaDocTrialistAgent
from src.services.wiring import TrialistServices


@pytest.fixture
def cache() -> Iterator[None]:
    tool_schemas.install()
    tool_schemas.clear()
    yield
    tool_schemas.clear()


def _original(name: str):  # type: ignore[no-untyped-def]
    return getattr(llm_utils, name).__trialist_schema_cache__


def test_install_is_idempotent(cache: None) -> None:
    strict = llm_utils.build_strict_openai_schema
    tool_schemas.install()
    assert llm_utils.build_strict_openai_schema is strict
    assert _original("build_strict_openai_schema") is not strict


def test_every_agent_tool_gets_livekits_own_schema_built_once(cache: None) -> None:
    agent = PandaDocTrialistAgent(TrialistServices())
    ctx = ToolContext(agent.tools)
    build_strict = _original("build_strict_openai_schema")
    build_legacy = _original("build_legacy_openai_schema")
    expected_strict = [build_strict(t) for t in ctx.function_tools.values()]
    expected_legacy = [build_legacy(t) for t in ctx.function_tools.values()]
    assert len(expected_strict) >= 5

    for _ in range(3):  # three model requests
        assert openai_format.to_fnc_ctx(ctx, strict=True) == expected_strict
        assert openai_format.to_fnc_ctx(ctx, strict=False) == expected_legacy
    info = tool_schemas.cache_info()
    assert info["misses"] == 2 * len(expected_strict)
    assert info["hits"] == 4 * len(expected_strict)
    assert info["uncached"] == 0

    # Another provider format reads the same cache and still gets its own shape.
    anthropic = anthropic_format.to_fnc_ctx(ctx, strict=True)
    assert [s["input_schema"] for s in anthropic] == [
        s["function"]["parameters"] for s in expected_strict
    ]
    assert tool_schemas.cache_info()["misses"] == 2 * len(expected_strict)


def test_uninstall_puts_livekits_builders_back_and_install_reuses_the_cache(cache: None) -> None:
    ctx = ToolContext(PandaDocTrialistAgent(TrialistServices()).tools)
    original = _original("build_strict_openai_schema")
    cached = openai_format.to_fnc_ctx(ctx)
    tool_schemas.uninstall()
    try:
        assert llm_utils.build_strict_openai_schema is original
        stock = openai_format.to_fnc_ctx(ctx)
        assert stock == cached and all(a is not b for a, b in zip(stock, cached, strict=True))
    finally:
        tool_schemas.install()
    misses = tool_schemas.cache_info()["misses"]
    again = openai_format.to_fnc_ctx(ctx)
    assert tool_schemas.cache_info()["misses"] == misses
    assert all(a is b for a, b in zip(again, cached, strict=True))


def test_a_new_agent_instance_reuses_the_schemas(cache: None) -> None:
    first = ToolContext(PandaDocTrialistAgent(TrialistServices()).tools)
    second = ToolContext(PandaDocTrialistAgent(TrialistServices()).tools)
    openai_format.to_fnc_ctx(first)
    misses = tool_schemas.cache_info()["misses"]
    openai_format.to_fnc_ctx(second)
    assert tool_schemas.cache_info()["misses"] == misses


def test_a_returned_schema_refuses_edits_and_the_next_request_is_unchanged(cache: None) -> None:
    ctx = ToolContext(PandaDocTrialistAgent(TrialistServices()).tools)
    first = openai_format.to_fnc_ctx(ctx)
    expected = copy.deepcopy(first)
    params = first[0]["function"]["parameters"]
    with pytest.raises(TypeError):
        params["properties"]["injected"] = {"type": "string"}
    with pytest.raises(TypeError):
        first[0]["function"]["description"] = "changed"
    with pytest.raises(TypeError):
        params["required"].append("injected")
    with pytest.raises(TypeError):
        params.update({"x": 1})
    again = openai_format.to_fnc_ctx(ctx)
    assert again == expected
    # A reader sees plain JSON: the same text as the copy, and a deep copy is editable.
    assert json.dumps(again) == json.dumps(expected)
    assert type(expected[0]) is dict and type(expected[0]["function"]["parameters"]) is dict
    expected[0]["function"]["description"] = "editable"
    assert pickle.loads(pickle.dumps(again)) == again


def test_a_cached_request_copies_nothing(cache: None, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = ToolContext(PandaDocTrialistAgent(TrialistServices()).tools)
    openai_format.to_fnc_ctx(ctx)  # built and cached
    copies: list[object] = []
    real = copy.deepcopy

    def counting(value: object, memo: object = None) -> object:
        copies.append(value)
        return real(value, memo)  # type: ignore[arg-type]

    monkeypatch.setattr(copy, "deepcopy", counting)
    first = openai_format.to_fnc_ctx(ctx)
    second = openai_format.to_fnc_ctx(ctx)
    assert copies == []  # neither the key nor the hand-out copies anything
    # Every caller gets the very cached schema.
    assert all(a is b for a, b in zip(first, second, strict=True))


class _Twins(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="twins")

    @function_tool
    async def lookup(self, email: str) -> str:
        """Look a person up.

        Args:
            email: their address
        """
        return email

    @function_tool(name="lookup_by_count", description="Look several up.")
    async def lookup_many(self, count: int, exact: bool = False) -> str:
        return str(count + exact)


def _free_lookup() -> object:
    @function_tool(name="lookup")
    async def lookup(account_id: int) -> str:
        """Look an account up by number."""
        return str(account_id)

    return lookup


def test_tools_that_differ_get_their_own_schemas(cache: None) -> None:
    """Same name, different function (or name, description, bound or not): no mix-up."""
    bound = ToolContext(_Twins().tools)
    free = ToolContext([_free_lookup()])  # type: ignore[list-item]
    build = _original("build_strict_openai_schema")
    for ctx in (bound, free, bound, free):
        assert openai_format.to_fnc_ctx(ctx) == [build(t) for t in ctx.function_tools.values()]
    schemas = {s["function"]["name"]: s for s in openai_format.to_fnc_ctx(bound)}
    assert set(schemas["lookup"]["function"]["parameters"]["properties"]) == {"email"}
    assert schemas["lookup_by_count"]["function"]["description"] == "Look several up."
    (free_schema,) = openai_format.to_fnc_ctx(free)
    assert set(free_schema["function"]["parameters"]["properties"]) == {"account_id"}
    assert tool_schemas.cache_info()["misses"] == 3


def test_cache_is_bounded(cache: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tool_schemas, "CACHE_LIMIT", 2)
    ctx = ToolContext(PandaDocTrialistAgent(TrialistServices()).tools)
    openai_format.to_fnc_ctx(ctx)
    assert tool_schemas.cache_info()["size"] == 2


def test_tool_call_arguments_are_validated_with_one_model_per_tool(cache: None) -> None:
    from livekit.agents.llm import ToolError

    (lookup, many) = _Twins().tools
    before = tool_schemas.cache_info()
    for n in range(3):
        args, _ = llm_utils.prepare_function_arguments(
            fnc=many, json_arguments={"count": n, "exact": True}
        )
        assert args == (n, True)
    args, _ = llm_utils.prepare_function_arguments(fnc=lookup, json_arguments='{"email": "a"}')
    assert args == ("a",)
    with pytest.raises(ToolError):  # still validated: a word is not a count
        llm_utils.prepare_function_arguments(fnc=many, json_arguments={"count": "many"})
    after = tool_schemas.cache_info()
    assert after["model_misses"] - before["model_misses"] <= 2  # one per tool, at most
    assert after["model_hits"] - before["model_hits"] >= 3


def test_the_agents_tool_annotations_are_evaluated_once_at_import() -> None:
    """LiveKit calls ``get_type_hints`` on a tool at every call; string annotations
    (PEP 563) would be compiled and evaluated each time (issue #29)."""
    from livekit.agents import RunContext

    tool = PandaDocTrialistAgent.get_trial_usage
    annotations = tool.__annotations__
    assert not any(isinstance(a, str) for a in annotations.values())
    assert typing.get_origin(annotations["context"]) is RunContext
    assert tool_schemas.resolve_annotations(PandaDocTrialistAgent) == len(
        [v for v in vars(PandaDocTrialistAgent).values() if isinstance(v, FunctionTool)]
    )
