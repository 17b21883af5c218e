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
from knowlithic_protocol.formats.opus import (
    DEFAULT_BITRATE,
    MAX_BITRATE,
    MIN_BITRATE,
    OPUS_RATES,
    OpusDecoder,
    OpusEncoder,
    opus_rate,
)

RATES = list(OPUS_RATES)


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


def multi_tone(rate: int, seconds: float) -> bytes:
    """Five partials under a slow swell: a waveform a speech codec keeps closely."""
    t = np.arange(int(rate * seconds)) / rate
    partials = sum(
        np.sin(2 * np.pi * f * t + k) / (k + 1) for k, f in enumerate((220, 330, 550, 880, 1210))
    )
    return bytes((partials * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t)) * 5000).astype("<i2"))


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
            assert chunk.num_channels == 1
            pcm += chunk.pcm
            out_rate = chunk.sample_rate
    tail = decoder.finish()
    if tail is not None:
        pcm += tail.pcm
    return pcm, out_rate


def pieces_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def ms_of(rate: int, ms: int) -> int:
    return rate * 2 * ms // 1000


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(float)


def raw_pages(data: bytes) -> list[bytes]:
    """``data`` cut into its pages, as bytes (sizes from the headers, nothing checked)."""
    pages = []
    while data:
        count = data[26]
        size = 27 + count + sum(data[27 : 27 + count])
        pages.append(data[:size])
        data = data[size:]
    return pages


