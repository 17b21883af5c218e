"""A slow, jittery link between the plugin and the server: audio stays complete and in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.conftest import MakeTTS
from tests.delay_proxy import DelayProxy, LinkConditions
from tests.fake_knowlithic import FakeKnowlithicServer
from tests.loopback import LoopbackServer
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


class _Sink(LoopbackServer):
    """Counts the bytes it receives from each connection."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[int] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.received)
        self.received.append(0)
        while data := await reader.read(65536):
            self.received[index] += len(data)
        writer.close()


async def test_a_bandwidth_cap_is_one_link_shared_by_every_connection() -> None:
    # the benchmarks' constrained link (bench/opus_link.py) must really be constrained: two
    # connections sending 50 kB each over 1 Mbit/s need 0.8 s together, not 0.4 s each
    sink = _Sink()
    await sink.start()
    proxy = DelayProxy("127.0.0.1", sink.port, LinkConditions(bandwidth=1_000_000))
    await proxy.start()
    try:
        started = time.monotonic()

        async def send(size: int) -> None:
            _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(bytes(size))
            await writer.drain()
            writer.write_eof()

        await asyncio.gather(send(50_000), send(50_000))
        async with asyncio.timeout(10):
            while sum(sink.received) < 100_000 or len(sink.received) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        elapsed = time.monotonic() - started
    finally:
        await proxy.aclose()
        await sink.aclose()
    assert sink.received == [50_000, 50_000]
    assert elapsed >= 0.75  # 800 kbit at 1 Mbit/s; a loaded machine is only slower
