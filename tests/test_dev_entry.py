"""Issue #31: ``./dev console`` and ``./dev test`` on machines that lack things, simulated
with a PATH of stand-ins (nothing is installed, nothing real is removed): what each finds
missing, what it would do, the one line it stops with when it cannot, and the exact
command it runs in the end."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "dev"
BASH = shutil.which("bash") or "/bin/bash"
# Real tools the two scripts use besides the ones simulated.
TOOLS = ("bash", "sed", "cat", "env")
CHMOD = shutil.which("chmod") or "/bin/chmod"


def _shim(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!{BASH}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _machine(
    tmp_path: Path,
    *,
    uid: int,
    sudo: bool = False,
    apt: bool = True,
    have: tuple[str, ...] = (),
    pip: bool = True,
    promtool: bool = True,
) -> dict[str, str]:
    """An environment whose PATH holds only stand-ins: ``id`` answering ``uid``, ``sudo``
    that works without a password or not at all, ``apt-get`` that records its calls,
    ``python3`` (the real one; ``-m uv`` fails unless uv is in ``have``, ``-m pip`` as
    ``pip`` says) and the commands in ``have`` (``uv`` records its arguments); Prometheus's
    ``promtool`` is there unless ``promtool`` is false (most cases vary redis-server)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for tool in TOOLS:
        real = shutil.which(tool)
        assert real, tool
        (bin_dir / tool).symlink_to(real)
    _shim(bin_dir, "id", f'[ "$1" = "-u" ] && echo {uid} || echo "uid={uid}"')
    if sudo:
        _shim(bin_dir, "sudo", f'echo "sudo $*" >> {log}; [ "$1" = "-n" ] && [ "$2" = true ]')
    if apt:
        _shim(bin_dir, "apt-get", f'echo "apt-get $*" >> {log}')
    uv_module = "exit 0" if "uv" in have else "exit 1"
    pip_module = "exit 0" if pip else "exit 1"
    _shim(
        bin_dir,
        "python3",
        f'case "$1 $2" in "-m uv") {uv_module};; "-m pip") echo "pip $*" >> {log}; '
        f'{pip_module};; esac\nexec {sys.executable} "$@"',
    )
    for name in have:
        _shim(bin_dir, name, f'echo "{name} $*" >> {log}')
    if promtool and "promtool" not in have:
        _shim(bin_dir, "promtool", "exit 0")
    return {"PATH": str(bin_dir), "HOME": str(tmp_path), "LOG": str(log)}


def _dev(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, str(DEV), *args], env=env, capture_output=True, text=True, timeout=30
    )


def _calls(env: dict[str, str]) -> str:
    log = Path(env["LOG"])
    return log.read_text() if log.exists() else ""


def test_root_on_a_bare_machine_would_install_then_run(tmp_path: Path) -> None:
    env = _machine(tmp_path, uid=0)
    result = _dev(env, "--dry-run", "test", "-x", "-k", "slow or fast")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "dev: missing: redis-server" in out
    assert "dev: would install redis-server with apt-get, as root" in out
    assert "dev: uv: missing" in out
    assert "would install: python3 -m pip install --quiet --disable-pip-version-check uv==" in out
    assert out.strip().endswith("dev: would run: uv run pytest -x -k slow or fast"), out
    assert "apt-get" not in _calls(env)  # a dry run installs nothing


def test_passwordless_sudo_is_used(tmp_path: Path) -> None:
    env = _machine(tmp_path, uid=1000, sudo=True, have=("uv",))
    out = _dev(env, "--dry-run", "test").stdout
    assert "dev: would install redis-server with apt-get, through sudo" in out
    assert "dev: uv: present (uv)" in out


def test_a_user_without_privileges_is_told_the_one_command(tmp_path: Path) -> None:
    env = _machine(tmp_path, uid=1000, have=("uv",))
    assert "would stop: setup-system: missing redis-server; run: sudo bash .ci/setup-system " in (
        _dev(env, "--dry-run", "test").stdout
    )
    result = _dev(env, "test")
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert lines == [
        "setup-system: missing redis-server; run: sudo bash .ci/setup-system --for test"
    ], lines
    assert _calls(env) == ""  # neither apt-get nor uv ran