def file_of(data: bytes) -> tuple[int, int, bytes]:
    """What FFmpeg's Ogg demuxer makes of ``data``: samples (48 kHz), rate, OpusHead."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name in {"opus", "libopus"}
        decoded: int = sum(frame.samples for frame in container.decode(stream))
        head = bytes(stream.codec_context.extradata or b"")
        return decoded, stream.codec_context.sample_rate, head


# -- what goes in comes out --------------------------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
def test_a_multi_tone_comes_back_aligned_at_its_rate_and_length(rate: int) -> None:
    pcm = multi_tone(rate, 1.0)
    out, out_rate = decode_all(encode_in(pieces_of(pcm, ms_of(rate, 40)), rate), rate)
    assert out_rate == rate
    assert len(out) == len(pcm)  # the end granule trims the padding to the sample
    x, y = samples(out), samples(pcm)
    # aligned by the pre-skip: what is left of libopus's delay is a fraction of a millisecond
    lags = range(-rate // 1000, rate // 1000 + 1)
    correlation = {lag: np.corrcoef(np.roll(x, lag), y)[0, 1] for lag in lags}
    best = max(correlation, key=lambda lag: correlation[lag])
    assert abs(best) <= rate // 2000
    assert correlation[best] > 0.9


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_speech_like_audio_keeps_its_waveform_and_spectrum(rate: int) -> None:
    pcm = speech_like(rate, 1.0)
    out, _ = decode_all(encode_in(pieces_of(pcm, ms_of(rate, 200)), rate), rate)
    x, y = samples(out), samples(pcm)
    assert len(x) == len(y)
    # a lossy codec keeps the voice, not the noise in it: the waveform follows loosely
    assert np.corrcoef(x, y)[0, 1] > 0.7
    assert np.corrcoef(np.abs(np.fft.rfft(x)), np.abs(np.fft.rfft(y)))[0, 1] > 0.97


def test_a_rate_opus_does_not_have_is_carried_at_the_nearest_one() -> None:
    assert [opus_rate(r) for r in (8000, 11025, 22050, 32000, 44100, 96000)] == [
        8000,
        12000,
        24000,
        24000,
        48000,
        48000,
    ]
    pcm = speech_like(22050, 1.0)
    encoder = formats.new_encoder("opus", sample_rate=22050)
    assert encoder.sample_rate == 24000
    payloads = [encoder.encode(p) for p in pieces_of(pcm, 4410)] + [encoder.encode(b"", last=True)]
    out, out_rate = decode_all(payloads, 22050)
    assert out_rate == 24000
    assert abs(len(out) / 2 / 24000 - 1.0) < 0.002


def test_odd_byte_counts_never_shift_a_sample() -> None:
    rate = 16000
    pcm = multi_tone(rate, 0.6)
    whole, _ = decode_all(encode_in([pcm], rate), rate)
    odd, _ = decode_all(encode_in(pieces_of(pcm, 333), rate), rate)
    assert odd == whole  # the same frames reach libopus, so the same audio comes out


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(0, 3000), min_size=1, max_size=12))
def test_the_encoder_s_calls_split_anywhere_give_the_same_audio(cuts: list[int]) -> None:
    rate = 16000
    pcm = speech_like(rate, 0.3, seed=2)
    pieces, position = [], 0
    for cut in cuts:
        pieces.append(pcm[position : position + cut])
        position += cut
    pieces.append(pcm[position:])
    assert (
        decode_all(encode_in(pieces, rate), rate)[0] == decode_all(encode_in([pcm], rate), rate)[0]
    )


def test_no_audio_at_all_is_an_empty_but_valid_stream() -> None:
    payloads = encode_in([], 16000)
    assert decode_all(payloads, 16000) == (b"", 16000)
    assert file_of(b"".join(payloads))[0] == 0


def test_a_long_call_spills_onto_more_pages_in_order() -> None:
    rate = 8000
    pcm = speech_like(rate, 6.0)  # 300 frames: more than one page's 255 segments
    payloads = encode_in([pcm], rate)
    pages = ogg.PageReader().feed(b"".join(payloads))
    audio = [p for p in pages[2:] if p.packets]
    assert len(audio) >= 2 and audio[-1].flags & ogg.EOS
    granules = [p.granule for p in audio]
    assert granules == sorted(granules)
    out, _ = decode_all(payloads, rate)
    assert len(out) == len(pcm)


# -- the stream a player sees ------------------------------------------------------------------


@pytest.mark.parametrize("rate", [*RATES, 22050])
def test_the_joined_payloads_are_an_ogg_opus_file_a_player_reads(rate: int) -> None:
    seconds = 0.5
    pcm = speech_like(rate, seconds)
    encoder = OpusEncoder(sample_rate=rate)
    whole = b"".join(
        [encoder.encode(p) for p in pieces_of(pcm, 1001)] + [encoder.encode(b"", last=True)]
    )
    decoded, file_rate, head = file_of(whole)
    assert file_rate == 48000  # Opus decodes at 48 kHz: pre-skip and padding trimmed
    assert abs(decoded - seconds * 48000) <= 960  # within a frame
    assert struct.unpack_from("<I", head, 12)[0] == encoder.sample_rate  # the input rate


def test_every_payload_is_whole_pages_and_the_first_carries_the_headers() -> None:
    rate = 16000
    payloads = encode_in(pieces_of(speech_like(rate, 0.5), ms_of(rate, 40)), rate)
    reader = ogg.PageReader()
    head, tags, *rest = reader.feed(payloads[0])
    assert head.packets == (head.packets[0],) and head.packets[0].startswith(b"OpusHead")
    assert head.flags == ogg.BOS and head.granule == 0
    assert tags.packets[0].startswith(b"OpusTags") and len(tags.packets) == 1
    assert len(rest) == 1  # then the first call's audio: one page
    for payload in payloads[1:]:
        assert payload.startswith(b"OggS")
        assert len(reader.feed(payload)) == 1
        assert reader.pending_bytes == 0  # nothing left over: whole pages only
    assert reader.ended


def test_each_call_flushes_the_frames_it_completed_at_once() -> None:
    rate = 16000
    encoder = OpusEncoder(sample_rate=rate)
    reader = ogg.PageReader()
    first = reader.feed(encoder.encode(speech_like(rate, 0.02)))
    assert [p.packets[0][:8] for p in first[:2]] == [b"OpusHead", b"OpusTags"]
    assert len(first) == 3 and len(first[2].packets) == 1  # 20 ms in, its packet out
    ten_ms = speech_like(rate, 0.01)
    assert encoder.encode(ten_ms) == b""  # half a frame: nothing to send yet
    (page,) = reader.feed(encoder.encode(ten_ms))
    assert len(page.packets) == 1  # the frame those two halves made, sent at once
    (page,) = reader.feed(encoder.encode(speech_like(rate, 0.1)))
    assert len(page.packets) == 5 and page.granule == 7 * 960


def test_libopus_holds_no_frame_back_and_its_lookahead_is_the_pre_skip() -> None:
    rate = 24000
    encoder = OpusEncoder(sample_rate=rate)
    head = ogg.PageReader().feed(encoder.encode(b""))[0].packets[0]
    assert struct.unpack_from("<H", head, 10)[0] == encoder.pre_skip == 312  # 6.5 ms
    # the raw codec, as the encoder sets it up: a packet per frame, stamped minus the delay
    codec = av.CodecContext.create("libopus", "w")
    assert isinstance(codec, av.AudioCodecContext)
    codec.sample_rate, codec.layout, codec.format = rate, "mono", "s16"
    codec.options = {"application": "voip", "frame_duration": "20"}
    frame = av.AudioFrame.from_ndarray(
        np.frombuffer(speech_like(rate, 0.02), "<i2").reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate, frame.pts = rate, 0
    (packet,) = codec.encode(frame)
    assert packet.pts is not None and -packet.pts * 48000 // rate == encoder.pre_skip


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 4000), min_size=1, max_size=30))
def test_payloads_split_anywhere_decode_the_same(cuts: list[int]) -> None:
    rate = 16000
    payloads = encode_in(pieces_of(speech_like(rate, 0.4, seed=1), 1280), rate)
    whole = b"".join(payloads)
    expected, _ = decode_all(payloads, rate)
    resplit, position = [], 0
    decoder = OpusDecoder(sample_rate=rate)
    for cut in cuts:
        resplit.append(whole[position : position + cut])
        position += cut
    resplit.append(whole[position:])
    got = b""
    for piece in resplit:
        chunk = decoder.feed(piece)
        got += chunk.pcm if chunk else b""
        assert decoder.pending_bytes < ogg.MAX_PAGE_SIZE
    tail = decoder.finish()
    assert got + (tail.pcm if tail else b"") == expected


def ffmpeg_ogg_opus() -> bytes:
    """A second of stereo Ogg Opus written by FFmpeg's muxer (which holds every page back)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000, layout="stereo")
        t = np.arange(48000) / 48000
        both = np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 500 * t)]) * 8000
        frame = av.AudioFrame.from_ndarray(
            both.T.reshape(1, -1).astype("<i2"), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts = 48000, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


def test_a_stereo_file_from_ffmpeg_s_muxer_decodes_to_mono() -> None:
    out, out_rate = decode_all(pieces_of(ffmpeg_ogg_opus(), 700), 16000)
    assert out_rate == 48000 and len(out) == 2 * 48000


def test_the_bit_rate_is_what_was_asked_page_overhead_included() -> None:
    rate, seconds = 24000, 3.0
    pcm = speech_like(rate, seconds)
    # 200 ms messages, as the server sends Opus
    whole = b"".join(encode_in(pieces_of(pcm, ms_of(rate, 200)), rate, DEFAULT_BITRATE))
    assert DEFAULT_BITRATE == 24000
    assert len(whole) * 8 / seconds <= 32000


def test_a_bit_rate_out_of_range_is_refused() -> None:
    assert (MIN_BITRATE, MAX_BITRATE) == (6000, 64000)
    for bitrate in (MIN_BITRATE, MAX_BITRATE):
        OpusEncoder(sample_rate=16000, bitrate=bitrate)
    for bitrate in (MIN_BITRATE - 1, MAX_BITRATE + 1, 0):
        with pytest.raises(ValueError, match="bitrate"):
            OpusEncoder(sample_rate=16000, bitrate=bitrate)
    with pytest.raises(ValueError, match="sample rate"):
        OpusEncoder(sample_rate=1000)


def test_nothing_is_encoded_after_the_end() -> None:
    encoder = OpusEncoder(sample_rate=16000)
    encoder.encode(b"", last=True)
    with pytest.raises(ValueError, match="ended"):
        encoder.encode(b"\x00\x00")


# -- what a broken stream does -----------------------------------------------------------------


@pytest.fixture
def payloads() -> list[bytes]:
    return encode_in(pieces_of(speech_like(16000, 0.5), 1280), 16000)


def flipped(payloads: list[bytes], index: int, position: int) -> list[bytes]:
    damaged = bytearray(payloads[index])
    damaged[position] ^= 0x40
    return [*payloads[:index], bytes(damaged), *payloads[index + 1 :]]


def serial_of(payloads: list[bytes]) -> int:
    serial: int = struct.unpack_from("<I", payloads[0], 14)[0]
    return serial


def test_a_flipped_byte_in_a_packet_fails_the_page_s_crc(payloads: list[bytes]) -> None:
    with pytest.raises(AudioFormatError, match="page 4 failed its CRC"):
        decode_all(flipped(payloads, 2, 40), 16000)


def test_a_corrupt_crc_field_is_noticed(payloads: list[bytes]) -> None:
    with pytest.raises(AudioFormatError, match="CRC"):
        decode_all(flipped(payloads, 2, 22), 16000)


def test_an_opus_packet_libopus_rejects_is_a_format_error(payloads: list[bytes]) -> None:
    head, tags, *_ = raw_pages(payloads[0])
    for packet in (b"\x0b", b"", bytes(9000)):  # code 3 without its count byte; empty; huge
        bad = ogg.page([packet], serial=serial_of(payloads), sequence=2, granule=960)
        decoder = OpusDecoder(sample_rate=16000)
        decoder.feed(head + tags)
        with pytest.raises(AudioFormatError, match=r"Opus packet.*the audio is corrupt"):
            decoder.feed(bad)


def test_a_stream_must_start_with_its_first_page(payloads: list[bytes]) -> None:
    with pytest.raises(AudioFormatError, match="first page"):
        OpusDecoder(sample_rate=16000).feed(payloads[1])


def test_missing_pages_are_noticed(payloads: list[bytes]) -> None:
    head, _, *audio = raw_pages(payloads[0])
    with pytest.raises(AudioFormatError, match="page 2 came where page 1 was due"):
        decode_all([head, *audio], 16000)  # the OpusTags page lost
    with pytest.raises(AudioFormatError, match="missing"):
        decode_all([payloads[0], *payloads[2:]], 16000)


def test_bytes_that_are_not_ogg_are_refused(payloads: list[bytes]) -> None:
    with pytest.raises(AudioFormatError, match="not an Ogg stream"):
        OpusDecoder(sample_rate=16000).feed(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    with pytest.raises(AudioFormatError, match="not an Ogg stream"):
        OpusDecoder(sample_rate=16000).feed(b"Og\x00")
    decoder = OpusDecoder(sample_rate=16000)
    decoder.feed(payloads[0])
    with pytest.raises(AudioFormatError, match="not an Ogg page: corrupt"):
        decoder.feed(b"\x12\x34garbage" + payloads[1])


def test_a_page_of_another_stream_or_after_the_end_is_refused(payloads: list[bytes]) -> None:
    decoder = OpusDecoder(sample_rate=16000)
    decoder.feed(payloads[0])
    other = ogg.page([b"\xf8\xff\xfe"], serial=serial_of(payloads) ^ 1, sequence=3, granule=0)
    with pytest.raises(AudioFormatError, match="of stream"):
        decoder.feed(other)
    decoder = OpusDecoder(sample_rate=16000)
    for payload in payloads:
        decoder.feed(payload)
    after = ogg.page([b"\xf8\xff\xfe"], serial=serial_of(payloads), sequence=99, granule=0)
    with pytest.raises(AudioFormatError, match="after the end"):
        decoder.feed(after)


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"OpusHeaX" + bytes(11), "does not start with an OpusHead"),
        (b"OpusHead\x01\x01", "does not start with an OpusHead"),
        (b"OpusHead" + struct.pack("<BBHIhB", 0x10, 1, 312, 16000, 0, 0), "version 16"),
        (b"OpusHead" + struct.pack("<BBHIhB", 1, 3, 312, 16000, 0, 0), "3 channels"),
        (b"OpusHead" + struct.pack("<BBHIhB", 1, 1, 312, 16000, 0, 1), "mapping family 1"),
    ],
)
def test_a_bad_opus_head_is_refused(head: bytes, message: str) -> None:
    with pytest.raises(AudioFormatError, match=message):
        OpusDecoder(sample_rate=16000).feed(
            ogg.page([head], serial=1, sequence=0, granule=0, flags=ogg.BOS)
        )


