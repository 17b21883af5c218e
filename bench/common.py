"""What the benchmarks share: percentiles, tables, plots, and where results go."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import numpy as np

from tts_custom.knowlithictts import TTS

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PLOTS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def python_server(
    module: str, *args: str, health_path: str, timeout: float = 60.0
) -> AsyncIterator[int]:
    """Run ``python -m module --host 127.0.0.1 --port <free> args`` until ``health_path``
    answers 200; yield the port.  The process is terminated on exit."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port), *args),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, f"http://127.0.0.1:{port}{health_path}", proc, timeout)
        yield port
    finally:
        proc.terminate()
        await proc.wait()


async def wait_healthy(
    http: aiohttp.ClientSession,
    url: str,
    process: asyncio.subprocess.Process,
    timeout: float = 60.0,
) -> None:
    """Until ``url`` answers 200; :class:`RuntimeError` if ``process`` exits first."""
    async with asyncio.timeout(timeout):
        while process.returncode is None:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the server exited with {process.returncode} before it was healthy")


@asynccontextmanager
async def local_tts_server(*args: str, timeout: float = 60.0) -> AsyncIterator[str]:
    """Run ``python -m tts_server`` (real Piper) on a free port; yield its ws:// URL."""
    async with python_server("tts_server", *args, health_path="/health", timeout=timeout) as port:
        yield f"ws://127.0.0.1:{port}"


@asynccontextmanager
async def delay_proxy_process(
    target_port: int, rtt: float, *, bandwidth: float | None = None
) -> AsyncIterator[int]:
    """Run tests/delay_proxy.py in a process of its own; yield the port it listens on.

    In its own process the link's work does not compete with the client being measured for
    the event loop, as a real network would not.  ``bandwidth`` (bit/s) caps the link, shared
    by every connection through it.
    """
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tests.delay_proxy"),
        *("--target-port", str(target_port), "--rtt", str(rtt)),
        *(("--bandwidth", str(bandwidth)) if bandwidth is not None else ()),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
        if not line or line[0] != "port":
            raise RuntimeError("the delay proxy did not start")
        yield int(line[1])
    finally:
        proc.terminate()
        await proc.wait()


async def prewarmed(tts: TTS, timeout: float = 10.0) -> None:
    """Prewarm ``tts`` as the framework does, and wait until its socket is open."""
    tts.prewarm()
    async with asyncio.timeout(timeout):
        while tts._pool.current is None:  # noqa: ASYNC110 - the socket opens in a task
            await asyncio.sleep(0.005)


class Player:
    """A listener who starts playing at the first frame and plays in real time: how often,
    and for how long, it runs dry waiting for audio."""

    def __init__(self) -> None:
        self.clock = 0.0  # when the audio received so far finishes playing
        self.underruns = 0
        self.starved = 0.0  # seconds spent dry

    def hear(self, now: float, seconds: float) -> None:
        """A frame of ``seconds`` of audio arrived at ``now`` (``time.perf_counter()``)."""
        if not self.clock:
            self.clock = now
        elif now > self.clock + 0.005:  # the frame came after the player ran dry
            self.underruns += 1
            self.starved += now - self.clock
            self.clock = now
        self.clock += seconds


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> list[float]:
    if not values:
        return [float("nan")] * len(points)
    return [float(v) for v in np.percentile(np.asarray(values, dtype=float), points)]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table (also valid Markdown)."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {_cpu_model()}, "
        f"Python {platform.python_version()}"
    )


def plot_path(name: str, out_dir: Path | None = None) -> Path:
    directory = out_dir or PLOTS
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{name}.png"


def plot_cdf(ax: Axes, values: Sequence[float], label: str) -> None:
    """The share of ``values`` at or below each value: a whole distribution in one line."""
    xs = sorted(values)
    ax.plot(xs, [i / len(xs) for i in range(1, len(xs) + 1)], label=label)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