def test_another_os_without_apt_names_the_brew_command(tmp_path: Path) -> None:
    env = _machine(tmp_path, uid=501, apt=False, have=("uv", "brew"))
    result = _dev(env, "test")
    assert result.returncode == 1
    assert result.stderr.strip() == "setup-system: missing redis-server; run: brew install redis"


def test_the_text_console_needs_no_system_package(tmp_path: Path) -> None:
    """Not root, no sudo, no apt, no redis, no PortAudio: only uv is brought (pip)."""
    env = _machine(tmp_path, uid=1000, apt=False)
    out = _dev(env, "--dry-run", "console").stdout
    assert "dev: no system package needed for console" in out
    assert "dev: uv: missing" in out and "would stop" not in out
    assert out.strip().endswith("dev: would run: uv run python src/agent.py console --text")


def test_no_pip_stops_in_one_line(tmp_path: Path) -> None:
    env = _machine(tmp_path, uid=1000, apt=False, pip=False)
    result = _dev(env, "console")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "python3-pip" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (("test", "-q", "tests/test_x.py"), "uv run pytest -q tests/test_x.py"),
        (("console",), "uv run python src/agent.py console --text"),
        (
            ("console", "--log-level", "debug"),
            "uv run python src/agent.py console --text --log-level debug",
        ),
    ],
)
def test_nothing_missing_runs_exactly_the_readme_command(
    tmp_path: Path, args: tuple[str, ...], command: str
) -> None:
    env = _machine(tmp_path, uid=1000, have=("uv", "redis-server"))
    result = _dev(env, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # quiet when nothing is missing
    assert _calls(env) == command + "\n"


def test_ci_and_docker_use_the_same_entry_and_uv_pin() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./dev setup test" in ci and re.search(r"^\./dev test$", ci, re.M), ci
    pin = re.search(r"^UV_VERSION=(\S+)$", DEV.read_text(), re.M)
    assert pin and f'"uv=={pin[1]}"' in (ROOT / "Dockerfile").read_text()
    assert os.access(DEV, os.X_OK)


def test_root_installs_what_is_missing_then_runs(tmp_path: Path) -> None:
    """Not a dry run: as root, apt-get (a stand-in that "installs" redis-server) and pip
    (a stand-in that "installs" uv) are called once each, then the README's command."""
    env = _machine(tmp_path, uid=0, pip=True)
    bin_dir = Path(env["PATH"])
    log = env["LOG"]
    _shim(
        bin_dir,
        "apt-get",
        f'echo "apt-get $*" >> {log}\ncase "$*" in *install*redis-server*) '
        f'printf "#!{BASH}\\necho redis-server >> {log}\\n" > {bin_dir}/redis-server; '
        f"{CHMOD} +x {bin_dir}/redis-server;; esac",
    )
    _shim(
        bin_dir,
        "python3",
        f'case "$1 $2" in "-m uv") exit 1;; "-m pip") echo "pip $*" >> {log}; '
        f'case "$*" in *install*) printf "#!{BASH}\\necho uv \\"\\$*\\" >> {log}\\n" '
        f"> {bin_dir}/uv; {CHMOD} +x {bin_dir}/uv;; esac; exit 0;; esac\n"
        f'exec {sys.executable} "$@"',
    )
    result = _dev(env, "test", "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = _calls(env).splitlines()
    assert calls[0] == "apt-get update -qq"
    assert calls[1].startswith("apt-get install -y -qq --no-install-recommends redis-server")
    assert any("pip install" in call and "uv==0.13.9" in call for call in calls), calls
    assert calls[-1] == "uv run pytest -q", calls
    # Run again: nothing is missing any more, so nothing is installed.
    Path(log).unlink()
    assert _dev(env, "test", "-q").returncode == 0
    assert _calls(env) == "uv run pytest -q\n"


def test_a_missing_promtool_is_brought_for_the_tests_only(tmp_path: Path) -> None:
    env = _machine(tmp_path, uid=0, have=("uv", "redis-server"), promtool=False)
    out = _dev(env, "--dry-run", "test").stdout
    assert "dev: missing: prometheus" in out
    assert "dev: would install prometheus with apt-get, as root" in out
    console = _dev(env, "--dry-run", "console").stdout
    assert "prometheus" not in console
