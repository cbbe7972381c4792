"""The Dockerfile, checked without a Docker engine.

``test_dockerfile_*`` parse the Dockerfile; ``test_clean_install_runs_the_worker_cli`` does
what its build does: a fresh virtualenv, the locked runtime dependencies and a regular
(non-editable) install of the project, then ``python src/agent.py --help`` from a copy of
the code, in a directory that is not the repository;
``test_dockerfile_run_steps_build_a_working_app`` runs the Dockerfile's own ``uv sync`` and
``download-files`` RUN lines in a copy of what it COPYs. Both use uv's cache, so they are fast;
a package missing from the cache is fetched from PyPI, and a failure to do so fails the
test (never a skip).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMMANDS = ("console", "dev", "start", "download-files")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def test_dockerfile_base_uv_and_sync() -> None:
    steps = _instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    runs = [args for keyword, args in steps if keyword == "RUN"]
    assert any(re.search(r"pip install .*uv==\d+\.\d+\.\d+", run) for run in runs), runs
    syncs = [run for run in runs if run.startswith("uv sync")]
    assert syncs and all("--no-dev" in run for run in syncs), syncs
    assert "--no-install-project" not in syncs[-1], "the last sync must install the project"


def test_dockerfile_runs_as_non_root_and_starts_the_worker() -> None:
    steps = _instructions()
    users = [(i, args) for i, (keyword, args) in enumerate(steps) if keyword == "USER"]
    assert users, "no USER instruction: the image would run as root"
    last_user_index, last_user = users[-1]
    assert last_user.split(":")[0] not in ("root", "0")

    download = [i for i, (kw, args) in enumerate(steps) if kw == "RUN" and "download-files" in args]
    assert download, "model files are not downloaded at build time"
    assert download[-1] > last_user_index, "download-files must run as the runtime user"
    assert "src/agent.py download-files" in steps[download[-1]][1]

    cmds = [args for keyword, args in steps if keyword == "CMD"]
    assert len(cmds) == 1
    assert json.loads(cmds[0]) == ["python", "src/agent.py", "start"]
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    assert "/app/.venv/bin" in env, "CMD's python must be the project venv's"


def test_dockerignore_keeps_secrets_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in (".env", ".env.*", ".git", ".venv"):
        assert pattern in ignored


def _run(
    argv: list[str], *, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_clean_install_runs_the_worker_cli(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not on PATH; the Dockerfile installs it with pip (see .ci/run)")
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")
    }
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"

    # The Dockerfile's `uv sync --no-dev` steps: locked runtime deps, then the project.
    requirements = tmp_path / "requirements.txt"
    _run(
        [uv, "export", "--no-dev", "--no-hashes", "--no-emit-project", "-o", str(requirements)],
        cwd=ROOT,
        env=env,
    )
    _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], env=env)
    _run(
        [uv, "pip", "install", "--quiet", "--python", str(python), "-r", str(requirements)],
        env=env,
    )
    _run([uv, "pip", "install", "--quiet", "--python", str(python), str(ROOT)], env=env)

    # `COPY src ./src` into a fresh directory; `src` must import from the venv.
    app = tmp_path / "app"
    shutil.copytree(ROOT / "src", app / "src", ignore=shutil.ignore_patterns("__pycache__"))
    located = _run(
        [str(python), "-c", "import src.error_recovery, src; print(src.__file__)"],
        cwd=tmp_path,
        env=env,
    )
    assert str(venv) in located.stdout, located.stdout

    result = _run(
        [str(python), "src/agent.py", "--help"],
        cwd=app,
        env={**env, "COLUMNS": "120", "NO_COLOR": "1"},
    )
    for command in COMMANDS:
        assert re.search(rf"\b{re.escape(command)}\b", result.stdout), result.stdout


def test_dockerfile_run_steps_build_a_working_app(tmp_path: Path) -> None:
    """The Dockerfile's own `uv sync` and `download-files` steps, run in a copy of what it
    COPYs (uv's cache allowed, for speed), then the CMD's command line with --help."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not on PATH; the Dockerfile installs it with pip (see .ci/run)")
    app = tmp_path / "app"
    app.mkdir()
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, app / name)
    shutil.copytree(ROOT / "src", app / "src", ignore=shutil.ignore_patterns("__pycache__"))

    venv_bin = app / ".venv" / "bin"
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(
        UV_PROJECT_ENVIRONMENT=str(app / ".venv"),
        UV_PYTHON=sys.executable,
        PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
    )
    runs = [args for keyword, args in _instructions() if keyword == "RUN"]
    steps = [r for r in runs if r.startswith(("uv sync", "python src/agent.py"))]
    assert len(steps) == 3, steps
    for step in steps:
        argv = [a for a in step.split() if a != "--no-cache"]
        if argv[0] == "uv":
            argv[0] = uv
        else:
            argv[0] = str(venv_bin / "python")
        _run(argv, cwd=app, env=env)

    cmd = json.loads(next(args for keyword, args in _instructions() if keyword == "CMD"))
    assert cmd[:2] == ["python", "src/agent.py"]
    result = _run(
        [str(venv_bin / "python"), cmd[1], "--help"],
        cwd=app,
        env={**env, "COLUMNS": "120", "NO_COLOR": "1"},
    )
    for command in COMMANDS:
        assert re.search(rf"\b{re.escape(command)}\b", result.stdout), result.stdout
