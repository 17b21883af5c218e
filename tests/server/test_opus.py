"""Opus from the real server: an Ogg Opus file per request, whole pages per message, for
tagged and legacy clients alike; its rate, its bit rate and its refusals."""

from __future__ import annotations

import io

import av
import pytest

import knowlithic_protocol as protocol
from knowlithic_protocol import formats
from knowlithic_protocol.formats import ogg

from .asr import ASR_SAMPLE_RATE, transcribe, word_error_rate
from .helpers import Connect, Result, StartServer
from .test_audio_quality import SENTENCES, WER_THRESHOLD

TEXT = "Good morning, and welcome. How can I help you with your booking today?"


def file_seconds(data: bytes) -> float:
    """The length of ``data`` as a player reads the file (PyAV decodes Opus at 48 kHz)."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        samples: int = sum(frame.samples for frame in container.decode(stream))
    return samples / 48000


def assert_whole_pages(result: Result) -> None:
    reader = ogg.PageReader()
    first = reader.feed(result.audio[0].data)
    assert [page.packets[0][:8] for page in first[:2]] == [b"OpusHead", b"OpusTags"]
    # the first audio is a short message (--chunk-ms, 40 ms: two frames), the rest 200 ms
    assert sum(len(page.packets) for page in first[2:]) <= 2
    for message in result.audio[1:]:
        assert message.data.startswith(b"OggS")
        reader.feed(message.data)
        assert reader.pending_bytes == 0
    assert reader.ended


@pytest.mark.parametrize("legacy", [False, True], ids=["tagged", "legacy"])
async def test_each_request_is_an_ogg_opus_file_of_whole_pages(
    start_server: StartServer, connect: Connect, legacy: bool
) -> None:
    server = await start_server(noise_scale=0.0, noise_w=0.0)
    client = await connect(target=server, legacy=legacy)
    pcm = await client.run(TEXT, request_id="pcm", sample_rate=16000, output_format="pcm")
    opus = await client.run(TEXT, request_id="opus", sample_rate=16000, output_format="opus")
    assert opus.completed
    assert_whole_pages(opus)
    assert {a.sample_rate for a in opus.audio} == {16000}
    pcm_seconds = len(pcm.data) / 2 / 16000
    assert abs(file_seconds(opus.data) - pcm_seconds) < 0.005
    assert len(opus.data) < len(pcm.data) / 8  # about a tenth of the bytes


async def test_a_rate_opus_lacks_is_sent_at_the_nearest_and_the_messages_say_so(
    connect: Connect,
) -> None:
    client = await connect()
    result = await client.run(TEXT, sample_rate=22050, output_format="opus")
    assert result.completed
    assert {a.sample_rate for a in result.audio} == {24000}
    with av.open(io.BytesIO(result.data), mode="r") as container:
        assert container.streams.audio[0].codec_context.name in {"opus", "libopus"}


async def test_the_bit_rate_is_the_request_s_or_the_server_s(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(noise_scale=0.0, noise_w=0.0, opus_bitrate=16000)
    client = await connect(target=server)
    rates = {}
    for bitrate in (None, 12000, 32000):
        result = await client.run(
            TEXT, request_id=f"b{bitrate}", sample_rate=24000, output_format="opus", bitrate=bitrate
        )
        rates[bitrate] = len(result.data) * 8 / file_seconds(result.data)
    assert rates[12000] < rates[None] < rates[32000]
    assert rates[None] <= 16000 * 1.1 + 6000  # the server's setting, page overhead included


async def test_a_bit_rate_out_of_bounds_and_an_unknown_format_are_refused(
    connect: Connect,
) -> None:
    client = await connect()
    bad = await client.run(TEXT, request_id="b", output_format="opus", bitrate=1_000_000)
    assert isinstance(bad.terminal, protocol.Error)
    assert bad.terminal.code == protocol.ERR_BAD_REQUEST and "bitrate" in bad.terminal.message
    await client.send_raw(
        '{"type": "text_to_speech", "request_id": "f", "text": "Hi.", "voice": "joe", '
        '"sample_rate": 16000, "output_format": "flac"}'
    )
    await client.until_done("f")
    terminal = client.results["f"].terminal
    assert isinstance(terminal, protocol.Error) and terminal.code == protocol.ERR_UNSUPPORTED
    assert "pcm, wav, opus" in terminal.message


async def test_opus_speech_is_as_intelligible_as_pcm(
    start_server: StartServer, connect: Connect
) -> None:
    # the offline check at the worker's rate; bench/opus_link.py measures it on more text
    server = await start_server(noise_scale=0.0, noise_w=0.0)
    client = await connect(target=server)
    heard: dict[protocol.OutputFormat, list[str]] = {"pcm": [], "opus": []}
    for n, sentence in enumerate(SENTENCES):
        for fmt, transcripts in heard.items():
            result = await client.run(
                sentence, request_id=f"{fmt}{n}", sample_rate=ASR_SAMPLE_RATE, output_format=fmt
            )
            decoder = formats.new_decoder(fmt, sample_rate=ASR_SAMPLE_RATE)
            chunks = [decoder.feed(a.data) for a in result.audio] + [decoder.finish()]
            transcripts.append(transcribe(b"".join(c.pcm for c in chunks if c is not None)))
    opus, pcm = (word_error_rate(SENTENCES, heard[fmt]) for fmt in ("opus", "pcm"))
    assert opus < WER_THRESHOLD
    assert opus <= pcm + 0.06  # a word or two in these 70
