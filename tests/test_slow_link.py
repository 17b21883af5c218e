"""A slow, jittery link between the plugin and the server: audio stays complete and in order."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import MakeTTS
from tests.delay_proxy import DelayProxy, LinkConditions
from tests.fake_knowlithic import FakeKnowlithicServer
from tests.plugin_helpers import expected_digest, speak

REPLY = (
    "This reply crosses a slow link.",
    "Every sentence must arrive whole.",
    "And in the order it was written.",
)


@pytest.fixture
async def proxy(server: FakeKnowlithicServer) -> AsyncIterator[DelayProxy]:
    link = DelayProxy("127.0.0.1", server.port, LinkConditions(rtt=0.1, jitter=0.03, seed=7))
    await link.start()
    yield link
    await link.aclose()


async def test_latency_and_jitter_lose_and_reorder_nothing(
    server: FakeKnowlithicServer, proxy: DelayProxy, make_tts: MakeTTS
) -> None:
    server.behavior.chunk_bytes = 320  # many small messages, each delayed separately
    tts = make_tts(base_url=proxy.url)
    for _ in range(3):
        spoken = await speak(tts, " ".join(REPLY))
        assert spoken.digest == expected_digest(REPLY)
    assert proxy.connections == 1
