"""``uv run python -m src.drill simulate --examples N [--seed S]``: a long search of the
fleet simulation. Prints the invariants checked, the examples and steps run, any
counterexample (shrunk by Hypothesis to a minimal schedule of steps) and the command
that replays it; exits 1 on a violation.

    uv run python -m src.drill simulate --examples 2000 --seed 7
    uv run python -m src.drill simulate --examples 500 --invariant harm_free
    uv run python -m src.drill simulate --examples 50 --store redis
    uv run python -m src.drill simulate --examples 3000 --invariant exactly_once --no-shrink
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis.stateful import run_state_machine_as_test

from .invariants import INVARIANTS
from .machine import STATS, machine_for, sqlite_store

__all__ = ["main"]


def _command(args: argparse.Namespace, chosen: Sequence[str]) -> str:
    parts = ["uv run python -m src.drill simulate", f"--examples {args.examples}"]
    parts += [f"--seed {args.seed}", f"--steps {args.steps}"]
    if args.store != "sqlite":
        parts.append(f"--store {args.store}")
    if args.no_shrink:
        parts.append("--no-shrink")
    parts += [f"--invariant {n}" for n in chosen if len(chosen) < len(INVARIANTS)]
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="uv run python -m src.drill simulate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--examples", type=int, default=200, help="examples to run (200)")
    parser.add_argument("--seed", type=int, default=None, help="search seed (default: random)")
    parser.add_argument("--steps", type=int, default=50, help="steps per example at most (50)")
    parser.add_argument(
        "--invariant",
        action="append",
        choices=sorted(INVARIANTS),
        help="enforce only this invariant (repeatable; the others are still counted)",
    )
    parser.add_argument("--store", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument(
        "--no-shrink",
        action="store_true",
        help="stop at the first violation, unshrunk (to count the examples it takes)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show the agent's logs")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    chosen = args.invariant or list(INVARIANTS)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL)
    if not args.verbose:
        logging.disable(logging.CRITICAL)
    server = None
    store: Callable[[Path], str] = sqlite_store
    if args.store == "redis":
        from tests.fleet_helpers import RedisServer  # the test helper starts a real one

        server = RedisServer(Path(tempfile.mkdtemp(prefix="sim-redis-")))
        server.start()
        url, port = server.url, server.port

        def flushed(_tmp: Path) -> str:
            import redis

            redis.Redis(port=port).flushdb()
            return url

        store = flushed

    machine = seed(args.seed)(machine_for(chosen, store=store, clock_jumps=args.store == "sqlite"))
    print(f"invariants enforced: {', '.join(chosen)}")
    started = time.perf_counter()
    failure: BaseException | None = None
    interrupted = False
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=args.examples,
                stateful_step_count=args.steps,
                deadline=None,
                database=None,
                print_blob=True,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.reuse, Phase.generate]
                if args.no_shrink
                else list(Phase),
            ),
        )
    except KeyboardInterrupt:  # stopped by hand: what ran so far, without a verdict
        failure = None
        interrupted = True
    except BaseException as exc:  # the counterexample was printed above by Hypothesis
        failure = exc
    finally:
        if server is not None:
            server.stop()
    elapsed = time.perf_counter() - started
    print(
        f"\n{STATS['examples']} example(s), {STATS['steps']} step(s) in {elapsed:.1f}s "
        f"(seed {args.seed})"
    )
    for name in INVARIANTS:
        hits = STATS[f"violations:{name}"]
        flag = "enforced" if name in chosen else "counted"
        first = STATS.get(f"first:{name}")
        at = f", first in example {first}" if first else ""
        print(f"  {name:24} {flag:8} steps that broke it: {hits}{at}")
    if interrupted:
        print("interrupted: no violation in the examples run so far")
        return 130
    if failure is None:
        print("no violation")
        return 0
    notes = getattr(failure, "__notes__", [])
    if notes:
        print("\ncounterexample (shrunk):")
        print("\n".join(f"  {line}" for note in notes for line in str(note).splitlines()))
    print(f"\nVIOLATION: {str(failure).splitlines()[0] if str(failure) else type(failure)}")
    print(f"replay: {_command(args, chosen)}")
    return 1
