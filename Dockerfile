# The voice-agent worker.  Build: docker build -t knowlithic-agent .
# Run:   docker run --env-file .env knowlithic-agent
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 agent
WORKDIR /app

# dependencies first: this layer is reused until requirements.txt changes
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY agent.py settings.py ./
COPY tts_custom/ tts_custom/
COPY prompts/ prompts/

USER agent
# fetch model files at build time (needs no configuration and no secrets)
RUN python agent.py download-files

# the worker's health endpoint in production mode
EXPOSE 8081
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/', timeout=4)"]

CMD ["python", "agent.py", "start"]
