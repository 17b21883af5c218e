# The voice-agent worker (agent.py).
#   docker build -t avery-worker .
#   docker run --env-file .env avery-worker
# No key is baked in: all configuration comes from the environment at run time (.env.example).
# scripts/check_image_steps.py replays these steps in CI, where no Docker engine runs.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Every dependency is a manylinux wheel (the models ship inside them), so there is no compiler
# to leave behind and a second build stage would save nothing.
RUN useradd --create-home --uid 10001 agent
WORKDIR /app

# Dependencies first: this layer is reused until the lock changes.  requirements.lock pins
# every package with the hashes of its wheels (make lock writes it from requirements.txt), so
# each build installs the same files.  Bytecode is compiled at install (pip's default) so every
# job process starts without recompiling.
COPY requirements.lock .
RUN pip install --require-hashes -r requirements.lock

COPY agent.py settings.py ./
COPY worker/ worker/
COPY knowlithic_protocol/ knowlithic_protocol/
COPY tts_custom/ tts_custom/
COPY prompts/ prompts/
# The code stays root-owned and read-only, so compile it now: each call's process imports it.
RUN python -m compileall -q agent.py settings.py worker knowlithic_protocol tts_custom

# The worker runs as an unprivileged user.  download-files needs no configuration and no
# secret; whatever a plugin fetches lands in that user's home now, never during a call.
USER 10001
RUN python agent.py download-files

# Production mode serves its health check on 8081: 200 while the worker runs, 503 once it has
# given up connecting to LiveKit.
EXPOSE 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/', timeout=4)"]

# SIGTERM drains: no new calls, the ones in progress may finish (agent.py DRAIN_TIMEOUT_S).
STOPSIGNAL SIGTERM
CMD ["python", "agent.py", "start"]
