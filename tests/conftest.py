from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.fake_knowlithic import FakeKnowlithicServer
from tts_custom.knowlithictts import TTS

MakeTTS = Callable[..., TTS]


@pytest.fixture
async def server() -> AsyncIterator[FakeKnowlithicServer]:
    srv = FakeKnowlithicServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def make_tts(server: FakeKnowlithicServer) -> AsyncIterator[MakeTTS]:
    """Build plugin instances pointed at the test server; all are closed after the test."""
    made: list[TTS] = []

    def make(**kwargs: Any) -> TTS:
        kwargs.setdefault("base_url", server.url)
        tts = TTS(**kwargs)
        made.append(tts)
        return tts

    yield make
    for tts in made:
        await tts.aclose()
