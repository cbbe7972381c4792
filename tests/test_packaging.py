"""The Dockerfile and the pinned dependency set, checked without a Docker engine.

``test_dockerfile_*`` parse the Dockerfile;
``test_dockerfile_run_steps_build_a_working_app`` does what its build does: the Dockerfile's
own ``uv sync`` and ``download-files`` RUN lines in a copy of what it COPYs (a directory
that is not the repository, no lock file, as on a clean machine), then compares what was
installed with the pins in ``pyproject.toml``, checks the Silero model is in place, that
``src`` imports from the virtualenv (a regular, non-editable install) and that the CMD's
command line answers ``--help``. ``test_pins_*`` check the pins are the complete resolution
and what this environment has. They use uv's cache, so they are fast; a package missing
from the cache is fetched from PyPI, and a failure to do so fails the test (never a skip).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMMANDS = ("console", "dev", "start", "download-files")
PROJECT = "pandadoc-trialist-agent"
REFRESH = "refresh them with `python3 scripts/pin-constraints`"


def _pins() -> dict[str, str]:
    """Package -> pinned version, for the pins whose marker applies to this Python."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins: dict[str, str] = {}
    for text in config["tool"]["uv"]["constraint-dependencies"]:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        (spec,) = requirement.specifier
        assert spec.operator == "==", text
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def _unpinned_or_different(installed: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    pins = _pins()
    return {
        name: (version, pins.get(name))
        for name, version in installed.items()
        if name != PROJECT and pins.get(name) != version
    }


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
    assert steps[download[-1]][1] == "python -m livekit.agents download-files"

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


def test_dockerfile_run_steps_build_a_working_app(tmp_path: Path) -> None:
    """The Dockerfile's own `uv sync` and `download-files` steps, run in a copy of what it
    COPYs (uv's cache allowed, for speed), then the CMD's command line with --help."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not on PATH; the Dockerfile installs it with pip (see .ci/run)")
    app = tmp_path / "app"
    app.mkdir()
    for keyword, args in _instructions():  # exactly what the Dockerfile COPYs
        if keyword != "COPY":
            continue
        *sources, dest = [a for a in args.split() if not a.startswith("--")]
        for source in sources:
            target = app / dest / Path(source).name if dest.endswith("/") else app / dest
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(ROOT / source, target)
    assert not (app / "uv.lock").exists()

    venv_bin = app / ".venv" / "bin"
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(
        UV_PROJECT_ENVIRONMENT=str(app / ".venv"),
        UV_PYTHON=sys.executable,
        PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
    )
    runs = [args for keyword, args in _instructions() if keyword == "RUN"]
    steps = [r for r in runs if r.startswith(("uv sync", "python "))]
    assert len(steps) == 3, steps
    outputs = []
    for step in steps:
        argv = [a for a in step.split() if a != "--no-cache"]
        if argv[0] == "uv":
            argv[0] = uv
        else:
            argv[0] = str(venv_bin / "python")
        result = _run(argv, cwd=app, env=env)
        outputs.append(result.stdout + result.stderr)
    assert "deprecated" not in outputs[-1].lower(), outputs[-1]

    # Installed exactly the pinned set.
    listed = _run(
        [
            str(venv_bin / "python"),
            "-c",
            "import json, importlib.metadata as m; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
        ],
        cwd=tmp_path,
        env=env,
    )
    installed = {canonicalize_name(k): v for k, v in json.loads(listed.stdout).items()}
    assert "livekit-agents" in installed and PROJECT in installed
    assert _unpinned_or_different(installed) == {}, f"(installed, pinned); {REFRESH}"

    # The prewarm's VAD runs from what is installed: LiveKit's native Silero model, its
    # weights inside livekit-local-inference's library (nothing for download-files to fetch).
    model = _run(
        [
            str(venv_bin / "python"),
            "-c",
            "import numpy as np; from src.vad import build_vad; "
            "from livekit.local_inference import VAD; build_vad(); "
            "print(VAD().predict(np.zeros(512, dtype=np.int16)))",
        ],
        cwd=tmp_path,
        env=env,
    )
    assert 0 <= float(model.stdout) < 0.5, model.stdout  # silence is not speech

    # The package is literally named `src`: it must import from the venv, not the cwd.
    located = _run(
        [str(venv_bin / "python"), "-c", "import src.error_recovery, src; print(src.__file__)"],
        cwd=tmp_path,
        env=env,
    )
    assert str(app / ".venv") in located.stdout, located.stdout

    cmd = json.loads(next(args for keyword, args in _instructions() if keyword == "CMD"))
    assert cmd[:2] == ["python", "src/agent.py"]
    result = _run(
        [str(venv_bin / "python"), cmd[1], "--help"],
        cwd=app,
        env={**env, "COLUMNS": "120", "NO_COLOR": "1"},
    )
    for command in COMMANDS:
        assert re.search(rf"\b{re.escape(command)}\b", result.stdout), result.stdout


def test_pins_are_the_complete_resolution() -> None:
    """Every package uv resolves (all groups) is pinned at the resolved version, and
    nothing else is: a dependency added without refreshing the pins fails here."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not on PATH (see .ci/run)")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    exported = _run(
        [
            uv,
            "export",
            "--all-groups",
            "--no-hashes",
            "--no-emit-project",
            "--no-header",
            "--no-annotate",
            "--format",
            "requirements-txt",
        ],
        cwd=ROOT,
        env=env,
    ).stdout
    resolved = sorted(
        " ; ".join(part.strip() for part in line.split(";", 1))
        for line in exported.splitlines()
        if line.strip() and not line.startswith(("#", "-"))
    )
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pinned = sorted(config["tool"]["uv"]["constraint-dependencies"])
    assert [p.lower() for p in pinned] == [r.lower() for r in resolved], REFRESH


def test_pins_match_this_environment() -> None:
    """The environment `uv sync` made for the tests holds the pinned versions only."""
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    assert "pytest" in installed
    assert _unpinned_or_different(installed) == {}, f"(installed, pinned); {REFRESH}"
