"""A long reply spoken through a fault injected part-way, and the check that it was resumed
with nothing lost or repeated: what the restart tests and the failover tests share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
from livekit.agents.tts import TTSError

from tests.plugin_helpers import BYTES_PER_SECOND, LONG_REPLY, WORKER, Spoken, loudness
from tests.server.asr import normalize, transcribe, word_errors
from tts_custom.knowlithictts import TTS

T = TypeVar("T")


def collect_errors(plugin: TTS) -> list[TTSError]:
    errors: list[TTSError] = []
    plugin.on("error", errors.append)
    return errors


async def speak_through_fault(
    tts: TTS, after: float, fault: Callable[[], Awaitable[T]]
) -> tuple[Spoken, int, T]:
    """Speak ``LONG_REPLY`` and start ``fault()`` once ``after`` seconds of its audio arrived.

    Returns what was heard, how many bytes of it came before the fault, and the fault's
    result (awaited even if the reply failed: a server is never left half-started).
    """
    spoken = Spoken()
    task: asyncio.Task[T] | None = None
    heard_before = 0
    try:
        async with tts.stream(conn_options=WORKER) as stream:
            stream.push_text(LONG_REPLY)
            stream.end_input()
            async for event in stream:
                spoken.add(event)
                if task is None and len(spoken.pcm) >= after * BYTES_PER_SECOND:
                    heard_before = len(spoken.pcm)
                    task = asyncio.ensure_future(fault())
    finally:
        if task is not None:
            await task
    assert task is not None, "the reply ended before the fault"
    return spoken, heard_before, task.result()


def assert_resumed(spoken: Spoken, reference: Spoken, heard_before: int, *, lossless: bool) -> None:
    """Nothing lost, nothing twice: as long as the undisturbed reply, identical to it up to the
    fault (the rest is a new rendition, resumed where the caller stopped), the same speech at
    the same moments, and, when lossless, the same words recognized."""
    assert abs(len(spoken.pcm) - len(reference.pcm)) <= 0.05 * BYTES_PER_SECOND
    assert spoken.pcm[:heard_before] == reference.pcm[:heard_before]
    # no gap, no sentence moved or repeated
    assert np.corrcoef(loudness(spoken.pcm), loudness(reference.pcm))[0, 1] > 0.95
    if lossless:
        # with Opus the new rendition's coding differs slightly, and pocketsphinx's
        # whole-utterance search with it
        heard = normalize(transcribe(spoken.pcm))
        undisturbed = normalize(transcribe(reference.pcm))
        assert word_errors(undisturbed, heard) <= 2, (" ".join(undisturbed), " ".join(heard))
