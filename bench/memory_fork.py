"""Job memory as LiveKit runs jobs (issue #29): a forkserver with the worker's preloads,
then one job forked from it, against a bare LiveKit agent.

On Linux LiveKit's worker starts job processes from a ``forkserver`` that imported the
registered plugins, the server's ``preload_modules`` and LiveKit's own warm-up
(``livekit.agents.ipc._preload``: the native VAD and turn-detector weights, the RTC
library), then froze them out of the collector's way (``_preload_freeze``). A job forked
from it shares those pages; what the job allocates itself is its own. So the figure that
decides how many calls fit on a host is the job's **USS** (unique set size: its private
pages) and **PSS** (shared pages divided among the processes sharing them), not its RSS,
which counts every shared page in full.

Each sample is a fresh "worker" (``python -m bench.memory_fork worker``): it reads the
agent's main file as LiveKit's worker does (``src/agent.py``, or :mod:`bench.bare_agent`),
starts a forkserver with the same preload list LiveKit would give it, and forks one job
that re-reads the main file (as ``__mp_main__``), runs ``prewarm`` (the VAD), holds the
same ten-turn text conversation with the sandbox, and reads ``/proc/self/smaps_rollup``.
Variants alternate, several samples each; medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.memory_job import TURNS, talk  # the plain-subprocess table's ten turns

ROOT = Path(__file__).resolve().parent.parent
MAIN = {"ours": ROOT / "src" / "agent.py", "bare": ROOT / "bench" / "bare_agent.py"}
# The plugins both agents register (OpenAI LLM/TTS, Deepgram STT). An agent whose prewarm
# loads the Silero plugin registers it too (the bare agent; ours until issue #29, now
# LiveKit's native VAD, src/vad.py), so it is preloaded with the "silero" VAD only.
PLUGINS = ("livekit.plugins.openai", "livekit.plugins.deepgram")
SILERO = "livekit.plugins.silero"
# LiveKit appends these to every forkserver preload list, the freeze last.
LIVEKIT_TAIL = ("livekit.agents.ipc._preload", "livekit.agents.ipc._preload_freeze")
VARIANTS = (("bare", "silero"), ("bare", "native"), ("ours", "silero"), ("ours", "native"))


def smaps() -> dict[str, float]:
    """This process's RSS, PSS and USS in MB (``/proc/self/smaps_rollup``)."""
    kib: dict[str, int] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            kib[key] = int(value.split()[0])
    uss = kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)
    return {
        "rss_mb": round(kib.get("Rss", 0) / 1024, 1),
        "pss_mb": round(kib.get("Pss", 0) / 1024, 1),
        "uss_mb": round(uss / 1024, 1),
    }


def _vad(who: str, kind: str) -> Any:
    if kind == "native" and who == "ours":
        from src.vad import build_vad  # production's prewarm VAD

        return build_vad()
    if kind == "native":  # a plain agent's: LiveKit's native VAD as it comes
        from livekit.agents.inference import VAD

        return VAD()
    from livekit.plugins import silero

    return silero.VAD.load()


async def _ours(main: dict[str, Any], vad: Any) -> int:
    from src.services.wiring import TrialistServices
    from src.session import build_session
    from src.settings import settings_from_env
    from src.state import TrialistData
    from src.store import FleetQuotaStore, FleetUsageCache, StoreGuard, open_store

    settings = settings_from_env(dict(os.environ))
    store = StoreGuard(open_store(settings.fleet.store_url))
    services = TrialistServices.from_settings(
        settings, quota_store=FleetQuotaStore(store), usage_cache=FleetUsageCache(store)
    )
    agent = main["PandaDocTrialistAgent"](services, settings, store=store)
    session = build_session(
        settings,
        userdata=TrialistData(email=os.environ["TRIALIST_EMAIL"]),
        tts_model=None,
        stt_model=None,
        vad_model=vad,
    )
    try:
        return await talk(session, agent)
    finally:
        await services.aclose()
        await store.store.aclose()


def job(who: str, vad_kind: str, conn: Any) -> None:
    """One job process: main file, prewarm, the conversation, then its memory."""
    main = runpy.run_path(str(MAIN[who]), run_name="__mp_main__")
    vad = _vad(who, vad_kind)
    talk = _ours(main, vad) if who == "ours" else main["conversation"]()
    tools = asyncio.run(talk)
    conn.send({"tools": tools, **smaps()})
    conn.close()


def worker(who: str, vad_kind: str) -> dict[str, Any]:
    """A worker's forkserver with the preload list LiveKit would give it; one job."""
    main = runpy.run_path(str(MAIN[who]), run_name="__worker__")
    server = main.get("server")
    ours = list(getattr(server, "_preload_modules", None) or [])
    plugins = [*PLUGINS, SILERO] if vad_kind == "silero" else list(PLUGINS)
    preload = list(dict.fromkeys([*plugins, *ours, *LIVEKIT_TAIL]))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(preload)
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=job, args=(who, vad_kind, send))
    proc.start()
    send.close()
    result: dict[str, Any] = receive.recv() if receive.poll(120) else {"error": "no answer"}
    proc.join(30)
    return {**result, "preloaded_modules": len(preload)}


