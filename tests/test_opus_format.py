"""The Ogg Opus payload format: a file when joined, whole pages per message, errors named."""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knowlithic_protocol import formats
from knowlithic_protocol.formats import AudioFormatError, ogg
from knowlithic_protocol.formats.opus import OpusDecoder, OpusEncoder, opus_rate


def speech_like(rate: int, seconds: float, seed: int = 0) -> bytes:
    """A voiced buzz with a moving pitch and syllable-like bursts: what Opus's voip mode is
    tuned for, unlike a pure tone."""
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(seed)
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
    noise = rng.standard_normal(len(t)) * 0.05
    signal = (voiced * 0.3 + noise) * envelope
    return bytes((signal * 12000).astype("<i2").tobytes())


def encode_in(pieces: list[bytes], rate: int, bitrate: int | None = None) -> list[bytes]:
    encoder = OpusEncoder(sample_rate=rate, bitrate=bitrate)
    payloads = [encoder.encode(piece) for piece in pieces]
    payloads.append(encoder.encode(b"", last=True))
    return payloads


def decode_all(payloads: list[bytes], rate: int) -> tuple[bytes, int]:
    decoder = OpusDecoder(sample_rate=rate)
    pcm, out_rate = b"", rate
    for payload in payloads:
        chunk = decoder.feed(payload)
        if chunk is not None:
            pcm += chunk.pcm
            out_rate = chunk.sample_rate
    tail = decoder.finish()
    if tail is not None:
        pcm += tail.pcm
    return pcm, out_rate


def pieces_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def assert_sounds_alike(decoded: bytes, original: bytes) -> None:
    """The same sound, in time: the waveform follows the original (a lossy codec keeps the
    voice, not the noise in it) and the spectrum matches."""
    x = np.frombuffer(decoded, dtype="<i2").astype(float)
    y = np.frombuffer(original, dtype="<i2").astype(float)
    n = min(len(x), len(y))
    assert np.corrcoef(x[:n], y[:n])[0, 1] > 0.7
    spectra = np.abs(np.fft.rfft(x[:n])), np.abs(np.fft.rfft(y[:n]))
    assert np.corrcoef(*spectra)[0, 1] > 0.97


