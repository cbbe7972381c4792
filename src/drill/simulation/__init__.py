"""A seeded simulation of the fleet (issue 24): conversations in several job processes
sharing one real store, vendors with per-request fault schedules, store faults and clock
jumps, on virtual time, driven by a Hypothesis state machine (:mod:`.machine`) and
judged after every step by named invariants (:mod:`.invariants`).

Only the edge is simulated: the vendors (:mod:`.vendors`) and the store's faults
(:mod:`.faults`, in front of a real SQLite file or ``redis-server``). Breakers, retry
budgets, rate rules, bulkheads, the outbox, the store guard and the tool bodies are our
real code, wired in one place (:mod:`.adapter`).

``uv run pytest tests/test_simulation.py`` runs it in the suite;
``uv run python -m src.drill simulate --examples N [--seed S]`` searches longer
(:mod:`.cli`).
"""
