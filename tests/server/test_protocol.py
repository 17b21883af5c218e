"""The WebSocket protocol end to end against the real server: dialects, streaming, formats,
cancel, concurrency, voices, word timestamps and malformed input."""

from __future__ import annotations

import asyncio
import json
import struct

import aiohttp
import pytest

import knowlithic_protocol as protocol
from knowlithic_protocol.formats.wav import WAV_HEADER_SIZE
from tts_server.state import SAMPLE_RATES

from .helpers import Client, Connect, RunningServer, StartServer

MULTI_SENTENCE = (
    "Sure, I can help you with that booking right away. The table is for two people. "
    "Dinner starts at seven in the evening. Please arrive ten minutes early. "
    "We look forward to seeing you. Have a wonderful day."
)


async def test_tagged_clients_get_capabilities_first(connect: Connect) -> None:
    client = await connect()
    caps = client.capabilities
    assert caps is not None
    assert caps.protocol_version == protocol.PROTOCOL_VERSION
    assert set(caps.voices) == {"joe", "elise"}
    assert set(caps.output_formats) == {"pcm", "wav", "opus", "mp3"}
    assert {16000, 24000, 48000} <= set(caps.sample_rates) == set(SAMPLE_RATES)
    assert caps.word_timestamps is True
    assert caps.max_text_length == 5000
    assert caps.max_requests_in_flight == 8
    assert client.ws.protocol == protocol.SUBPROTOCOL


async def test_legacy_clients_get_no_capabilities_and_base64_audio(connect: Connect) -> None:
    client = await connect(legacy=True)
    assert client.ws.protocol is None
    await client.send(protocol.TextToSpeech("7", "Hello there.", "elise", 16000, "pcm"))
    frames = []
    while True:
        message = await client.ws.receive(timeout=20)
        assert message.type == aiohttp.WSMsgType.TEXT  # never a binary frame
        obj = json.loads(message.data)
        frames.append(obj)
        if obj["type"] != "audio":
            break
    assert frames[0]["type"] == "audio" and "audio_data" in frames[0]
    assert frames[-1] == {"type": "complete", "request_id": "7"}
    decoded = [protocol.decode_server_message(json.dumps(f), tagged_binary=False) for f in frames]
    audio = b"".join(m.data for m in decoded if isinstance(m, protocol.Audio))
    assert len(audio) > 16000  # more than half a second of 16 kHz s16le


async def test_the_seed_client_request_shape_works(connect: Connect) -> None:
    # What the seeds' plugin sends: a numeric request id, wav, no subprotocol.
    client = await connect(legacy=True)
    await client.send_raw(
        json.dumps(
            {
                "type": "text_to_speech",
                "text": "Hello.",
                "voice": "elise",
                "request_id": 3,
                "sample_rate": 16000,
                "output_format": "wav",
            }
        )
    )
    await client.until_done("3")
    result = client.results["3"]
    assert result.completed
    assert result.data[:4] == b"RIFF"


