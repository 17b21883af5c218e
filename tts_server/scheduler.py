"""Hands synthesis jobs to the worker threads, most urgent first.

Each job carries a deadline: the moment its request's listener runs out of audio (the request's
arrival plus the audio already sent for it).  A request's first segment is therefore always
more urgent than the fourth sentence of a request that already has seconds of audio queued
at its client, so new requests get their first audio quickly even under load (earliest
deadline first).  Jobs are handed to the thread pool only when a worker is free, so the
executor's own FIFO queue never holds anything and a cancelled job that has not started
costs nothing.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(order=True)
class _Job:
    deadline: float
    seq: int
    fn: Callable[[], Any] = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)


class Scheduler:
    """Earliest-deadline-first dispatch onto ``workers`` threads of ``executor``."""

    def __init__(self, executor: Executor, workers: int) -> None:
        self._executor = executor
        self._free = workers
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._busy = 0.0  # worker seconds of the jobs that ended
        self._running: dict[int, float] = {}  # when each running job was handed to a worker

    def busy_seconds(self) -> float:
        """Worker seconds used so far, running jobs included (for the utilization)."""
        now = time.monotonic()
        return self._busy + sum(now - started for started in self._running.values())

    @property
    def queued(self) -> int:
        return sum(1 for job in self._heap if not job.future.done())

    async def run(self, fn: Callable[[], T], deadline: float) -> T:
        """Run ``fn`` in a worker thread; cancelling the await drops a job not yet started.

        A job already running finishes in its thread (onnxruntime cannot be interrupted) and
        its result is discarded.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        heapq.heappush(self._heap, _Job(deadline, next(self._seq), fn, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._free > 0 and self._heap:
            job = heapq.heappop(self._heap)
            if job.future.done():  # cancelled while queued
                continue
            try:
                running = asyncio.get_running_loop().run_in_executor(self._executor, job.fn)
            except RuntimeError as e:  # executor shut down
                job.future.set_exception(e)
                continue
            self._free -= 1
            self._running[job.seq] = time.monotonic()
            running.add_done_callback(functools.partial(self._finished, job))

    def _finished(self, job: _Job, done: asyncio.Future[Any]) -> None:
        self._free += 1
        self._busy += time.monotonic() - self._running.pop(job.seq)
        # Read the outcome even when nobody waits for it any more, or asyncio logs
        # "exception was never retrieved".
        exc = None if done.cancelled() else done.exception()
        if not job.future.done():
            if done.cancelled():
                job.future.cancel()
            elif exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(done.result())
        self._dispatch()
