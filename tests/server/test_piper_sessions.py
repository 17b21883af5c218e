"""Piper's onnxruntime sessions: a segment alone gets every core, one beside others one thread.

Two segments each on a two-thread session oversubscribe two cores; one thread each gets more
audio out of them (docs/benchmarks.md, section 9), while a segment alone is fastest on every
core.  The engine loads both sessions and picks per segment by what else is running.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest

from tts_server.audio import StreamResampler
from tts_server.config import BUNDLED_VOICE
from tts_server.engines import Engine
from tts_server.engines.piper import (
    PiperEngine,
    PiperVoiceRenderer,
    RenderCount,
    _cores,
    _load_narrow,
    load,
)

from .helpers import BASE_CONFIG

MULTICORE = pytest.mark.skipif(_cores() < 2, reason="one core: there is nothing to adapt")


class CountingSession:
    """A real onnxruntime session that counts its runs."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.runs = 0

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self.runs += 1
        return self.session.run(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def threads(session: Any) -> int:
    return int(session.get_session_options().intra_op_num_threads)


def render(voice: PiperVoiceRenderer) -> bytes:
    resampler = StreamResampler(voice.sample_rate, 16000)
    rendered = voice.render(
        "Your appointment is on Tuesday.",
        resampler=resampler,
        pause_after=0.0,
        inner_pause=0.0,
        last=True,
        with_words=False,
    )
    return rendered.pcm


@MULTICORE
def test_a_segment_alone_uses_every_core_and_one_beside_another_uses_one_thread(
    engine: Engine,
) -> None:
    assert isinstance(engine, PiperEngine)
    # loaded beside a server already serving (a restart is not slowed down by it)
    assert engine.narrowed.wait(60)
    voice = engine.voices[BUNDLED_VOICE]
    assert isinstance(voice, PiperVoiceRenderer)
    assert voice.narrow is not None
    assert threads(voice.piper.session) == _cores()
    assert threads(voice.narrow.session) == 1
    wide, narrow = CountingSession(voice.piper.session), CountingSession(voice.narrow.session)
    voice.piper.session, voice.narrow.session = wide, narrow
    try:
        alone = render(voice)
        assert (wide.runs, narrow.runs) == (1, 0)
        # another segment is being synthesized (by any voice of the engine): one thread
        with voice._renders.entered():
            pcm = render(voice)
        assert (wide.runs, narrow.runs) == (1, 1)
        # the same model: the same speech, give or take Piper's random durations
        assert 0.75 < len(pcm) / len(alone) < 1.33
        assert render(voice)  # alone again
        assert (wide.runs, narrow.runs) == (2, 1)
    finally:
        voice.piper.session, voice.narrow.session = wide.session, narrow.session


@pytest.mark.parametrize(
    ("onnx_threads", "workers"), [(1, 2), (2, 2), (0, 1)], ids=["fixed-1", "fixed-2", "one-worker"]
)
def test_a_fixed_thread_count_or_a_single_worker_loads_one_session(
    onnx_threads: int, workers: int
) -> None:
    engine = load(replace(BASE_CONFIG, onnx_threads=onnx_threads, workers=workers))
    try:
        assert engine.narrowed.is_set()
        voice = engine.voices[BUNDLED_VOICE]
        assert voice.narrow is None
        assert threads(voice.piper.session) == (onnx_threads or _cores())
    finally:
        engine.close()


def test_a_one_thread_session_that_fails_to_load_leaves_the_wide_one_serving(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    voice = engine.voices[BUNDLED_VOICE]
    assert isinstance(voice, PiperVoiceRenderer)
    done = threading.Event()
    spare = PiperVoiceRenderer("spare", voice.piper, synthesis=voice.synthesis)
    # in a thread of its own, as the engine runs it (it lowers its own priority)
    models = [(spare, b"not an onnx model")]
    loader = threading.Thread(target=_load_narrow, args=(models, done, threading.Event()))
    loader.start()
    loader.join(60)
    assert done.is_set()
    assert spare.narrow is None
    assert "one-thread sessions failed" in caplog.text
    with spare._renders.entered():  # beside another segment: the wide session serves
        assert render(spare)


def test_the_render_count_is_what_else_runs_across_threads() -> None:
    count = RenderCount()
    seen: list[int] = []
    inside, release = threading.Barrier(3), threading.Event()

    def hold() -> None:
        with count.entered() as others:
            seen.append(others)
            inside.wait()
            release.wait()

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for t in holders:
        t.start()
    inside.wait()  # both are inside
    with count.entered() as others:
        assert others == 2
    release.set()
    for t in holders:
        t.join()
    assert sorted(seen) == [0, 1]
    with count.entered() as others:
        assert others == 0  # everything left, even a block that raised would


def test_a_block_that_raises_leaves_the_count() -> None:
    count = RenderCount()
    with pytest.raises(RuntimeError), count.entered():
        raise RuntimeError("synthesis failed")
    with count.entered() as others:
        assert others == 0