@pytest.mark.parametrize("rate", [8000, 12000, 16000, 24000, 48000])
def test_what_goes_in_comes_out_at_its_rate_and_length(rate: int) -> None:
    pcm = speech_like(rate, 1.0)
    out, out_rate = decode_all(encode_in(pieces_of(pcm, rate * 2 * 40 // 1000), rate), rate)
    assert out_rate == rate
    assert len(out) == len(pcm)  # the end granule trims the padding to the sample
    assert_sounds_alike(out, pcm)


def test_a_rate_opus_does_not_have_is_carried_at_the_nearest_one() -> None:
    assert [opus_rate(r) for r in (8000, 11025, 22050, 44100, 32000)] == [
        8000,
        12000,
        24000,
        48000,
        24000,
    ]
    pcm = speech_like(22050, 1.0)
    encoder = formats.new_encoder("opus", sample_rate=22050)
    assert encoder.sample_rate == 24000
    out, out_rate = decode_all([encoder.encode(pcm), encoder.encode(b"", last=True)], 22050)
    assert out_rate == 24000
    assert abs(len(out) / 2 / 24000 - 1.0) < 0.002


def test_the_joined_payloads_are_an_ogg_opus_file_a_player_reads() -> None:
    rate = 24000
    pcm = speech_like(rate, 1.5)
    whole = b"".join(encode_in(pieces_of(pcm, 1000), rate))
    with av.open(io.BytesIO(whole), mode="r") as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name in {"opus", "libopus"}
        samples: int = sum(frame.samples for frame in container.decode(stream))
    assert samples == 1.5 * 48000  # PyAV decodes at 48 kHz, pre-skip and padding trimmed


def test_every_payload_is_whole_pages_and_the_first_carries_the_headers() -> None:
    rate = 16000
    payloads = encode_in(pieces_of(speech_like(rate, 0.5), rate * 2 * 40 // 1000), rate)
    reader = ogg.PageReader()
    first = reader.feed(payloads[0])
    assert first[0].packets[0].startswith(b"OpusHead") and first[0].flags & ogg.BOS
    assert first[1].packets[0].startswith(b"OpusTags")
    for payload in payloads[1:]:
        assert payload.startswith(b"OggS")
        assert reader.feed(payload)
        assert reader.pending_bytes == 0  # nothing left over: whole pages only
    assert reader.ended


def test_each_call_flushes_the_frames_it_completed() -> None:
    rate = 16000
    encoder = OpusEncoder(sample_rate=rate)
    ten_ms = speech_like(rate, 0.01)
    reader = ogg.PageReader()
    headers = reader.feed(encoder.encode(b""))
    assert [p.packets[0][:8] for p in headers] == [b"OpusHead", b"OpusTags"]
    assert encoder.encode(ten_ms) == b""  # half a frame: nothing to send yet
    (page,) = reader.feed(encoder.encode(ten_ms))
    assert len(page.packets) == 1  # the frame those two halves made, sent at once


def test_odd_byte_counts_never_shift_a_sample() -> None:
    rate = 16000
    pcm = speech_like(rate, 0.6)
    out, _ = decode_all(encode_in(pieces_of(pcm, 333), rate), rate)
    assert len(out) == len(pcm)
    assert_sounds_alike(out, pcm)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 4000), min_size=1, max_size=30))
def test_payloads_split_anywhere_decode_the_same(cuts: list[int]) -> None:
    rate = 16000
    payloads = encode_in(pieces_of(speech_like(rate, 0.4, seed=1), 1280), rate)
    whole = b"".join(payloads)
    expected, _ = decode_all(payloads, rate)
    resplit, position = [], 0
    for cut in cuts:
        resplit.append(whole[position : position + cut])
        position += cut
    resplit.append(whole[position:])
    got, _ = decode_all(resplit, rate)
    assert got == expected


def test_the_bit_rate_is_what_was_asked_page_overhead_included() -> None:
    rate = 24000
    seconds = 3.0
    pcm = speech_like(rate, seconds)
    for bitrate in (12000, 24000):
        # 200 ms messages, as the server sends Opus
        whole = b"".join(encode_in(pieces_of(pcm, rate * 2 // 5), rate, bitrate=bitrate))
        assert len(whole) * 8 / seconds <= bitrate * 1.1 + 2000
    with pytest.raises(ValueError, match="bitrate"):
        OpusEncoder(sample_rate=rate, bitrate=1000)


# -- what a broken stream does -------------------------------------------------------------------


def broken(payloads: list[bytes], index: int, position: int) -> list[bytes]:
    damaged = bytearray(payloads[index])
    damaged[position] ^= 0x40
    return [*payloads[:index], bytes(damaged), *payloads[index + 1 :]]


@pytest.fixture
def payloads() -> list[bytes]:
    return encode_in(pieces_of(speech_like(16000, 0.5), 1280), 16000)


def test_a_flipped_byte_fails_the_page_s_crc(payloads: list[bytes]) -> None:
    with pytest.raises(AudioFormatError, match="CRC"):
        decode_all(broken(payloads, 3, 40), 16000)


def test_an_opus_packet_libopus_rejects_is_a_format_error() -> None:
    encoder = OpusEncoder(sample_rate=16000)
    headers = encoder.encode(b"")
    serial = struct.unpack_from("<I", headers, 14)[0]
    bad = ogg.page([b"\x0b"], serial=serial, sequence=2, granule=960)  # code 3, no count byte
    decoder = OpusDecoder(sample_rate=16000)
    decoder.feed(headers)
    with pytest.raises(AudioFormatError, match="could not be decoded"):
        decoder.feed(bad)


def test_a_stream_must_start_with_its_headers(payloads: list[bytes]) -> None:
    with pytest.raises(AudioFormatError, match="first page"):
        OpusDecoder(sample_rate=16000).feed(payloads[1])


def test_missing_pages_are_noticed(payloads: list[bytes]) -> None:
    with pytest.raises(AudioFormatError, match="missing"):
        decode_all([payloads[0], *payloads[2:]], 16000)


def test_bytes_that_are_not_ogg_are_refused() -> None:
    with pytest.raises(AudioFormatError, match="not an Ogg stream"):
        OpusDecoder(sample_rate=16000).feed(b"RIFF\x00\x00\x00\x00WAVEfmt ")


def test_a_truncated_last_page_fails_at_the_end(payloads: list[bytes]) -> None:
    decoder = OpusDecoder(sample_rate=16000)
    for payload in payloads[:-1]:
        decoder.feed(payload)
    decoder.feed(payloads[-1][:-5])
    with pytest.raises(AudioFormatError, match="truncated"):
        decoder.finish()


def test_a_stream_with_no_header_at_all_fails_at_the_end() -> None:
    with pytest.raises(AudioFormatError, match="OpusHead"):
        OpusDecoder(sample_rate=16000).finish()