async def test_multi_sentence_request_streams_before_it_is_all_synthesized(
    connect: Connect,
) -> None:
    client = await connect()
    result = await client.run(MULTI_SENTENCE, sample_rate=24000)
    assert result.completed
    assert result.first_audio_at is not None and result.ended_at is not None
    first = result.first_audio_at - result.sent_at
    total = result.ended_at - result.sent_at
    assert first < total / 4, (first, total)
    # 20-50 ms per message (the last one of a short segment may be shorter, never longer)
    durations = [len(a.data) / 2 / 24000 for a in result.audio]
    assert max(durations) <= 0.050 + 1e-9
    assert sorted(durations)[len(durations) // 20] >= 0.020
    assert [a.sequence for a in result.audio] == list(range(len(result.audio)))
    assert all(a.request_id == "r1" and a.sample_rate == 24000 for a in result.audio)


@pytest.mark.parametrize("rate", [16000, 24000, 48000])
async def test_pcm_and_wav_lengths_match_the_rate(start_server: StartServer, rate: int) -> None:
    # Without Piper's noise the synthesis is deterministic, so lengths can be compared.
    server = await start_server(noise_scale=0.0, noise_w=0.0)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.ws_url, protocols=(protocol.SUBPROTOCOL,))
        client = Client(ws, tagged=True)
        await client.receive()
        text = "Good morning, and welcome. How can I help?"
        native = await client.run(text, request_id="native", sample_rate=22050)
        pcm = await client.run(text, request_id="pcm", sample_rate=rate)
        wav = await client.run(text, request_id="wav", sample_rate=rate, output_format="wav")
        await ws.close()
    native_samples = len(native.data) // 2
    expected = native_samples * rate / 22050
    assert len(pcm.data) % 2 == 0
    assert abs(len(pcm.data) / 2 - expected) <= 2
    # wav: one header, at the start of the first message, then the same PCM
    body = wav.data
    assert body[:4] == b"RIFF" and body[8:12] == b"WAVE"
    assert struct.unpack_from("<I", body, 24)[0] == rate
    assert struct.unpack_from("<I", body, 40)[0] == 0xFFFFFFFF
    assert body.count(b"RIFF") == 1
    assert wav.audio[0].data[:4] == b"RIFF"
    assert abs((len(body) - WAV_HEADER_SIZE) / 2 - expected) <= 2
    assert len(body) - WAV_HEADER_SIZE == len(pcm.data)


async def test_cancel_stops_the_request_and_completes_it_as_cancelled(connect: Connect) -> None:
    client = await connect()
    await client.request(MULTI_SENTENCE * 3, request_id="long")
    # wait for the first audio, then cancel
    while not client.results["long"].audio:
        client._dispatch(await client.receive())
    await client.send(protocol.Cancel("long"))
    cancel_sent = len(client.results["long"].audio)
    await client.until_done("long")
    result = client.results["long"]
    assert result.terminal == protocol.Complete("long", cancelled=True)
    # Audio already on the wire when the cancel arrived may still come in, but only a little
    # (far less than the whole text) and none after the terminal message.
    assert len(result.audio) - cancel_sent < 200
    await client.drain(0.5)
    assert result.after_terminal == []
    # the connection is still usable
    again = await client.run("Still here.", request_id="next")
    assert again.completed


async def test_cancel_right_behind_the_request_ends_it_without_audio(
    server: RunningServer, connect: Connect
) -> None:
    client = await connect()
    await client.request(MULTI_SENTENCE, request_id="gone")
    await client.send(protocol.Cancel("gone"))
    await client.until_done("gone")
    result = client.results["gone"]
    assert result.terminal == protocol.Complete("gone", cancelled=True)
    assert result.audio == []
    assert server.state.capacity.in_use == 0
    assert (await client.run("Next one.", request_id="next")).completed


async def test_cancel_of_an_unknown_request_is_ignored(connect: Connect) -> None:
    client = await connect()
    await client.send(protocol.Cancel("never-sent"))
    assert await client.drain(0.3) == []
    assert (await client.run("Okay.")).completed


async def test_concurrent_requests_on_one_connection(connect: Connect) -> None:
    client = await connect()
    texts = {
        "a": "The first request is about the weather today.",
        "b": "The second one talks about dinner plans.",
        "c": "And the third, a little longer, is about a trip to the mountains next week.",
    }
    for rid, text in texts.items():
        await client.request(text, request_id=rid)
    await client.until_done(*texts)
    for rid in texts:
        result = client.results[rid]
        assert result.completed, result.terminal
        assert [a.sequence for a in result.audio] == list(range(len(result.audio)))
        assert len(result.data) / 2 / 16000 > 1.0


async def test_concurrent_requests_across_connections(connect: Connect) -> None:
    clients = [await connect() for _ in range(3)]
    texts = [f"This is connection number {n}, speaking clearly." for n in ("one", "two", "three")]

    async def one(client: Client, text: str) -> None:
        result = await client.run(text, request_id="same-id-everywhere")
        assert result.completed
        assert len(result.data) / 2 / 16000 > 1.0

    await asyncio.gather(*(one(c, t) for c, t in zip(clients, texts, strict=True)))


