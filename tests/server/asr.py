"""Speech recognition for the intelligibility tests: pocketsphinx and word error rate.

pocketsphinx 5 ships its US English acoustic model, language model and dictionary inside the
package, so ``Decoder()`` needs no files and no network.  It decodes 16 kHz mono s16le.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Final

from pocketsphinx import Decoder

ASR_SAMPLE_RATE: Final = 16000
_NOT_WORD: Final = re.compile(r"[^a-z0-9' ]+")


@functools.cache
def _decoder() -> Decoder:
    # Building the decoder loads the models (~0.5 s); it is reused for every utterance.
    # maxhmmpf 3000 (default 30000) bounds the search: same WER on speech, and garbage (the
    # negative controls) decodes 2-3x faster instead of exploding the search.
    return Decoder(samprate=ASR_SAMPLE_RATE, loglevel="FATAL", maxhmmpf=3000)


def transcribe(pcm: bytes) -> str:
    """The words pocketsphinx hears in 16 kHz mono s16le ``pcm`` ("" for none)."""
    decoder = _decoder()
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return hypothesis.hypstr if hypothesis is not None else ""


def normalize(text: str) -> list[str]:
    return _NOT_WORD.sub(" ", text.lower().replace("-", " ")).split()


def word_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Substitutions + deletions + insertions (word-level Levenshtein distance)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, 1):
            current.append(
                min(
                    previous[j] + 1,  # deletion
                    current[j - 1] + 1,  # insertion
                    previous[j - 1] + (ref_word != hyp_word),  # substitution or match
                )
            )
        previous = current
    return previous[-1]


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: all errors over all reference words."""
    errors = sum(
        word_errors(normalize(r), normalize(h)) for r, h in zip(references, hypotheses, strict=True)
    )
    words = sum(len(normalize(r)) for r in references)
    return errors / words
