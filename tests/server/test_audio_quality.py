"""What the audio sounds like: intelligible, even in loudness, free of clicks.

Each check also runs on deliberately broken audio, to show that it can fail.
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt

from .asr import ASR_SAMPLE_RATE, transcribe, word_error_rate
from .helpers import Client, Connect

# Measured (docs/server.md): corpus WER over these sentences 0.045-0.106, mean 0.076, in 15
# runs; silence, noise, the wrong rate and byte-swapped audio all score 0.89 or worse.
WER_THRESHOLD = 0.25
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back when you get home tonight.",
    "The weather today is warm with a light breeze.",
    "I would like to book a table for two people.",
    "Sure, I can help you with that booking today.",  # first clause split off
    "We have a meeting with the team on Monday morning.",
    "She bought some fresh bread and milk at the store.",
]
PARAGRAPH = (
    "Good morning and welcome to the clinic. Your appointment is at ten thirty today. "
    "Do you need directions to the parking garage? That is wonderful news! "
    "The doctor will see you shortly. Please have your insurance card ready."
)
SILENCE_LSB = 8  # |sample| at or below this is a pause
MIN_PAUSE = 0.1
LOUDNESS_SPREAD_DB = 4.0
EDGE_LIMIT_LSB = 328  # 1 % of full scale within 2 ms of a pause: anything louder is a cut

Int32Array = npt.NDArray[np.int32]


def samples(pcm: bytes) -> Int32Array:
    return np.frombuffer(pcm, dtype="<i2").astype(np.int32)


async def synthesize(client: Client, texts: list[str], rate: int, tag: str) -> list[bytes]:
    for i, text in enumerate(texts):
        await client.request(text, request_id=f"{tag}{i}", sample_rate=rate)
    ids = [f"{tag}{i}" for i in range(len(texts))]
    await client.until_done(*ids, timeout=60)
    assert all(client.results[rid].completed for rid in ids)
    return [client.results[rid].data for rid in ids]


def wer(pcms: list[bytes], references: list[str]) -> float:
    return word_error_rate(references, [transcribe(pcm) for pcm in pcms])


async def test_speech_is_intelligible_and_the_check_has_teeth(connect: Connect) -> None:
    client = await connect()
    speech = await synthesize(client, SENTENCES, ASR_SAMPLE_RATE, "s")
    measured = wer(speech, SENTENCES)
    print(f"intelligibility: WER {measured:.3f} (threshold {WER_THRESHOLD})")
    assert measured < WER_THRESHOLD

    # Negative controls on a subset (they only need to fail, and decoding takes time).
    subset, references = speech[:2], SENTENCES[:2]
    rng = np.random.default_rng(0)
    too_slow = await synthesize(client, references, 24000, "slow")  # 24 kHz played at 16 kHz
    too_fast = await synthesize(client, references, 8000, "fast")  # 8 kHz played at 16 kHz
    controls = {
        "silence": [bytes(len(pcm)) for pcm in subset],
        "white noise": [
            (rng.standard_normal(len(pcm) // 2) * 3000).astype("<i2").tobytes() for pcm in subset
        ],
        "24 kHz audio as 16 kHz": too_slow,
        "8 kHz audio as 16 kHz": too_fast,
        "byte-swapped": [samples(pcm).astype("<i2").byteswap().tobytes() for pcm in subset],
    }
    for name, pcms in controls.items():
        score = wer(pcms, references)
        print(f"control {name}: WER {score:.3f}")
        assert score > WER_THRESHOLD, name


def speech_regions(x: Int32Array, rate: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(speech, pauses): sample ranges split at runs of silence of at least MIN_PAUSE."""
    quiet = np.abs(x) <= SILENCE_LSB
    change = np.flatnonzero(np.diff(quiet.astype(np.int8))) + 1
    bounds = [0, *change.tolist(), len(x)]
    pauses = [
        (a, b)
        for a, b in itertools.pairwise(bounds)
        if quiet[a] and b - a >= MIN_PAUSE * rate and a > 0 and b < len(x)
    ]
    speech, previous = [], 0
    for a, b in pauses:
        speech.append((previous, a))
        previous = b
    speech.append((previous, len(x)))
    return speech, pauses


def active_rms_db(x: Int32Array, rate: int) -> float:
    frame = rate // 100
    n = len(x) // frame
    frames = x[: n * frame].reshape(n, frame).astype(np.float64) / 32767.0
    rms = np.sqrt(np.mean(frames**2, axis=1))
    active = rms[rms > 10 ** (-45 / 20)]
    return float(20 * np.log10(np.sqrt(np.mean(active**2))))


def loudness_spread(x: Int32Array, rate: int) -> tuple[int, float]:
    speech, _ = speech_regions(x, rate)
    levels = [active_rms_db(x[a:b], rate) for a, b in speech]
    return len(levels), max(levels) - min(levels)


async def test_loudness_is_even_from_sentence_to_sentence(connect: Connect) -> None:
    client = await connect()
    rate = 24000
    (pcm,) = await synthesize(client, [PARAGRAPH], rate, "p")
    x = samples(pcm)
    count, spread = loudness_spread(x, rate)
    print(f"loudness: {count} sentences, spread {spread:.1f} dB")
    assert count == 6
    assert spread <= LOUDNESS_SPREAD_DB

    # control: one sentence 8 dB louder, as per-sentence normalization can make it
    speech, _ = speech_regions(x, rate)
    a, b = speech[3]
    jumpy = x.copy()
    jumpy[a:b] = np.clip(jumpy[a:b] * 10 ** (8 / 20), -32767, 32767).astype(np.int32)
    assert loudness_spread(jumpy, rate)[1] > LOUDNESS_SPREAD_DB


def seam_edges(x: Int32Array, rate: int) -> int:
    """Loudest sample within 2 ms either side of every pause."""
    _, pauses = speech_regions(x, rate)
    near = round(rate * 0.002)
    return max(
        max(int(np.abs(x[a - near : a]).max()), int(np.abs(x[b : b + near]).max()))
        for a, b in pauses
    )


async def test_no_clicks_at_chunk_boundaries_or_sentence_seams(connect: Connect) -> None:
    client = await connect()
    rate = 24000
    await client.run(PARAGRAPH, request_id="c", sample_rate=rate)
    result = client.results["c"]
    x = samples(result.data)

    # The request starts and ends at silence.
    assert abs(int(x[0])) <= SILENCE_LSB and abs(int(x[-1])) <= SILENCE_LSB

    # Chunk boundaries are invisible: the curvature there is like anywhere else.
    boundaries = np.cumsum([len(a.data) // 2 for a in result.audio])[:-1]
    curvature = np.abs(x[2:] - 2 * x[1:-1] + x[:-2])
    assert len(boundaries) > 50
    assert curvature[boundaries - 1].mean() <= 2.0 * curvature.mean()

    # Speech fades into and out of every pause between sentences.
    assert seam_edges(x, rate) <= EDGE_LIMIT_LSB

    # control: speech cut by a pause at its loudest, as an unfaded seam would be
    speech, _ = speech_regions(x, rate)
    a, b = speech[2]
    loudest = a + int(np.argmax(np.abs(x[a:b])))
    cut = np.concatenate([x[:loudest], np.zeros(rate // 5, dtype=np.int32), x[loudest:]])
    assert seam_edges(cut, rate) > EDGE_LIMIT_LSB
