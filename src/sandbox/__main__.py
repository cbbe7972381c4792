"""Command line for the sandbox: run it, and steer a running one's faults.

::

    uv run python -m src.sandbox [--port-base 8701 | --ephemeral] [--write-env .env.local]
    uv run python -m src.sandbox fault SERVICE KIND [--endpoint GLOB] [--count N]
                                       [--retry-after S] [--delay-ms MS] [--every K]
                                       [--size-bytes N]
    uv run python -m src.sandbox clear SERVICE|all [--endpoint GLOB]
    uv run python -m src.sandbox journal SERVICE [--json]

Serving prints the environment (``KEY=VALUE`` lines) that points the agent at the
sandbox and runs until SIGINT/SIGTERM. The other commands talk to the admin API of a
running sandbox, found by ``--port-base`` (default 8701) or by the URLs in
``--env-file`` (the file ``--write-env`` wrote, needed for an ``--ephemeral`` sandbox).
Exit status: 0 done, 1 the sandbox could not be started or reached, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from ..registry import VENDORS
from . import DEFAULT_PORT_BASE, MODEL, Sandbox, service_names, service_port
from .base import ADMIN_PREFIX, FaultKind

__all__ = ["main", "merge_env_file", "service_urls_from_env"]

STALL = "stall"  # the OpenAI stand-in's own fault: stop a stream after its first chunk
_KINDS = (*(kind.value for kind in FaultKind), STALL)


def _url_keys() -> dict[str, str]:
    """Service name -> the env variable of its address (the registry's, and the model's)."""
    return {**{v.name: v.url_key for v in VENDORS}, MODEL: "OPENAI_BASE_URL"}


_ADMIN_TIMEOUT_S = 5.0
_CLI = "uv run python -m src.sandbox"  # as printed in hints: works verbatim from the repo root


class CommandError(Exception):
    """A failure to report in one line (exit status 1), never with a traceback."""


# -- argument parsing -------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _port_base(text: str) -> int:
    value = _int(text)
    top = 65_535 - len(service_names()) + 1
    if not 1 <= value <= top:
        raise argparse.ArgumentTypeError(f"must be 1..{top}, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    SERVICES = service_names()
    parser = argparse.ArgumentParser(
        prog=_CLI,
        description=f"Local stand-ins for {', '.join(VENDORS.names())} and an "
        "OpenAI-compatible scripted model (no real vendor, no real model).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the sandbox (the default command)")
    ports = serve.add_mutually_exclusive_group()
    ports.add_argument(
        "--port-base",
        type=_port_base,
        default=DEFAULT_PORT_BASE,
        help=f"first port; services take {DEFAULT_PORT_BASE}..+{len(SERVICES) - 1} in the "
        f"order {', '.join(SERVICES)} (default {DEFAULT_PORT_BASE})",
    )
    ports.add_argument("--ephemeral", action="store_true", help="let the OS pick free ports")
    serve.add_argument(
        "--write-env",
        metavar="PATH",
        type=Path,
        help="also write the env lines into PATH (e.g. .env.local), keeping its other lines",
    )

    target = argparse.ArgumentParser(add_help=False)
    where = target.add_mutually_exclusive_group()
    where.add_argument(
        "--port-base",
        type=_port_base,
        default=DEFAULT_PORT_BASE,
        help=f"port base the sandbox was started with (default {DEFAULT_PORT_BASE})",
    )
    where.add_argument(
        "--env-file",
        metavar="PATH",
        type=Path,
        help="find the servers by the *_BASE_URL lines in PATH (see --write-env)",
    )

    fault = commands.add_parser(
        "fault",
        parents=[target],
        help="inject a fault into a running sandbox",
        description=f"Kinds: {', '.join(_KINDS)} ({STALL} is openai only: a stream stops "
        "after its first chunk until cleared).",
    )
    fault.add_argument("service", choices=SERVICES, metavar="SERVICE", help=", ".join(SERVICES))
    fault.add_argument("kind", choices=_KINDS, metavar="KIND", help=", ".join(_KINDS))
    fault.add_argument(
        "--endpoint",
        metavar="GLOB",
        help="fnmatch pattern on the request path (default '*'; for stall: /v1/chat/completions)",
    )
    fault.add_argument("--count", type=_positive_int, help="fail only the next N matching requests")
    fault.add_argument(
        "--retry-after",
        type=_non_negative_float,
        default=1.0,
        metavar="S",
        help="429: seconds sent in Retry-After (default 1)",
    )
    fault.add_argument(
        "--delay-ms",
        type=_non_negative_int,
        default=0,
        metavar="MS",
        help="slow: milliseconds before answering (default 0)",
    )
    fault.add_argument(
        "--every",
        type=_positive_int,
        default=2,
        metavar="K",
        help="flapping: every K-th request fails (default 2)",
    )
    fault.add_argument(
        "--size-bytes",
        type=_positive_int,
        default=10_000_000,
        metavar="N",
        help="huge, huge-stream: body size in bytes (default 10000000)",
    )

    clear = commands.add_parser(
        "clear", parents=[target], help="remove faults and release hung requests"
    )
    clear.add_argument(
        "service",
        choices=(*SERVICES, "all"),
        metavar="SERVICE|all",
        help="a service or all",
    )
    clear.add_argument("--endpoint", metavar="GLOB", help="only faults set for this endpoint")

    journal = commands.add_parser(
        "journal", parents=[target], help="print the requests a server received"
    )
    journal.add_argument("service", choices=SERVICES, metavar="SERVICE", help=", ".join(SERVICES))
    journal.add_argument("--json", action="store_true", help="print the full entries as JSON")
    return parser


# -- env lines --------------------------------------------------------------------------------


def service_urls_from_env(env: Mapping[str, str | None]) -> dict[str, str]:
    """Service name -> server root URL, from the env lines of a running sandbox."""
    urls: dict[str, str] = {}
    for service, key in _url_keys().items():
        value = env.get(key)
        if value:
            url = value.rstrip("/")
            urls[service] = url.removesuffix("/v1") if service == MODEL else url
    return urls


def merge_env_file(path: Path, env: Mapping[str, str]) -> None:
    """Write ``env`` into the dotenv file ``path``: replace those keys, keep other lines."""
    kept: list[str] = []
    if path.exists():
        for line in path.read_text().splitlines():
            key = line.removeprefix("export ").split("=", 1)[0].strip()
            if "=" not in line or key not in env:
                kept.append(line)
    lines = [*kept, *(f"{key}={value}" for key, value in env.items())]
    path.write_text("\n".join(lines) + "\n")


# -- serve ------------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    sandbox = Sandbox(port_base=0 if args.ephemeral else args.port_base)
    try:
        await sandbox.start()
    except OSError as exc:
        raise CommandError(f"{exc.strerror or exc} (try --port-base N or --ephemeral)") from exc
    try:
        env = sandbox.env()
        print("# PandaDoc sandbox: local stand-ins, no real vendor or model is called.")
        for key, value in env.items():
            print(f"{key}={value}")
        if args.write_env is not None:
            merge_env_file(args.write_env, env)
            print(f"# Wrote these to {args.write_env}. Run the agent against the sandbox:")
            print("#   uv run python src/agent.py console --text")
        else:
            print(
                "# Run the agent against it: export the lines above (or restart with "
                "--write-env .env.local), then: uv run python src/agent.py console --text"
            )
        if args.ephemeral and args.write_env is None:
            print(f"# Faults: restart with --write-env PATH, then {_CLI} fault ... --env-file PATH")
        else:
            flag = f" --env-file {args.write_env}" if args.ephemeral else ""
            if not args.ephemeral and args.port_base != DEFAULT_PORT_BASE:
                flag = f" --port-base {args.port_base}"
            print(f"# Faults: {_CLI} fault amplitude 503{flag}   (undo: {_CLI} clear all{flag})")
        print("# Press Ctrl+C to stop.", flush=True)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await sandbox.stop()
    print("# Sandbox stopped.", flush=True)
    return 0


# -- admin commands ---------------------------------------------------------------------------


def _service_urls(args: argparse.Namespace) -> dict[str, str]:
    if args.env_file is None:
        return {s: f"http://127.0.0.1:{service_port(s, args.port_base)}" for s in service_names()}
    if not args.env_file.is_file():
        raise CommandError(f"no env file at {args.env_file}")
    urls = service_urls_from_env(dotenv_values(args.env_file))
    if not urls:
        keys = ", ".join(_url_keys().values())
        raise CommandError(f"{args.env_file} has no sandbox URLs ({keys})")
    return urls


def _admin(base_url: str, method: str, path: str, payload: Any = None) -> Any:
    """Call the admin API of the server at ``base_url``; returns the decoded JSON answer."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        f"{base_url}{ADMIN_PREFIX}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=_ADMIN_TIMEOUT_S) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise CommandError(f"{base_url} refused: {_error_message(exc)}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CommandError(
            f"no sandbox answering at {base_url} ({reason}); start one with "
            f"`{_CLI}`, or pass its --port-base / --env-file"
        ) from exc


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
    except ValueError:
        return f"HTTP {exc.code}"
    error = body.get("error", body) if isinstance(body, dict) else body
    return str(error.get("message", error) if isinstance(error, dict) else error)