def test_the_second_packet_must_be_opus_tags(payloads: list[bytes]) -> None:
    head, serial = raw_pages(payloads[0])[0], serial_of(payloads)
    for tags, message in (
        (b"\xf8\xff\xfe", "not OpusTags"),
        (b"OpusTags\xff\x00\x00\x00vendor", "truncated"),
    ):
        decoder = OpusDecoder(sample_rate=16000)
        with pytest.raises(AudioFormatError, match=message):
            decoder.feed(head + ogg.page([tags], serial=serial, sequence=1, granule=0))


def test_a_truncated_last_page_fails_at_the_end(payloads: list[bytes]) -> None:
    decoder = OpusDecoder(sample_rate=16000)
    for payload in payloads[:-1]:
        decoder.feed(payload)
    assert decoder.feed(payloads[-1][:-5]) is None
    assert decoder.pending_bytes == len(payloads[-1]) - 5
    with pytest.raises(AudioFormatError, match="truncated"):
        decoder.finish()


def test_a_stream_with_no_header_at_all_fails_at_the_end(payloads: list[bytes]) -> None:
    with pytest.raises(AudioFormatError, match=r"truncated before its OpusHead"):
        OpusDecoder(sample_rate=16000).finish()
    decoder = OpusDecoder(sample_rate=16000)
    decoder.feed(raw_pages(payloads[0])[0])  # the OpusHead page alone
    with pytest.raises(AudioFormatError, match=r"truncated before its OpusTags"):
        decoder.finish()


