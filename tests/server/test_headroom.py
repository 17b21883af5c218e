"""Admission by measured headroom: the predictor fed with measurements (deterministic), and a
real server process filled by real concurrent replies."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

import knowlithic_protocol as protocol
from tests.server_process import ServerProcess
from tts_server.headroom import COLD_SECONDS_PER_CHARACTER, Headroom, Pending

from .helpers import Client, Connect, Result, StartServer

SHARE = 0.9  # each segment counts as taking a ninth more than measured (headroom)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def warm(headroom: Headroom, seconds_per_character: float, samples: int = 20) -> None:
    """Feed it ``samples`` segments of 100 characters at this cost."""
    for _ in range(samples):
        headroom.observe_synthesis(100, 100 * seconds_per_character)


# -- the predictor, fed with measurements ------------------------------------------------------


def test_a_cold_server_counts_the_conservative_prior_until_it_has_measured() -> None:
    headroom = Headroom(workers=2, target=0.25, clock=Clock())
    assert headroom.cost == COLD_SECONDS_PER_CHARACTER  # nothing measured yet
    warm(headroom, 0.001, samples=19)
    assert headroom.cost == COLD_SECONDS_PER_CHARACTER  # faster, but not enough samples yet
    headroom.observe_synthesis(100, 0.1)
    assert headroom.cost == pytest.approx(0.001)  # warm: the measurement alone
    slow = Headroom(workers=2, target=0.25, clock=Clock())
    warm(slow, 0.05, samples=3)  # a slower machine than the prior: believed at once
    assert slow.cost == pytest.approx(0.05)


def test_an_idle_server_admits_a_reply_however_slow_its_synthesis() -> None:
    headroom = Headroom(workers=2, target=0.25, clock=Clock())
    warm(headroom, 0.02)
    forecast = headroom.forecast([100], [4.0])  # 2 s of synthesis, nothing else owed
    assert forecast.admits and forecast.first_audio == pytest.approx(2.0 / SHARE)


def test_a_new_reply_waits_behind_work_due_before_it() -> None:
    clock = Clock()
    headroom = Headroom(workers=2, target=0.25, clock=clock)
    warm(headroom, 0.001)
    # four replies admitted a moment ago, each owing a first segment of 100 characters (0.1 s)
    for _ in range(4):
        headroom.add(Pending([100], [4.0], next_due=clock.now + 0.25))
    forecast = headroom.forecast([50], [2.0])
    # two workers take two of them each, then it: 0.1 + 0.1 + 0.05 s
    assert forecast.first_audio == pytest.approx(0.25 / SHARE)
    assert not forecast.admits  # 0.28 s > 0.25 s
    headroom.remove(next(iter(headroom.pending)))
    forecast = headroom.forecast([50], [2.0])
    # three before it: a worker is free after one of them
    assert forecast.first_audio == pytest.approx(0.15 / SHARE) and forecast.admits


def test_a_reply_that_would_make_an_admitted_one_late_is_refused() -> None:
    clock = Clock()
    headroom = Headroom(workers=1, target=0.5, clock=clock)
    warm(headroom, 0.01)
    # an admitted reply's later sentence: 1 s of work, needed in 1.25 s (in time, 1.11 s)
    headroom.add(Pending([100], [4.0], next_due=clock.now + 1.25))
    assert headroom.forecast([], []).admits  # nothing new: nothing late
    forecast = headroom.forecast([20], [0.8])  # 0.2 s of its own: its first audio is in time
    assert forecast.first_audio == pytest.approx(0.2 / SHARE)
    assert not forecast.admits  # but the admitted sentence would finish at 1.33 s: late
    clock.now -= 1.0  # the same, one second earlier: room for both
    assert headroom.forecast([20], [0.8]).admits


def test_a_segment_being_synthesized_counts_only_what_is_left_of_it() -> None:
    clock = Clock()
    headroom = Headroom(workers=1, target=0.25, clock=clock)
    warm(headroom, 0.01)
    pending = Pending([100, 100], [4.0, 4.0], next_due=clock.now)
    headroom.add(pending)
    pending.begin_segment(clock.now)
    clock.now += 0.9  # 0.9 s of its 1 s done
    jobs = [x for job in pending.jobs(clock.now, headroom.cost) for x in job]
    assert jobs == pytest.approx([100.0, 0.1, 104.0, 1.0])
    pending.end_segment(next_due=clock.now + 3.0)
    jobs = [x for job in pending.jobs(clock.now, headroom.cost) for x in job]
    assert jobs == pytest.approx([clock.now + 3.0, 1.0])


def test_the_cost_rises_fast_and_falls_slowly() -> None:
    headroom = Headroom(workers=2, target=0.25, clock=Clock())
    warm(headroom, 0.004)
    headroom.observe_synthesis(100, 1.0)  # one slow segment (0.01 s a character)
    risen = headroom.cost
    assert risen == pytest.approx(0.004 + 0.3 * 0.006)
    headroom.observe_synthesis(100, 0.4)  # back to normal: it comes down a twentieth
    assert headroom.cost == pytest.approx(risen - 0.05 * (risen - 0.004))
    for _ in range(100):
        headroom.observe_synthesis(100, 0.4)
    assert headroom.cost == pytest.approx(0.004, rel=0.01)


def test_the_event_loops_lag_delays_every_first_audio() -> None:
    headroom = Headroom(workers=2, target=0.25, clock=Clock())
    warm(headroom, 0.001)
    for _ in range(30):
        headroom.observe_lag(0.1)
    forecast = headroom.forecast([50], [2.0])
    assert forecast.first_audio == pytest.approx(0.1 + 0.05 / SHARE, rel=0.01)


def test_utilization_is_the_share_of_worker_time_in_use() -> None:
    headroom = Headroom(workers=2, target=0.25, clock=Clock())
    for _ in range(600):  # 30 s at 1.5 of 2 workers busy (averaged over about 5 s)
        headroom.observe_utilization(busy=0.075, elapsed=0.05)
    assert headroom.utilization == pytest.approx(0.75, rel=0.01)


def test_a_target_of_zero_admits_everything() -> None:
    headroom = Headroom(workers=1, target=0.0, clock=Clock())
    headroom.add(Pending([10_000], [400.0], next_due=0.0))  # hopelessly late
    assert not headroom.enabled and headroom.ready_for(50)


# -- the server ----------------------------------------------------------------------------------

# One long reply: three sentences (about 20 s of speech), sent at once as the plugin does.
LONG_REPLY = (
    "Thanks for waiting, I found two flights that leave tomorrow morning from the airport "
    "closest to your home, and both of them still have seats by the window.",
    "The first one departs at seven fifteen and arrives just before ten, with a short stop in "
    "Denver where you would stay on the same plane for about forty minutes.",
    "The second one leaves at nine thirty and costs a little more, but it flies direct and "
    "lands early in the afternoon, which leaves you the rest of the day.",
)


async def send_reply(client: Client, stream_id: str, sentences: tuple[str, ...]) -> list[str]:
    ids = [f"{stream_id}-{i}" for i in range(len(sentences))]
    for rid, sentence in zip(ids, sentences, strict=True):
        await client.request(sentence, request_id=rid, stream_id=stream_id)
    return ids


def busy(result: Result) -> bool:
    return isinstance(result.terminal, protocol.Error) and result.terminal.code == protocol.ERR_BUSY


async def metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    async with http.get(url) as response:
        text = await response.text()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture
async def process() -> AsyncIterator[ServerProcess]:
    server = ServerProcess("--rate-limit", "0")  # default admission, in a process of its own
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def open_client(http: aiohttp.ClientSession, url: str) -> Client:
    ws = await http.ws_connect(url, protocols=(protocol.SUBPROTOCOL,))
    client = Client(ws, tagged=True)
    assert isinstance(await client.receive(), protocol.Capabilities)
    return client


async def test_a_cold_server_is_ready_and_admits_its_first_reply(
    process: ServerProcess,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(process.http_url + "/health") as response:
            health = await response.json()
        assert response.status == 200 and health["status"] == "ok"
        assert health["first_audio_target"] == 0.25 and health["max_streams"] == 48
        # the prior was measured at start-up, not the built-in guess
        measured = await metric(
            http, process.http_url + "/metrics", "knowlithic_tts_synthesis_seconds_per_character"
        )
        assert 0 < measured != COLD_SECONDS_PER_CHARACTER
        client = await open_client(http, process.url)
        ids = await send_reply(client, "first", LONG_REPLY)
        await client.until_done(*ids, timeout=120)
        assert all(client.results[rid].completed for rid in ids)
        await client.ws.close()


async def test_a_full_server_answers_busy_at_once_and_admitted_replies_keep_streaming(
    process: ServerProcess,
) -> None:
    offered = 16
    async with aiohttp.ClientSession() as http:
        clients = [await open_client(http, process.url) for _ in range(offered + 1)]
        # every reply at once, as many agents' would: the server admits what it can carry
        replies = [
            await send_reply(c, f"reply{n}", LONG_REPLY) for n, c in enumerate(clients[:offered])
        ]
        # each reply's first answer: audio, or busy for a refused one
        firsts = [
            asyncio.create_task(c.until_first(ids[0]))
            for c, ids in zip(clients, replies, strict=False)
        ]
        await asyncio.gather(*firsts)
        admitted = [n for n in range(offered) if not busy(clients[n].results[replies[n][0]])]
        refused = [n for n in range(offered) if n not in admitted]
        assert admitted and refused, "the server should carry some of these replies, not all"

        # a new reply while the admitted ones stream: busy, at once
        probe = clients[offered]
        sent = time.perf_counter()
        probe_ids = await send_reply(probe, "probe", LONG_REPLY[:1])
        await probe.until_done(*probe_ids)
        refusal = time.perf_counter() - sent
        assert busy(probe.results[probe_ids[0]])
        assert refusal < 1.0, refusal  # a sanity bound; the bench measures it (tens of ms)

        # the admitted replies went on to their end, every sentence (none refused halfway)
        await asyncio.gather(*(clients[n].until_done(*replies[n], timeout=180) for n in admitted))
        for n in admitted:
            for rid in replies[n]:
                result = clients[n].results[rid]
                assert result.completed and len(result.data) > 16000 * 2 * 3, rid  # > 3 s
                assert result.ended_at is not None and result.ended_at > sent  # streaming then
        for n in refused:  # refused whole
            await clients[n].until_done(*replies[n])
            assert all(busy(clients[n].results[rid]) for rid in replies[n])
        metrics = process.http_url + "/metrics"
        headroom_refusals = 'knowlithic_tts_busy_refusals_total{reason="headroom"}'
        assert await metric(http, metrics, headroom_refusals) == len(refused) + 1
        assert await metric(http, metrics, "knowlithic_tts_synthesis_utilization") > 0

        # the load is gone: a new reply is admitted again
        await asyncio.sleep(2.5)  # past the idle window of the last replies
        again = await send_reply(probe, "again", LONG_REPLY[:1])
        await probe.until_done(*again, timeout=60)
        assert probe.results[again[0]].completed
        for client in clients:
            await client.ws.close()


async def test_the_hard_cap_still_holds_when_there_is_headroom(
    start_server: StartServer, connect: Connect, http: aiohttp.ClientSession
) -> None:
    server = await start_server(max_streams=1, first_audio_target=30.0)  # headroom galore
    first, second = await connect(target=server), await connect(target=server)
    a = await send_reply(first, "a", LONG_REPLY[:1])
    b = await send_reply(second, "b", ("Me too.",))
    await second.until_done(*b)
    assert busy(second.results[b[0]])
    await first.until_done(*a, timeout=60)
    assert first.results[a[0]].completed
    cap = 'knowlithic_tts_busy_refusals_total{reason="cap"}'
    assert await metric(http, server.url("/metrics"), cap) == 1


def test_the_cold_prior_is_measured_at_start_up() -> None:
    headroom = Headroom(workers=2, target=0.25, clock=Clock())
    headroom.calibrate(100, 0.3)  # one sentence alone: 3 ms a character
    assert headroom.prior == pytest.approx(0.006)  # as if both workers were busy
    assert headroom.cost == pytest.approx(0.006)
    warm(headroom, 0.002)
    assert headroom.cost == pytest.approx(0.002)
