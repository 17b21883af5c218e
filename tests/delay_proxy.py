"""A TCP proxy on loopback that makes a link slow: latency, jitter, a bandwidth cap, stalls.

Each direction delays every chunk by half the round-trip time plus random jitter, but never
reorders: a chunk is due no earlier than the one before it, as on a real TCP connection.
A bandwidth cap is one link shared by every connection through the proxy, per direction:
each packet (at most 1500 bytes) waits for the link to be free and takes its size over the
rate to cross it, as on a busy uplink between regions.
A stall holds every byte until it is resumed.
Tests and benchmarks put it between the plugin and a server.  Benchmarks run it in a process
of its own, as a real link costs the client nothing:

    python -m tests.delay_proxy --target-port 8000 --rtt 0.05   # prints "port <n>"
    python -m tests.delay_proxy --target-port 8000 --rtt 0.05 --bandwidth 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

from tests.loopback import LoopbackServer


@dataclass
class LinkConditions:
    rtt: float = 0.0  # seconds, split evenly between the two directions
    jitter: float = 0.0  # up to this many extra seconds per chunk, per direction
    seed: int = 0
    bandwidth: float | None = None  # bits per second, shared by all connections, per direction
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def delay(self) -> float:
        return self.rtt / 2 + (self._rng.uniform(0, self.jitter) if self.jitter else 0.0)


class DelayProxy(LoopbackServer):
    def __init__(self, target_host: str, target_port: int, conditions: LinkConditions) -> None:
        super().__init__()
        self.conditions = conditions
        self._target = (target_host, target_port)
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        # per direction (True: towards the server): when the shared link is next free
        self._link_free_at = {True: 0.0, False: 0.0}

    def stall(self) -> None:
        """Hold every byte in both directions until :meth:`resume`."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def aclose(self) -> None:
        await super().aclose()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)  # the client side is registered already
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer, upstream=True)),
            asyncio.create_task(self._pipe(up_reader, writer, upstream=False)),
        ]
        self._tasks.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._tasks.difference_update(pipes)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(queue, writer))
        last_due = 0.0
        bandwidth = self.conditions.bandwidth
        try:
            while data := await reader.read(65536):
                packets = [data] if bandwidth is None else _packets(data)
                for packet in packets:
                    sent = time.monotonic()
                    if bandwidth is not None:
                        # on the shared link after whatever is already crossing it
                        start = max(sent, self._link_free_at[upstream])
                        sent = self._link_free_at[upstream] = start + len(packet) * 8 / bandwidth
                    due = max(last_due, sent + self.conditions.delay())
                    last_due = due
                    queue.put_nowait((due, packet))
            queue.put_nowait((last_due, b""))
            await deliver
        finally:
            deliver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deliver

    async def _deliver(
        self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        while True:
            due, data = await queue.get()
            await self._flowing.wait()
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.write_eof()
                return
            writer.write(data)
            await writer.drain()


def _packets(data: bytes, size: int = 1500) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def _serve(target_port: int, conditions: LinkConditions) -> None:
    proxy = DelayProxy("127.0.0.1", target_port, conditions)
    await proxy.start()
    print("port", proxy.port, flush=True)
    try:
        await asyncio.Event().wait()  # until the process is terminated
    finally:
        await proxy.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a slow link on loopback")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--rtt", type=float, default=0.0, help="seconds")
    parser.add_argument("--jitter", type=float, default=0.0, help="seconds per direction")
    parser.add_argument(
        "--bandwidth", type=float, default=None, help="bits per second, shared, per direction"
    )
    args = parser.parse_args(argv)
    conditions = LinkConditions(rtt=args.rtt, jitter=args.jitter, bandwidth=args.bandwidth)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.target_port, conditions))


if __name__ == "__main__":
    main()
