"""The load the worker reports to LiveKit's dispatch (agent.py: worker_load, LOAD_THRESHOLD)."""

from __future__ import annotations

import time

import pytest

import agent
from agent import LOAD_THRESHOLD, MAX_CALLS_PER_WORKER, MAX_CPU_SHARE, combined_load


def full(load: float) -> bool:
    return load >= LOAD_THRESHOLD  # the framework's test for "full"


def test_an_idle_worker_takes_calls() -> None:
    assert combined_load(0, 0.0) == 0.0


def test_the_worker_is_full_at_its_call_limit_and_not_before() -> None:
    assert not full(combined_load(MAX_CALLS_PER_WORKER - 1, 0.1))
    assert full(combined_load(MAX_CALLS_PER_WORKER, 0.1))


def test_busy_cpu_fills_the_worker_before_its_call_limit() -> None:
    assert not full(combined_load(1, MAX_CPU_SHARE - 0.05))
    assert full(combined_load(1, MAX_CPU_SHARE))


def test_the_larger_share_is_the_load() -> None:
    calls = MAX_CALLS_PER_WORKER // 2
    assert combined_load(calls, 0.0) == pytest.approx(0.5)
    assert combined_load(calls, MAX_CPU_SHARE * 0.75) == pytest.approx(0.75)


def test_the_cpu_sampler_measures_this_machine_without_blocking() -> None:
    sampler = agent._CpuSampler()
    started = time.monotonic()
    assert sampler.share() == 0.0  # no sample yet: the first read starts the thread
    assert time.monotonic() - started < 0.1
    deadline = time.monotonic() + 5.0
    while sampler.share() == 0.0 and time.monotonic() < deadline:
        end = time.monotonic() + 0.3
        while time.monotonic() < end:  # keep a core busy so there is something to measure
            pass
    assert 0.0 < sampler.share() <= 1.0
