# PandaDoc Trialist voice agent: worker image for LiveKit Cloud or any container host.
#   docker build -t pandadoc-trialist .
#   docker run --env-file .env pandadoc-trialist
# Mirrored without a Docker engine by tests/test_packaging.py.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

# uv from PyPI, pinned (the same version .ci/run installs).
RUN pip install --no-cache-dir "uv==0.13.9"

# Unprivileged user that owns the app and its model cache.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin appuser
WORKDIR /app
RUN chown appuser:appuser /app
USER appuser

# Dependencies first (cached while only the code changes): exactly the set pinned in
# pyproject.toml's [tool.uv] constraint-dependencies (no lock file is committed).
COPY --chown=appuser:appuser pyproject.toml ./
RUN uv sync --no-dev --no-install-project --no-cache

# The project itself: the package is literally named `src`, installed into the venv.
COPY --chown=appuser:appuser README.md ./
COPY --chown=appuser:appuser src ./src
RUN uv sync --no-dev --no-editable --no-cache

ENV PATH="/app/.venv/bin:$PATH"

# Model files of every installed LiveKit plugin baked into the image (LiveKit's current
# command; the VAD's model, LiveKit's native Silero, ships inside livekit-local-inference's
# wheel and is checked by the tests).
RUN python -m livekit.agents download-files

CMD ["python", "src/agent.py", "start"]
