"""The MP3 payload format (OpenAI's default): a file when joined, any split decodes, the
nearest rate LAME has, and bytes that are not MP3 named as such."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from knowlithic_protocol import formats
from knowlithic_protocol.formats import AudioFormatError
from knowlithic_protocol.formats.mp3 import DEFAULT_MP3_BITRATE, Mp3Decoder, Mp3Encoder, mp3_rate

from .test_opus_format import speech_like

# LAME's delay (1105 samples) and the padding of its last frame (at most 575 at 24 kHz and
# below): silence no raw stream states
SLACK_SAMPLES = 1105 + 1151


def encoded(pcm: bytes, rate: int, piece: int) -> bytes:
    encoder = formats.new_encoder("mp3", sample_rate=rate)
    out = b"".join(encoder.encode(pcm[i : i + piece]) for i in range(0, len(pcm), piece))
    return out + encoder.encode(b"", last=True)


@pytest.mark.parametrize(
    ("rate", "piece"), [(24000, 1920), (22050, 1763), (16000, 7), (48000, 9600)]
)
def test_the_joined_payloads_are_a_file_of_the_same_length(rate: int, piece: int) -> None:
    pcm = speech_like(rate, 1.0)
    data = encoded(pcm, rate, piece)
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        assert stream.codec_context.sample_rate == mp3_rate(rate)
    assert 0 <= samples - mp3_rate(rate) <= SLACK_SAMPLES
    assert len(data) < DEFAULT_MP3_BITRATE / 8 * 1.15  # a second at its constant bit rate


@pytest.mark.parametrize("split", [1, 97, 4096])
def test_the_decoder_takes_any_split(split: int) -> None:
    data = encoded(speech_like(24000, 1.0), 24000, 1920)
    decoder = formats.new_decoder("mp3", sample_rate=24000)
    pcm = bytearray()
    for i in range(0, len(data), split):
        if chunk := decoder.feed(data[i : i + split]):
            assert (chunk.sample_rate, chunk.num_channels) == (24000, 1)
            pcm += chunk.pcm
    if chunk := decoder.finish():
        pcm += chunk.pcm
    assert 0 <= len(pcm) // 2 - 24000 <= SLACK_SAMPLES
    samples = np.frombuffer(bytes(pcm), dtype="<i2")
    assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 500  # sound, not silence


def test_a_rate_lame_lacks_is_the_nearest_it_has() -> None:
    assert Mp3Encoder(sample_rate=20000).sample_rate == 22050
    assert Mp3Encoder(sample_rate=24000).sample_rate == 24000
    assert mp3_rate(10000) == 11025


def test_out_of_range_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="bitrate"):
        Mp3Encoder(sample_rate=24000, bitrate=1000)
    with pytest.raises(ValueError, match="sample rate"):
        Mp3Encoder(sample_rate=4000)


def test_bytes_that_are_not_mp3_are_an_error_not_noise() -> None:
    decoder = Mp3Decoder(sample_rate=24000)
    with pytest.raises(AudioFormatError):
        for _ in range(40):
            decoder.feed(bytes(range(256)) * 8)
        decoder.finish()


def test_an_empty_stream_ends_cleanly() -> None:
    assert Mp3Encoder(sample_rate=24000).encode(b"", last=True) == b""
    assert Mp3Decoder(sample_rate=24000).finish() is None
