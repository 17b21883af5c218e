"""Whether the TTS voice speaks the language Deepgram listens for: one line at start-up if not.

The TTS server knows each voice's language (Piper's model config, listed by ``GET
/v1/voices``); a table here would go stale as soon as someone loads another voice.  The
server is asked once, briefly, when the worker starts: when it does not answer, nothing is
said here (the plugin reports an unreachable server on the first reply).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from tts_custom.knowlithictts import split_urls

# Start-up waits at most this long for the answer; a local server answers in milliseconds.
LOOKUP_TIMEOUT_S: Final = 2.0
_HTTP_SCHEMES: Final = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def voices_url(tts_server_url: str) -> str:
    """The server's ``/v1/voices`` for a ``ws``/``wss``/``http``/``https`` URL."""
    parts = urlsplit(tts_server_url)
    scheme = _HTTP_SCHEMES.get(parts.scheme.lower(), "http")
    return urlunsplit((scheme, parts.netloc, "/v1/voices", "", ""))


async def fetch_voice_language(
    tts_server_url: str, voice: str, api_key: str | None, *, timeout: float = LOOKUP_TIMEOUT_S
) -> str | None:
    """The language code of ``voice`` as the server lists it (``en_US``), or None if unknown."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    wanted = voice.strip().lower()
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(voices_url(tts_server_url), headers=headers) as response,
        ):
            if response.status != 200:
                return None
            listed: Any = await response.json()
            for entry in listed if isinstance(listed, list) else []:
                names = [entry.get("name"), *entry.get("aliases", [])]
                if wanted in (str(n).lower() for n in names):
                    language = entry.get("language")
                    return language if isinstance(language, str) else None
    return None


def _base(code: str) -> str:
    """``en`` for ``en``, ``en-US`` (Deepgram) and ``en_US`` (Piper)."""
    return code.replace("_", "-").split("-")[0].lower()


def mismatch(deepgram_language: str, voice: str, voice_language: str | None) -> str | None:
    """One line naming both variables when the voice cannot answer in the language heard."""
    if voice_language is None:
        return None
    if deepgram_language.lower() == "multi":
        return (
            f"DEEPGRAM_LANGUAGE=multi hears several languages, but KNOWLITHIC_VOICE={voice} "
            f"speaks {voice_language} only: set DEEPGRAM_LANGUAGE={_base(voice_language)}, or a "
            "voice that speaks the callers' language"
        )
    if _base(deepgram_language) != _base(voice_language):
        return (
            f"DEEPGRAM_LANGUAGE={deepgram_language}, but KNOWLITHIC_VOICE={voice} speaks "
            f"{voice_language}: replies in {deepgram_language} would be read by an "
            f"{voice_language} voice"
        )
    return None


def check_voice_language(
    deepgram_language: str, tts_server_url: str, voice: str, api_key: str | None
) -> str | None:
    """The mismatch line, asking the (first) server; blocking, for start-up before the event
    loop.  Every server of a list serves the same voices."""
    first = split_urls(tts_server_url)[0]
    language = asyncio.run(fetch_voice_language(first, voice, api_key))
    return mismatch(deepgram_language, voice, language)
