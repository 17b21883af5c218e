"""The payload decoder: WAV in every shape, raw PCM, split samples, refusals."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from knowlithic_protocol import formats
from knowlithic_protocol.formats import AudioFormatError
from knowlithic_protocol.formats.wav import WAV_HEADER_SIZE, WavDecoder
from knowlithic_protocol.formats.wav import wav_header as server_wav_header
from tests.fake_knowlithic import wav_header

PCM = bytes(range(256)) * 8  # 2048 bytes, 1024 samples


def decode_all(messages: list[bytes], *, rate: int = 16000) -> tuple[bytes, set[int]]:
    decoder = WavDecoder(sample_rate=rate)
    out, rates = b"", set()
    for msg in messages:
        chunk = decoder.feed(msg)
        if chunk is not None:
            out += chunk.pcm
            rates.add(chunk.sample_rate)
    return out, rates


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@given(st.integers(1, 3000))
def test_raw_pcm_in_any_chunking_comes_out_whole(size: int) -> None:
    out, _ = decode_all(split(PCM, size))
    assert out == PCM[: len(PCM) - len(PCM) % 2]


@given(st.integers(1, 3000))
def test_one_wav_per_request_in_any_chunking(size: int) -> None:
    out, rates = decode_all(split(wav_header(24000, 0xFFFFFFFF) + PCM, size))
    assert out == PCM and rates == {24000}


def test_one_wav_per_message() -> None:
    messages = [wav_header(22050, len(part)) + part for part in split(PCM, 300)]
    out, rates = decode_all(messages)
    assert out == PCM and rates == {22050}


def test_chunks_before_data_are_skipped_and_a_sized_data_chunk_ends_where_it_says() -> None:
    listing = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\x00"  # odd size, padded
    stream = wav_header(16000, len(PCM), extra_chunk=listing) + PCM + b"LIST\x04\x00\x00\x00junk"
    out, _ = decode_all(split(stream, 100))
    assert out == PCM


def test_a_trailer_message_after_a_sized_file_is_not_played() -> None:
    out, _ = decode_all([wav_header(16000, len(PCM)) + PCM, b"id3 \x06\x00\x00\x00ID3tag"])
    assert out == PCM


def test_a_header_split_across_messages() -> None:
    stream = wav_header(16000, 0xFFFFFFFF) + PCM
    out, _ = decode_all([stream[:3], stream[3:20], stream[20:]])
    assert out == PCM


def test_odd_bytes_across_per_message_wavs_are_carried() -> None:
    messages = [wav_header(16000, len(part)) + part for part in split(PCM, 333)]
    out, _ = decode_all(messages)
    assert out == PCM


def test_raw_pcm_follows_the_stated_rate() -> None:
    decoder = WavDecoder(sample_rate=16000)
    chunk = decoder.feed(PCM, sample_rate=24000)
    assert chunk is not None and chunk.sample_rate == 24000


def test_the_wav_header_wins_over_a_stated_rate() -> None:
    decoder = WavDecoder(sample_rate=16000)
    chunk = decoder.feed(wav_header(22050, 0xFFFFFFFF) + PCM, sample_rate=16000)
    assert chunk is not None and chunk.sample_rate == 22050


def test_stereo_frames_stay_whole() -> None:
    header = bytearray(wav_header(16000, 0xFFFFFFFF, channels=2))
    decoder = WavDecoder(sample_rate=16000)
    sizes = []
    for part in split(bytes(header) + PCM, 301):
        if (chunk := decoder.feed(part)) is not None:
            assert chunk.num_channels == 2
            sizes.append(len(chunk.pcm))
    assert all(size % 4 == 0 for size in sizes) and sum(sizes) == len(PCM)


@pytest.mark.parametrize(
    "header",
    [
        wav_header(16000, 100)[:20] + struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32),
        b"RIFF\x00\x00\x00\x00AVI LIST",
        b"RIFF\x10\x00\x00\x00WAVEdata\x00\x00\x00\x00",
    ],
    ids=["float32", "not wave", "data before fmt"],
)
def test_unplayable_wavs_are_refused(header: bytes) -> None:
    with pytest.raises(AudioFormatError):
        WavDecoder(sample_rate=16000).feed(header + b"\x00" * 64)


def test_a_runaway_header_is_refused() -> None:
    decoder = WavDecoder(sample_rate=16000)
    decoder.feed(b"RIFF\xff\xff\xff\xffWAVE" + b"JUNK" + struct.pack("<I", 1 << 20))
    with pytest.raises(AudioFormatError):
        for _ in range(20):
            decoder.feed(b"\x00" * 8192)


def test_a_data_length_that_lies_short_does_not_cut_the_audio() -> None:
    # the header claims 100 bytes of audio; 2048 follow, in this message and the next
    stream = wav_header(16000, 100) + PCM
    out, _ = decode_all([stream[:500], stream[500:]])
    assert out == PCM


def test_a_trailer_split_across_messages_is_skipped() -> None:
    trailer = b"LIST" + (20).to_bytes(4, "little") + b"INFOISFT" + b"x" * 12
    stream = wav_header(16000, len(PCM)) + PCM + trailer
    cut = len(stream) - 15
    out, _ = decode_all([stream[:cut], stream[cut:]])
    assert out == PCM


def test_wav_header_says_mono_16_bit_of_unknown_length() -> None:
    header = server_wav_header(24000)
    assert len(header) == WAV_HEADER_SIZE
    riff, riff_size, wave, fmt, fmt_size = struct.unpack_from("<4sI4s4sI", header)
    assert (riff, wave, fmt, fmt_size) == (b"RIFF", b"WAVE", b"fmt ", 16)
    assert riff_size == 0xFFFFFFFF
    tag, channels, rate, byte_rate, align, bits = struct.unpack_from("<HHIIHH", header, 20)
    assert (tag, channels, rate, byte_rate, align, bits) == (1, 1, 24000, 48000, 2, 16)
    assert header[36:40] == b"data"
    assert struct.unpack_from("<I", header, 40)[0] == 0xFFFFFFFF


@pytest.mark.parametrize("name", ["pcm", "wav"])
def test_what_a_format_s_encoder_writes_its_decoder_reads_back(name: str) -> None:
    encoder = formats.new_encoder(name, sample_rate=24000)
    decoder = formats.new_decoder(name, sample_rate=24000)
    pieces = [PCM[:101], PCM[101:1000], PCM[1000:]]
    out = b""
    for i, piece in enumerate(pieces):
        chunk = decoder.feed(encoder.encode(piece, last=i == len(pieces) - 1))
        if chunk is not None:
            assert chunk.sample_rate == 24000
            out += chunk.pcm
    assert out == PCM
    assert decoder.pending_bytes == 0


def test_the_wav_encoder_writes_one_header_for_the_whole_request() -> None:
    encoder = formats.new_encoder("wav", sample_rate=16000)
    first, second = encoder.encode(PCM), encoder.encode(PCM)
    assert first == server_wav_header(16000) + PCM
    assert second == PCM


def test_every_declared_format_is_registered() -> None:
    for name in formats.OUTPUT_FORMATS:
        assert formats.get(name).name == name
    with pytest.raises(KeyError):
        formats.get("flac")