async def spec_file(env: dict[str, str], folder: str) -> str:
    """The bare agent's spec: our instructions and tool schemas, the requests our tools
    sent (recorded from the sandbox), the turns."""
    from livekit.agents.llm import ToolContext
    from livekit.agents.llm._provider_format import openai as openai_format

    from bench.turn import record_requests
    from src.agent import INSTRUCTIONS, PandaDocTrialistAgent
    from src.services.wiring import TrialistServices

    calls = await record_requests(env, TURNS)
    ctx = ToolContext(PandaDocTrialistAgent(TrialistServices()).tools)
    schemas = [s["function"] for s in openai_format.to_fnc_ctx(ctx, strict=False)]
    path = Path(folder) / "bare-spec.json"
    path.write_text(
        json.dumps(
            {
                "instructions": INSTRUCTIONS,
                "tools": schemas,
                "calls": {k: [r.to_json() for r in v] for k, v in calls.items()},
                "turns": list(TURNS),
            }
        )
    )
    return str(path)


async def collect(samples: int) -> dict[str, list[dict[str, Any]]]:
    """``samples`` jobs per variant, alternating, each from a fresh worker process."""
    from src.sandbox.remote import SandboxProcess

    out: dict[str, list[dict[str, Any]]] = {f"{w}/{v}": [] for w, v in VARIANTS}
    with tempfile.TemporaryDirectory() as folder:
        async with SandboxProcess() as sandbox:
            env = {
                **os.environ,
                **sandbox.env(),
                "RESILIENCE_STORE_URL": f"sqlite:///{folder}/resilience.db",
            }
            env["BARE_AGENT_SPEC"] = await spec_file(env, folder)
            for _ in range(samples):
                for who, vad_kind in VARIANTS:
                    run = await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "bench.memory_fork",
                        "worker",
                        who,
                        vad_kind,
                        cwd=ROOT,
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                    )
                    stdout, _ = await run.communicate()
                    lines = stdout.decode().strip().splitlines()
                    out[f"{who}/{vad_kind}"].append(json.loads(lines[-1]) if lines else {})
    return out


def rows(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per variant: medians, and USS above the bare agent's."""

    def median(key: str, runs: list[dict[str, Any]]) -> float:
        values = [r[key] for r in runs if key in r]
        return round(statistics.median(values), 1) if values else float("nan")

    bare_uss = median("uss_mb", results["bare/silero"])
    table = []
    for name, runs in results.items():
        who, vad_kind = name.split("/")
        uss = median("uss_mb", runs)
        same_vad = median("uss_mb", results.get(f"bare/{vad_kind}", []))
        table.append(
            {
                "job (forked from the forkserver)": f"{who} agent, {vad_kind} VAD",
                "USS MB": uss,
                "PSS MB": median("pss_mb", runs),
                "RSS MB (context)": median("rss_mb", runs),
                "USS - bare MB": round(uss - bare_uss, 1),
                "USS - bare with the same VAD MB": round(uss - same_vad, 1),
                "tool calls": median("tools", runs),
                "samples": len(runs),
            }
        )
    return table


async def measure(budget: Any) -> Any:
    from bench.common import Report

    samples = 2 if budget.quick else 5
    results = await collect(samples)
    table = rows(results)
    ours = next(  # production: our agent with its VAD (LiveKit's native, src/vad.py)
        r for r in table if r["job (forked from the forkserver)"].startswith("ours agent, native")
    )
    return Report(
        key="memory_fork",
        data={"samples": samples, "rows": table, "raw": results},
        tables=[("Job memory under LiveKit's forkserver (USS, PSS; RSS as context)", table)],
        notes=[
            f"job memory: {samples} jobs per variant, each from a fresh worker's forkserver "
            "(the plugins, the server's preload_modules and LiveKit's _preload, frozen), "
            f"after a {len(TURNS)}-turn text conversation with the sandbox"
        ],
        extra={
            "job_uss_vs_bare_mb": ours["USS - bare MB"],  # the bare agent as LiveKit's examples
            "job_uss_vs_bare_same_vad_mb": ours["USS - bare with the same VAD MB"],
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("worker", help="one worker, one job: prints its JSON line")
    one.add_argument("who", choices=sorted(MAIN))
    one.add_argument("vad", choices=("silero", "native"))
    many = sub.add_parser("run", help="alternate the variants; print the table")
    many.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    if args.command == "worker":
        print(json.dumps(worker(args.who, args.vad)))
    else:
        from bench.common import table as markdown

        print(markdown("Job memory", rows(asyncio.run(collect(args.samples)))))