def _url_for(urls: Mapping[str, str], service: str) -> str:
    if service not in urls:
        raise CommandError(f"the env file has no URL for {service} ({_url_keys()[service]})")
    return urls[service]


def _fault(args: argparse.Namespace) -> int:
    url = _url_for(_service_urls(args), args.service)
    if args.kind == STALL:
        if args.service != MODEL:
            raise CommandError(f"{STALL} is an openai fault, not one for {args.service}")
        endpoint = args.endpoint or "/v1/chat/completions"
        _admin(url, "POST", "/stall", {"endpoint": endpoint, "count": args.count})
    else:
        endpoint = args.endpoint or "*"
        payload = {
            "kind": args.kind,
            "endpoint": endpoint,
            "count": args.count,
            "retry_after": args.retry_after,
            "delay_ms": args.delay_ms,
            "every": args.every,
            "size_bytes": args.size_bytes,
        }
        _admin(url, "POST", "/faults", payload)
    scope = "until cleared" if args.count is None else f"for the next {args.count} request(s)"
    print(f"{args.service}: {args.kind} on {endpoint} {scope}")
    return 0


def _clear(args: argparse.Namespace) -> int:
    urls = _service_urls(args)
    names = service_names()
    services = [s for s in names if s in urls] if args.service == "all" else [args.service]
    query = (
        "" if args.endpoint is None else "?" + urllib.parse.urlencode({"endpoint": args.endpoint})
    )
    for service in services:
        _admin(_url_for(urls, service), "DELETE", f"/faults{query}")
        print(
            f"{service}: faults cleared" + ("" if args.endpoint is None else f" on {args.endpoint}")
        )
    return 0


def _journal(args: argparse.Namespace) -> int:
    entries = _admin(_url_for(_service_urls(args), args.service), "GET", "/journal")
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print(f"{args.service}: no requests yet")
    first = entries[0]["at"] if entries else 0.0
    for entry in entries:
        query = "?" + urllib.parse.urlencode(entry["query"]) if entry["query"] else ""
        status = entry["status"] if entry["status"] is not None else "-"
        fault = f"  [fault: {entry['fault']}]" if entry["fault"] else ""
        when = f"+{entry['at'] - first:8.3f}s"
        print(f"{when}  {entry['method']:6} {entry['path']}{query}  {status}{fault}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help")):
        args_list.insert(0, "serve")  # `python -m src.sandbox [--options]` serves
    args = _parser().parse_args(args_list)
    try:
        if args.command == "serve":
            return asyncio.run(_serve(args))
        if args.command == "fault":
            return _fault(args)
        if args.command == "clear":
            return _clear(args)
        return _journal(args)
    except CommandError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