async def test_unknown_voice_is_refused_with_the_list_of_voices(connect: Connect) -> None:
    client = await connect()
    result = await client.run("Hello.", voice="nobody")
    assert isinstance(result.terminal, protocol.Error)
    assert result.terminal.code == protocol.ERR_UNKNOWN_VOICE
    assert "elise" in result.terminal.message and "joe" in result.terminal.message
    assert result.audio == []


async def test_aliases_are_the_same_voice(start_server: StartServer, connect: Connect) -> None:
    server = await start_server(aliases=(("elise", "joe"), ("narrator", "joe")))
    client = await connect(target=server)
    assert client.capabilities is not None
    assert set(client.capabilities.voices) == {"joe", "elise", "narrator"}
    for voice in ("narrator", "Elise", "joe"):
        assert (await client.run("Hi.", voice=voice, request_id=voice)).completed


async def test_word_timestamps_are_monotonic_and_within_the_audio(connect: Connect) -> None:
    client = await connect()
    result = await client.run(MULTI_SENTENCE, word_timestamps=True)
    assert result.completed
    words = [w for msg in result.words for w in msg.words]
    assert all(msg.estimated for msg in result.words)  # the joe voice has no alignments
    assert [w.word for w in words][:4] == ["Sure", "I", "can", "help"]
    assert len(words) == len(MULTI_SENTENCE.split())
    duration = len(result.data) / 2 / 16000
    previous = 0.0
    for w in words:
        assert previous <= w.start <= w.end <= duration
        previous = w.end
    assert words[-1].end > duration * 0.8


async def test_word_timestamps_arrive_before_their_audio(connect: Connect) -> None:
    client = await connect()
    await client.request(
        "First part, and then the rest of it. Second sentence.", word_timestamps=True
    )
    order = []
    while True:
        msg = await client.receive()
        order.append(type(msg).__name__)
        if isinstance(msg, protocol.Complete):
            break
    assert order[0] == "WordTimestamps"
    assert order.count("WordTimestamps") == 3  # first clause, rest of sentence, second sentence


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", protocol.ERR_BAD_REQUEST),
        ("[1, 2]", protocol.ERR_BAD_REQUEST),
        ('{"type": "dance", "request_id": "x"}', protocol.ERR_BAD_REQUEST),
        ('{"type": "text_to_speech", "request_id": "x", "text": 5, "voice": "joe", '
         '"sample_rate": 16000}', protocol.ERR_BAD_REQUEST),
        ('{"type": "text_to_speech", "request_id": "x", "text": "hi", "voice": "joe", '
         '"sample_rate": 1000}', protocol.ERR_BAD_REQUEST),
        ('{"type": "text_to_speech", "request_id": "x", "text": "hi", "voice": "joe", '
         '"sample_rate": 16000, "output_format": "flac"}', protocol.ERR_UNSUPPORTED),
        ('{"type": "text_to_speech", "text": "hi", "voice": "joe", "sample_rate": 16000}',
         protocol.ERR_BAD_REQUEST),
        (b"\x00\x01binary", protocol.ERR_BAD_REQUEST),
    ],
)  # fmt: skip
async def test_malformed_messages_get_an_error_and_the_connection_stays_usable(
    connect: Connect, frame: str | bytes, code: str
) -> None:
    client = await connect()
    await client.send_raw(frame)
    reply = await client.receive()
    assert isinstance(reply, protocol.Error)
    assert reply.code == code
    assert (await client.run("Still working.", request_id="after")).completed


async def test_keepalive_is_accepted_silently(connect: Connect) -> None:
    client = await connect()
    await client.send(protocol.Keepalive())
    assert await client.drain(0.3) == []


async def test_empty_text_completes_without_audio(connect: Connect) -> None:
    client = await connect()
    result = await client.run("   ")
    assert result.completed and result.audio == []


async def test_the_v1_tts_path_and_plain_http_get(
    server: RunningServer, connect: Connect, http: aiohttp.ClientSession
) -> None:
    client = await connect(path="/v1/tts")
    assert (await client.run("Hello.")).completed
    async with http.get(server.url("/")) as response:
        assert response.status == 200
        assert protocol.SUBPROTOCOL in (await response.json())["message"]
