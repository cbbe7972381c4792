"""The load drill's parts: the sandbox in its own process, the heap freezes, and a small
run of the drill itself (timing budgets are the drill's to judge, not these tests')."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import aiohttp
import pytest

from src import heap
from src.drill import load
from src.sandbox import FaultKind
from src.sandbox.remote import SandboxProcess


async def test_the_sandbox_process_serves_and_takes_faults_over_its_admin_api() -> None:
    async with SandboxProcess() as sandbox:
        env = sandbox.env()
        assert sandbox.servers == {}
        url = env["AMPLITUDE_BASE_URL"]
        assert url.startswith("http://127.0.0.1:")
        await sandbox.inject("amplitude", FaultKind.SERVICE_UNAVAILABLE, count=1)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/__sandbox/faults") as listed:
                faults = await listed.json()
            statuses = []
            for _ in range(2):
                async with http.get(f"{url}/api/2/usersearch", params={"user": "x"}) as r:
                    statuses.append(r.status)
        assert faults and faults[0]["kind"] == "503"
        assert statuses[0] == 503 and statuses[1] != 503  # count=1: the next one passes
        with pytest.raises(RuntimeError, match="no running sandbox service"):
            await sandbox.inject("nonesuch", FaultKind.SERVER_ERROR)
        proc = sandbox._proc
        assert proc is not None
    assert proc.returncode is not None  # stopped with the context
    with pytest.raises(RuntimeError, match="start the sandbox process"):
        sandbox.env()


async def test_a_sandbox_process_that_cannot_start_says_so() -> None:
    await SandboxProcess(python=sys.executable).stop()  # safe before any start
    failing = SandboxProcess(python="/bin/false")
    with pytest.raises(RuntimeError, match="exited with status 1"):
        await failing.start()
    await failing.stop()  # and after a failed start


@pytest.fixture
def unfreeze() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_freeze_call_state_takes_the_session_out_of_collection(unfreeze: None) -> None:
    class Session:
        pass

    session = Session()
    session.me = session  # type: ignore[attr-defined]  # a cycle, as sessions have
    assert any(o is session for o in gc.get_objects())
    frozen = heap.freeze_call_state()
    assert frozen == gc.get_freeze_count() > 0
    assert not any(o is session for o in gc.get_objects())


def test_freeze_preloaded_collects_garbage_before_freezing(unfreeze: None) -> None:
    import weakref

    class Node:
        pass

    node = Node()
    node.me = node  # type: ignore[attr-defined]
    gone = weakref.ref(node)
    del node  # cyclic garbage: only a collection frees it
    heap.freeze_preloaded()
    assert gone() is None


async def test_a_small_load_run_reports_every_turn(
    monkeypatch: pytest.MonkeyPatch, unfreeze: None
) -> None:
    monkeypatch.setattr(load, "THINK_S", 0.0)
    report = await load.run_load(conversations=2)
    assert report.conversations == 2
    assert report.turns == 2 * len(load.LOAD_TURNS)
    assert report.failures == 0 and report.silent_turns == 0
    assert 0 < report.p50_turn_s <= report.p99_turn_s
    assert report.worst_first_words_s > 0
    assert report.worst_loop_lag_s >= report.worst_loop_busy_s >= 0
    assert report.verdict in ("ok", "MISS")
    assert (report.verdict == "ok") == (not report.problems)
