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

# Dependencies first (cached while only the code changes). uv.lock is used when present.
COPY --chown=appuser:appuser pyproject.toml uv.lock* ./
RUN uv sync --no-dev --no-install-project --no-cache

# The project itself: the package is literally named `src`, installed into the venv.
COPY --chown=appuser:appuser README.md ./
COPY --chown=appuser:appuser src ./src
RUN uv sync --no-dev --no-editable --no-cache

ENV PATH="/app/.venv/bin:$PATH"

# Model files (VAD, turn detector, ...) baked into the image.
RUN python src/agent.py download-files

CMD ["python", "src/agent.py", "start"]
