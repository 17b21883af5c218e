"""Worker settings for tests: the variables a worker needs, with placeholder values."""

from __future__ import annotations

from settings import Settings, load_settings

FAKE_ENV = {
    "LIVEKIT_URL": "ws://localhost:7880",
    "LIVEKIT_API_KEY": "devkey",
    "LIVEKIT_API_SECRET": "devsecret",
    "DEEPGRAM_API_KEY": "dg-placeholder",
    "GROQ_API_KEY": "gsk-placeholder",
}


def settings(**overrides: str) -> Settings:
    return load_settings({**FAKE_ENV, **overrides})
