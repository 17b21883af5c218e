"""One TTS instance under 100 concurrent streams: nothing mixed, nothing left behind.

Memory growth under sustained load is measured by bench/plugin_load.py (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import gc

from tests.conftest import MakeTTS
from tests.fake_knowlithic import FakeKnowlithicServer
from tests.plugin_helpers import eventually, expected_digest, speak

STREAMS = 100


def reply(n: int) -> tuple[str, str]:
    return (
        f"Caller {n} asked about appointment {n * 7}.",
        f"Answer {n}: come on day {n % 28 + 1}.",
    )


async def test_100_concurrent_streams_arrive_complete_and_unmixed(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.chunk_bytes = 640
    server.behavior.chunk_delay = 0.001
    tts = make_tts()
    before = set(asyncio.all_tasks())
    async with asyncio.timeout(60):
        results = await asyncio.gather(*(speak(tts, " ".join(reply(n))) for n in range(STREAMS)))
    for n, spoken in enumerate(results):
        assert spoken.digest == expected_digest(reply(n)), f"stream {n}"
    assert len({r.request_ids.pop() for r in results}) == STREAMS
    assert server.received.connections == 1
    assert len(server.received.requests) == 2 * STREAMS

    conn = tts._pool.current
    assert conn is not None and conn.in_flight == 0  # no request state left on the socket

    await tts.aclose()
    await eventually(lambda: server.open_connections == 0)
    gc.collect()
    leaked = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leaked == [], [t.get_name() for t in leaked]
