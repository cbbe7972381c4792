"""Issue #15's drill scenarios that need no long real waits: a vendor failing every
other attempt absorbed by retries (issue #23), and a total outage under load (connections
refused, so nothing waits) staying inside the retry budget and the bulkhead."""

from __future__ import annotations

from src.drill.adaptive import _outage_load, _random
from src.sandbox import FaultKind, Sandbox


async def test_every_other_attempt_failing_is_absorbed_and_the_circuit_stays_closed() -> None:
    """Issue #23 (this scenario opened the circuit under issue #15's attempt-counting
    rule): every call is answered by its retry, so no protection refuses it."""
    report = await _random(50, 14)
    assert report.verdict == "ok", report.problems
    assert "14/14 turns got data; openings by rate 0, consecutive 0" in report.note
    assert report.transitions == []


async def test_outage_under_load_keeps_retries_and_concurrency_bounded() -> None:
    report = await _outage_load(conversations=30)
    # What this test is about; the caller's silence (thirty calls starting in the same
    # millisecond on a shared test machine) is the drill's verdict, not this test's.
    problems = [p for p in report.problems if not p.startswith("silence")]
    assert not problems, problems
    assert "first attempts" in report.note and "peak in flight" in report.note


async def test_the_random_fault_is_seeded_and_fails_about_its_share() -> None:
    async with Sandbox() as sandbox:
        fault = sandbox.amplitude.inject("*", FaultKind.RANDOM, every=10)
        fault.rng.seed(15)
        picks = [
            sandbox.amplitude._match_fault("/api/2/usersearch") is not None for _ in range(1000)
        ]
        assert 70 <= sum(picks) <= 130