# -- the Ogg layer -----------------------------------------------------------------------------


def reference_crc(data: bytes) -> int:
    """RFC 3533's CRC bit by bit: polynomial 0x04C11DB7, MSB first, initial value 0."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = (crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


@given(st.binary(max_size=600))
def test_the_ogg_crc_is_rfc_3533_s_not_zlib_s(data: bytes) -> None:
    assert ogg.crc32(data) == reference_crc(data)


def test_our_crc_agrees_with_ffmpeg_s_muxer() -> None:
    for page in raw_pages(ffmpeg_ogg_opus()):
        stated = struct.unpack_from("<I", page, 22)[0]
        assert ogg.crc32(page[:22] + bytes(4) + page[26:]) == stated


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, 70000), min_size=1, max_size=5), st.integers(1, 9000), st.booleans())
def test_pages_carry_any_packets_across_any_split(sizes: list[int], cut: int, last: bool) -> None:
    packets = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    writer = ogg.PageWriter(0xDEADBEEF)
    data = writer.write([(p, i) for i, p in enumerate(packets)], first=True, last=last)
    reader = ogg.PageReader()
    pages = [page for i in range(0, len(data), cut) for page in reader.feed(data[i : i + cut])]
    assert [p for page in pages for p in page.packets] == packets
    assert reader.pending_bytes == reader.pending_packet_bytes == 0
    assert max(len(page) for page in raw_pages(data)) <= ogg.MAX_PAGE_SIZE
    assert pages[0].flags & ogg.BOS and bool(pages[-1].flags & ogg.EOS) == last
    assert [page.sequence for page in pages] == list(range(len(pages)))
    # a page on which no packet ends has no granule position; the others the last one's
    ending = [page.granule for page in pages if page.packets]
    assert ending == sorted(ending) and ending[-1] == len(packets) - 1
    assert all(page.granule == ogg.NO_GRANULE for page in pages if not page.packets)


def test_a_packet_too_large_to_hold_is_refused() -> None:
    data = ogg.PageWriter(1).write([(bytes(5000), 0)], first=True)
    with pytest.raises(AudioFormatError, match="larger than 4096 bytes"):
        ogg.PageReader(max_packet=4096).feed(data)


def test_a_page_of_another_version_or_with_unknown_flags_is_refused() -> None:
    good = ogg.page([b"x"], serial=1, sequence=0, granule=0, flags=ogg.BOS)
    for offset, value, message in ((4, 1, "version 1"), (5, 0x0A, "unknown header flags")):
        bad = bytearray(good)
        bad[offset] = value
        with pytest.raises(AudioFormatError, match=message):
            ogg.PageReader().feed(bytes(bad))


def test_a_continued_flag_that_does_not_match_is_refused() -> None:
    first = ogg.page([b"x"], serial=1, sequence=0, granule=0, flags=ogg.BOS)
    second = ogg.page([b"y"], serial=1, sequence=1, granule=0, flags=ogg.CONTINUED)
    with pytest.raises(AudioFormatError, match="continued-packet flag"):
        ogg.PageReader().feed(first + second)
