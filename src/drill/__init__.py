"""Resilience drill: scripted conversations with faults injected, against the sandbox.

:mod:`.harness` drives a conversation and measures it (shared with the chaos tests and the
bench), :mod:`.scenarios` defines the drill's scenarios and judges them, :mod:`.cli` is
``python -m src.drill``.
"""

from src.drill.cli import main
from src.drill.scenarios import SCENARIOS, Fault, Scenario, ScenarioReport, run_scenario

__all__ = ["SCENARIOS", "Fault", "Scenario", "ScenarioReport", "main", "run_scenario"]
