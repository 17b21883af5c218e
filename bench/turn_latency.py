"""Benchmark 2: a turn's first audio over a real-world link, three ways to hold the socket.

    python -m bench.turn_latency                  # 20, 50, 100 ms round trips, and TLS at 50
    python -m bench.turn_latency --turns 5        # a quick look

A delaying proxy on loopback (tests/delay_proxy.py, in a process of its own) puts a round
trip between the client and the stamped-audio server (bench/stamp_server.py), whose own time
to first audio is set to 40 ms, near the local Piper server's.  In the same run, three
clients take turns:

* **persistent**: this plugin, prewarmed, one socket kept open (what the agent runs);
* **per request**: a new WebSocket for every request, as in the seed's plugin guide;
* **close on interrupt**: LiveKit's ``ConnectionPool`` the way most plugins use it, which
  keeps the socket between turns but closes it whenever a turn is interrupted.

Each is timed on the first turn of a session (after the session's prewarm, where the client
has one) and on a turn right after an interruption: from the text being sent to the first
audio being available.  The floor is the server's own time to first audio plus one round
trip.  Target: the persistent plugin within the floor + 5 ms at p95, in both cases.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from livekit.agents.utils import ConnectionPool

import knowlithic_protocol as protocol
from bench.common import delay_proxy_process, machine, percentiles, plot_path, prewarmed, table
from bench.stamp_server import StampLog, stamp_server
from tts_custom.knowlithictts import TTS

SERVER_FIRST_MS = 40
TEXT = "Thanks for waiting, I have your results here."
Turn = Callable[[], Awaitable[float]]  # returns seconds to first audio


@dataclass
class Link:
    rtt_ms: int
    tls: bool = False

    @property
    def name(self) -> str:
        return f"{self.rtt_ms} ms" + (" + TLS" if self.tls else "")


def _session(tls: bool) -> aiohttp.ClientSession:
    # the bench server's certificate is self-signed: trust it, but still do the TLS handshake
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False) if tls else None)


async def _first_audio(ws: aiohttp.ClientWebSocketResponse, request_id: str) -> None:
    request = protocol.TextToSpeech(request_id, TEXT, "elise", 16000, "pcm")
    await ws.send_str(protocol.encode_client_message(request))
    while (await ws.receive()).type != aiohttp.WSMsgType.BINARY:
        pass


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    while (await ws.receive()).type != aiohttp.WSMsgType.TEXT:
        pass


class Persistent:
    """The plugin, driven as the framework drives it."""

    name = "persistent (this plugin)"

    def __init__(self, url: str, tls: bool) -> None:
        self._url, self._tls = url, tls
        self._http: aiohttp.ClientSession | None = None
        self.tts: TTS | None = None

    async def start_session(self) -> None:
        await self.close()
        self._http = _session(self._tls)
        self.tts = TTS(base_url=self._url, http_session=self._http, word_timestamps=False)
        await prewarmed(self.tts)

    async def turn(self, *, interrupt: bool = False) -> float:
        assert self.tts is not None
        started = time.perf_counter()
        stream = self.tts.stream()
        stream.push_text(TEXT)
        stream.end_input()
        await stream.__anext__()
        first = time.perf_counter() - started
        if interrupt:
            await stream.aclose()
        else:
            async for _ in stream:
                pass
            await stream.aclose()
        return first

    async def close(self) -> None:
        if self.tts is not None:
            await self.tts.aclose()
        if self._http is not None:
            await self._http.close()
        self.tts = self._http = None


class PerRequest:
    """A new socket for every request (the seed guide's ``websockets.connect`` per stream)."""

    name = "per request (seed)"

    def __init__(self, url: str, tls: bool) -> None:
        self._url, self._tls = url, tls
        self._http: aiohttp.ClientSession | None = None
        self._n = 0

    async def start_session(self) -> None:
        await self.close()
        self._http = _session(self._tls)

    async def turn(self, *, interrupt: bool = False) -> float:
        assert self._http is not None
        self._n += 1
        started = time.perf_counter()
        async with self._http.ws_connect(self._url) as ws:
            await _first_audio(ws, f"per-{self._n}")
            first = time.perf_counter() - started
            if not interrupt:
                await _drain(ws)
        return first

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        self._http = None


class CloseOnInterrupt:
    """LiveKit's ConnectionPool: kept between turns, closed when a turn is interrupted."""

    name = "close on interrupt (pool)"

    def __init__(self, url: str, tls: bool) -> None:
        self._url, self._tls = url, tls
        self._http: aiohttp.ClientSession | None = None
        self._pool: ConnectionPool[aiohttp.ClientWebSocketResponse] | None = None
        self._n = 0

    async def start_session(self) -> None:
        await self.close()
        http = self._http = _session(self._tls)

        async def connect(timeout: float) -> aiohttp.ClientWebSocketResponse:
            return await http.ws_connect(self._url, protocols=(protocol.SUBPROTOCOL,))

        async def close(ws: aiohttp.ClientWebSocketResponse) -> None:
            await ws.close()

        self._pool = ConnectionPool(connect_cb=connect, close_cb=close)
        self._pool.prewarm()
        async with self._pool.connection(timeout=10) as ws:
            await ws.receive()  # its capabilities

    async def turn(self, *, interrupt: bool = False) -> float:
        assert self._pool is not None
        self._n += 1
        started = time.perf_counter()
        first = 0.0
        try:
            async with self._pool.connection(timeout=10) as ws:
                if self._pool.last_connection_reused is False:
                    await ws.receive()  # a new socket starts with its capabilities
                await _first_audio(ws, f"pool-{self._n}")
                first = time.perf_counter() - started
                if interrupt:
                    raise asyncio.CancelledError  # what an interruption does to the task
                await _drain(ws)
        except asyncio.CancelledError:
            pass  # the pool has dropped the socket, as it does for a real interruption
        return first

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        if self._http is not None:
            await self._http.close()
        self._pool = self._http = None


Client = Persistent | PerRequest | CloseOnInterrupt


async def measure(client: Client, turns: int) -> tuple[list[float], list[float]]:
    """Seconds to first audio: on first turns, and on turns right after an interruption."""
    first: list[float] = []
    after_interrupt: list[float] = []
    for _ in range(turns):
        await client.start_session()
        first.append(await client.turn())
        await client.turn(interrupt=True)
        after_interrupt.append(await client.turn())
    await client.close()
    return first, after_interrupt


@dataclass
class Result:
    link: Link
    client: str
    first: list[float]
    after_interrupt: list[float]
    floor_ms: float


async def run_link(link: Link, turns: int) -> list[Result]:
    server_args = ["--chunks", "8", "--chunk-ms", "40", "--first-ms", str(SERVER_FIRST_MS)]
    if link.tls:
        server_args.append("--tls")
    async with stamp_server(*server_args) as (url, log):
        port = int(url.rsplit(":", 1)[1])
        results = []
        async with delay_proxy_process(port, link.rtt_ms / 1000) as proxy_port:
            proxied = f"{'wss' if link.tls else 'ws'}://127.0.0.1:{proxy_port}"
            for cls in (Persistent, PerRequest, CloseOnInterrupt):
                client = cls(proxied, link.tls)
                first, after = await measure(client, turns)
                results.append(Result(link, client.name, first, after, 0.0))
        floor = _server_ttfa(log) + link.rtt_ms
        for result in results:
            result.floor_ms = floor
    return results


def _server_ttfa(log: StampLog) -> float:
    values = sorted(log.server_ttfa(r) for r in log.order if log.sent.get(r))
    return values[len(values) // 2]


def report(results: list[Result], turns: int) -> str:
    rows = []
    for r in results:
        first = percentiles([v * 1000 for v in r.first], (50, 95))
        after = percentiles([v * 1000 for v in r.after_interrupt], (50, 95))
        target = r.floor_ms + 5
        rows.append(
            [
                r.link.name,
                r.client,
                r.floor_ms,
                *first,
                *after,
                "yes" if max(first[1], after[1]) <= target else "no",
            ]
        )
    headers = [
        "link RTT",
        "client",
        "floor ms",
        "first turn p50",
        "first turn p95",
        "after interrupt p50",
        "after interrupt p95",
        "within floor+5 ms",
    ]
    return (
        f"{turns} sessions per client and link; server first audio {SERVER_FIRST_MS} ms; "
        f"{machine()}\n" + table(headers, rows)
    )


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links = list(dict.fromkeys(r.link.name for r in results))
    clients = list(dict.fromkeys(r.client for r in results))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    width = 0.8 / len(clients)
    views: list[tuple[Any, str, Callable[[Result], list[float]]]] = [
        (axes[0], "first turn (after prewarm)", lambda r: r.first),
        (axes[1], "turn right after an interruption", lambda r: r.after_interrupt),
    ]
    for ax, title, pick in views:
        for i, client in enumerate(clients):
            values = [
                percentiles([v * 1000 for v in pick(r)], (95,))[0]
                for link in links
                for r in results
                if r.link.name == link and r.client == client
            ]
            xs = [n + i * width for n in range(len(links))]
            ax.bar(xs, values, width, label=client)
        floors = [next(r.floor_ms for r in results if r.link.name == link) for link in links]
        for n, floor in enumerate(floors):
            ax.hlines(floor, n - width / 2, n + width * (len(clients) - 0.5), colors="black")
        ax.set_xticks([n + width * (len(clients) - 1) / 2 for n in range(len(links))], links)
        ax.set_title(f"p95 time to first audio: {title}")
        ax.set_xlabel("link round trip (black line: server first audio + 1 RTT)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("milliseconds")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def run(links: list[Link], turns: int) -> list[Result]:
    results: list[Result] = []
    for link in links:
        results.extend(await run_link(link, turns))
    return results


def main(argv: list[str] | None = None, *, out_dir: Path | None = None) -> None:
    parser = argparse.ArgumentParser(description="turn latency over a delayed link")
    parser.add_argument("--turns", type=int, default=30, help="sessions per client and link")
    parser.add_argument("--rtt", type=int, nargs="*", default=[20, 50, 100])
    parser.add_argument("--no-tls", action="store_true", help="skip the TLS run at 50 ms")
    args = parser.parse_args(argv)
    links = [Link(rtt) for rtt in args.rtt] + ([] if args.no_tls else [Link(50, tls=True)])
    results = asyncio.run(run(links, args.turns))
    print(report(results, args.turns))
    path = plot_path("turn_latency", out_dir)
    plot(results, path)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
