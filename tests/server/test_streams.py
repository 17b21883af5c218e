"""Stream admission: a reply (every sentence request with its stream id) is admitted or refused
as a whole, and an admitted one is never refused for capacity halfway."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest
from livekit.agents import APIConnectOptions, APIStatusError

import knowlithic_protocol as protocol
from tests.plugin_helpers import Spoken, speak
from tts_custom.knowlithictts import TTS
from tts_server.admission import Streams
from tts_server.config import DEFAULT_MAX_STREAMS, load_config

from .helpers import Client, Connect, Result, StartServer

SENTENCE = "This sentence keeps the server busy for a moment."
REPLY = (
    "Sure, I can help you with that booking right away.",
    "The table is for two people at seven.",
    "Please arrive ten minutes early.",
)


def full(streams: Streams) -> bool:
    return streams.full  # a call, so that mypy does not narrow it between two looks


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- the books, on a fake clock ------------------------------------------------------------------


def test_a_later_sentence_of_an_admitted_stream_needs_no_room() -> None:
    streams = Streams(limit=1, idle_window=2.0, clock=Clock())
    a = ("client", "a")
    assert not streams.admitted(a) and not full(streams)
    streams.begin(a, 1.0)
    assert full(streams) and streams.admitted(a)
    streams.begin(a, 1.0)  # its second sentence: admitted although the server is full
    assert streams.active == 1
    assert not streams.admitted(("client", "b"))  # a new stream would be refused


def test_the_idle_window_keeps_a_finished_stream_then_releases_it() -> None:
    clock = Clock()
    streams = Streams(limit=1, idle_window=2.0, clock=clock)
    a = ("client", "a")
    streams.begin(a, 1.0)
    streams.end(a)
    clock.now += 0.5
    assert full(streams)  # its listener is still hearing its audio
    clock.now += 1.4
    assert streams.admitted(a)  # its next sentence may still come...
    assert not full(streams)  # ...but its place would go to a new reply (see below)
    streams.begin(a, 1.0)
    streams.end(a)
    clock.now += 1.9  # the window counts from the last request's end
    assert streams.admitted(a)
    clock.now += 0.2
    assert not streams.admitted(a) and streams.active == 0 and not full(streams)


def test_an_idle_stream_yields_its_place_to_a_new_reply_longest_silent_first() -> None:
    clock = Clock()
    streams = Streams(limit=2, idle_window=2.0, clock=clock)
    a, b, c = ("client", "a"), ("client", "b"), ("client", "c")
    streams.begin(a, 0.1)
    streams.end(a)
    clock.now += 0.2
    streams.begin(b, 0.1)
    streams.end(b)
    clock.now += 0.2  # both idle, their audio played: nothing is held
    assert streams.active == 2 and streams.held == 0 and not full(streams)
    assert streams.make_room()  # c needs a place: a, silent longest, gives up its own
    streams.begin(c, 0.1)
    assert not streams.admitted(a) and streams.admitted(b) and streams.admitted(c)
    # a's next sentence is a new reply: admitted, as there is room (b yields)
    assert not full(streams) and streams.make_room()
    streams.begin(a, 0.1)
    assert streams.admitted(a) and not streams.admitted(b) and streams.active == 2


def test_a_stream_at_work_or_still_playing_never_yields() -> None:
    clock = Clock()
    streams = Streams(limit=2, idle_window=10.0, clock=clock)
    working, playing = ("client", "working"), ("client", "playing")
    streams.begin(working, 0.1)
    streams.begin(playing, 5.0)  # five seconds of audio, synthesized at once
    streams.end(playing)
    clock.now += 1.0  # working's request is still in flight; playing's audio still plays
    assert streams.held == 2 and full(streams) and not streams.make_room()
    clock.now += 4.5  # playing's listener has heard it all: now it may yield
    assert not full(streams) and streams.make_room()
    assert streams.admitted(working) and not streams.admitted(playing)


def test_room_is_made_only_when_every_place_is_taken() -> None:
    clock = Clock()
    streams = Streams(limit=3, idle_window=2.0, clock=clock)
    a = ("client", "a")
    streams.begin(a, 0.1)
    streams.end(a)
    clock.now += 1.0
    assert not streams.make_room() and streams.admitted(a)  # a free place is left
    streams.begin(None, 0.1)
    streams.begin(None, 0.1)  # requests without a stream id hold a place while in flight
    assert streams.held == 2 and not full(streams)
    assert streams.make_room() and not streams.admitted(a)
    assert not Streams(limit=0, idle_window=2.0).make_room()  # no limit: nothing to make


def test_requests_without_a_stream_id_are_streams_of_their_own() -> None:
    streams = Streams(limit=2, idle_window=2.0, clock=Clock())
    streams.begin(None, 1.0)
    assert not streams.admitted(None) and not full(streams)
    streams.begin(None, 1.0)
    assert full(streams) and streams.active == 2
    streams.end(None)  # released at once: nothing else can belong to it
    assert streams.active == 1 and not full(streams)


def test_a_cancelled_reply_is_released_without_the_idle_window() -> None:
    streams = Streams(limit=1, idle_window=2.0, clock=Clock())
    a = ("client", "a")
    streams.begin(a, 1.0)
    streams.begin(a, 1.0)
    streams.end(a, cancelled=True)
    assert streams.admitted(a)  # its other sentence is still in flight
    streams.end(a, cancelled=True)
    assert not streams.admitted(a) and not full(streams)


def test_a_refused_stream_stays_refused_for_the_idle_window() -> None:
    clock = Clock()
    streams = Streams(limit=1, idle_window=2.0, clock=clock)
    b = ("client", "b")
    streams.refuse(b)
    assert streams.refused(b)
    clock.now += 2.1
    assert not streams.refused(b)


def test_later_sentences_are_needed_after_the_audio_before_them() -> None:
    clock = Clock()
    streams = Streams(limit=0, idle_window=2.0, clock=clock)
    a = ("client", "a")
    assert streams.begin(a, 2.0) == 0.0  # the first sentence: at once
    assert streams.begin(a, 3.0) == pytest.approx(2.0)
    clock.now += 0.5
    assert streams.begin(a, 1.0) == pytest.approx(4.5)
    streams.end(a, misestimate=1.0)  # the first one had a second more audio than guessed
    assert streams.begin(a, 1.0) == pytest.approx(6.5)
    assert streams.begin(None, 5.0) == 0.0
    assert not full(streams)  # limit 0: no limit


def test_flags_environment_and_defaults() -> None:
    config = load_config(["--max-streams", "5", "--stream-idle-window", "0.5"], environ={})
    assert (config.max_streams, config.stream_idle_window) == (5, 0.5)
    env = {"KNOWLITHIC_MAX_STREAMS": "0", "KNOWLITHIC_STREAM_IDLE_WINDOW": "3"}
    config = load_config([], environ=env)
    assert (config.max_streams, config.stream_idle_window) == (0, 3.0)
    config = load_config([], environ={})
    assert config.max_streams == DEFAULT_MAX_STREAMS
    assert config.stream_idle_window == 2.0


# -- the server ----------------------------------------------------------------------------------


async def send_reply(client: Client, stream_id: str, sentences: tuple[str, ...]) -> list[str]:
    """Send every sentence of a reply at once, as the plugin does when it is ahead."""
    ids = [f"{stream_id}-{i}" for i in range(len(sentences))]
    for rid, sentence in zip(ids, sentences, strict=True):
        client.results[rid] = Result(rid)
        await client.send(
            protocol.TextToSpeech(rid, sentence, "joe", 16000, "pcm", stream_id=stream_id)
        )
    return ids


def busy(result: Result) -> bool:
    return isinstance(result.terminal, protocol.Error) and result.terminal.code == protocol.ERR_BUSY


async def metric(client: aiohttp.ClientSession, url: str, name: str) -> float:
    async with client.get(url) as response:
        text = await response.text()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_an_admitted_reply_keeps_its_place_and_a_new_one_gets_busy(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(max_streams=1, stream_idle_window=0.5)
    first, second = await connect(target=server), await connect(target=server)
    a = await send_reply(first, "a", (SENTENCE,))
    await first.until_done(*a)
    # finished, but within its idle window: its next sentence is admitted...
    a_later = await send_reply(first, "a", ("And one more thing.",))
    # ...and a new reply is not, on any connection
    b = await send_reply(second, "b", ("Me too.",))
    await first.until_done(*a_later)
    await second.until_done(*b)
    assert first.results[a_later[0]].completed
    refused = second.results[b[0]].terminal
    assert isinstance(refused, protocol.Error) and refused.code == protocol.ERR_BUSY
    assert refused.retryable
    await asyncio.sleep(0.6)  # the idle window passes: a's place is free
    b_again = await send_reply(second, "b2", ("Now there is room.",))
    await second.until_done(*b_again)
    assert second.results[b_again[0]].completed


async def test_requests_without_a_stream_id_each_take_a_place(
    start_server: StartServer, connect: Connect
) -> None:
    client = await connect(target=await start_server(max_streams=2))
    for rid in ("x", "y", "z"):
        await client.request(SENTENCE, request_id=rid)
    await client.until_done("x", "y", "z")
    assert client.results["x"].completed and client.results["y"].completed
    assert busy(client.results["z"])
    # no idle window for them: the places are free as soon as they ended
    assert (await client.run("Room again.", request_id="w")).completed


async def test_a_full_server_refuses_exactly_the_extra_replies_and_serves_the_rest(
    start_server: StartServer, connect: Connect, http: aiohttp.ClientSession
) -> None:
    k = 3
    server = await start_server(max_streams=k, max_requests_per_connection=16)
    client = await connect(target=server)  # one socket carries every reply, as an agent's does
    replies = [await send_reply(client, f"reply{n}", REPLY) for n in range(k + 2)]
    await client.until_done(*(rid for ids in replies for rid in ids), timeout=30)
    for ids in replies[:k]:
        for rid in ids:
            result = client.results[rid]
            assert result.completed and len(result.data) > 16000, rid  # > 0.5 s of speech
    for ids in replies[k:]:  # refused whole: the sentences sent ahead are refused with it
        assert all(busy(client.results[rid]) for rid in ids)
    async with http.get(server.url("/health")) as response:
        health = await response.json()
    assert response.status == 503 and health["status"] == "busy"
    assert health["active_streams"] == k and health["max_streams"] == k
    metrics = server.url("/metrics")
    streams_total = "knowlithic_tts_streams_total"
    assert await metric(http, metrics, streams_total + '{outcome="admitted"}') == k
    assert await metric(http, metrics, streams_total + '{outcome="refused"}') == 2
    assert await metric(http, metrics, "knowlithic_tts_active_streams") == k


async def test_the_plugin_hears_busy_for_the_extra_replies_only(
    start_server: StartServer,
) -> None:
    k = 2
    server = await start_server(max_streams=k)
    plugin = TTS(base_url=server.ws_url)
    no_retry = APIConnectOptions(max_retry=0, timeout=10.0)
    try:
        results = await asyncio.gather(
            *(speak(plugin, " ".join(REPLY[:2]), conn_options=no_retry) for _ in range(k + 2)),
            return_exceptions=True,
        )
    finally:
        await plugin.aclose()
    spoken = [r for r in results if isinstance(r, Spoken)]
    refused = [r for r in results if isinstance(r, APIStatusError)]
    assert len(spoken) == k and len(refused) == 2, results
    assert all(len(s.pcm) > 2 * 16000 * 2 for s in spoken)  # both sentences: > 2 s
    assert all(e.retryable and "busy" in str(e) for e in refused)
