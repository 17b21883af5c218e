"""How many real-time conversations the Piper server holds on this machine, and how its
admission behaves past that.

    python -m bench.server_capacity                       # ~3 min: both sweeps below
    python -m bench.server_capacity --limits 0 --conversations 1,2,4,6,8,10,12,14 \
        --duration 10 --repeat 3                          # the median of three sweeps
    python -m bench.server_capacity --limits 0,default --conversations 24 \
        --limited-conversations 24,48 --duration 15 --repeat 2   # admission at 1x and 2x
    python -m bench.server_capacity --limits t150,t250,t400 --limited-conversations 24,48
    python -m bench.server_capacity --limits 8 --limited-conversations 20   # a fixed count
    python -m bench.server_capacity --server-cpus 0 --server-args="--workers 1"   # one core
    python -m bench.server_capacity --client protocol     # the server alone, no plugin

The real server (``python -m tts_server``) runs as a subprocess on an ephemeral port: its own
process and GIL, as in production.  For each number N of conversations, N simulated agent
conversations speak replies through the real plugin (``tts_custom.knowlithictts.TTS``, one
instance and socket per conversation, as one agent job has), for ``--duration`` seconds: a
3-4 sentence reply pushed into ``tts.stream()`` at once (an LLM faster than speech; the
plugin sends one request per sentence, up to three ahead, all with the reply's stream id),
its audio consumed at real-time pace, then a pause while the "user" speaks, then the next.

Measured per reply: time to first audio (text pushed → first frame), and underruns: a frame
arriving after the moment a listener who started playing at the first frame needs it (by
more than ``--tolerance``, one audio-device buffer); playback then stalls and resumes.  For a
refused reply: how long its ``busy`` took (text pushed → the plugin's error).

Each ``--limits`` value is one server: 0 is no admission at all (it shows how the server
degrades past capacity), ``default`` the server's own defaults (admission by measured
headroom), ``tMS`` headroom with ``--first-audio-target`` MS ms, a number a fixed
``--max-streams`` without headroom.  A refused conversation tries its next reply after the
user's pause, so a server with admission stays full.  Servers with admission run
``--limited-conversations`` (default 48: twice the 24 a quiet 2-core machine serves).
A table is printed and a plot written to ``docs/benchmarks/server_capacity.png``.  The client
side (the plugin and the framework, N conversations) runs on the same cores as the server;
"other load" is the CPU that neither used (other people's work on a shared machine): runs
with other load are noisy, so take the median of several (``--repeat``).  "utilization" is
the server's own ``knowlithic_tts_synthesis_utilization``, averaged over the run; "client
cores" the CPU of this bench's own conversations; "speech s/s" the seconds of audio heard per
second (the demand on the server, whatever N); "server peak MB" the server's peak resident
memory since it started.

``--user-turn`` is how long the agent is silent between two replies (the user speaks, the
agent thinks): the default, 0.5-1.5 s after replies of ~8 s, keeps the agent talking about
90 % of the time, more than in most calls; ``--user-turn 2,5`` is about 70 %.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from livekit.agents import APIConnectOptions, APIStatusError

import knowlithic_protocol as protocol
from bench.common import free_port, plot_path, wait_healthy
from tts_custom.knowlithictts import TTS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PLOT = plot_path("server_capacity")
SAMPLE_RATE = 16000
# What a voice agent says: three or four sentences, the first one short.
REPLIES = (
    "Sure, I can help with that. Your appointment is on Tuesday at three in the afternoon. "
    "Would you like me to send you a reminder the day before?",
    "Thanks for waiting. I found two flights that leave tomorrow morning. The first one "
    "departs at seven fifteen and arrives just before ten. Shall I book it for you?",
    "Of course. The store on Main Street is open until nine tonight. It has parking behind "
    "the building. Is there anything else I can check for you?",
    "I understand. Let me look into your last invoice. It shows a charge of forty two dollars "
    "for the premium plan. I can refund it today if you would like.",
    "Great question. Our basic plan includes five users and ten gigabytes of storage. The "
    "team plan adds shared folders and priority support. Both come with a free trial.",
    "No problem at all. I have moved your delivery to Friday between noon and four. You will "
    "get a text message when the driver is on the way.",
)
NO_RETRY = APIConnectOptions(max_retry=0, timeout=10.0)


@dataclass
class Reply:
    """One reply of one conversation: refused, or its latency and its gaps in playback."""

    refused: bool = False
    refused_after: float | None = None  # text pushed → busy, for a refused reply
    failed: str | None = None
    ttfa: float | None = None
    audio: float = 0.0
    underruns: int = 0
    underrun_time: float = 0.0


@dataclass
class Point:
    """Everything measured at one number of conversations on one server."""

    limit: str
    conversations: int
    replies: list[Reply] = field(default_factory=list)
    server_refused: int = 0  # streams the server refused: as many as refused replies
    server_cores: float = 0.0  # the server's CPU use, in cores
    utilization: float = 0.0  # the server's knowlithic_tts_synthesis_utilization, mean
    other_cores: float = 0.0  # CPU used by neither the server nor this bench: the noise
    client_cores: float = 0.0  # this bench's own CPU (the conversations' clients)
    speech: float = 0.0  # seconds of audio heard per second: the demand, whatever N
    server_peak_mb: float = 0.0  # the server's peak resident memory since it started

    @property
    def admitted(self) -> list[Reply]:
        return [r for r in self.replies if not r.refused and r.failed is None]

    @property
    def refused(self) -> int:
        return sum(r.refused for r in self.replies)

    @property
    def failed(self) -> int:
        return sum(r.failed is not None for r in self.replies)

    def ttfa(self, q: float) -> float:
        values = sorted(r.ttfa for r in self.admitted if r.ttfa is not None)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    @property
    def underruns(self) -> int:
        return sum(r.underruns for r in self.admitted)

    def refusal(self, q: float) -> float:
        """Quantile of the time a refused reply waited for its busy."""
        values = sorted(r.refused_after for r in self.replies if r.refused_after is not None)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    @property
    def underrun_time(self) -> float:
        return sum(r.underrun_time for r in self.admitted)


class Playback:
    """A listener who starts at the first frame and stalls when the next one is late."""

    def __init__(self, started: float, tolerance: float) -> None:
        self.start = started
        self.tolerance = tolerance
        self.position = 0.0  # seconds of audio handed to the listener
        self.stalled = 0.0  # total stall so far: it shifts the rest of the playback
        self.underruns = 0

    def frame(self, arrived: float, duration: float) -> None:
        needed = self.start + self.stalled + self.position
        if arrived > needed + self.tolerance:
            self.underruns += 1
            self.stalled += arrived - needed
        self.position += duration

    @property
    def end(self) -> float:
        return self.start + self.stalled + self.position


def finish(reply: Reply, playback: Playback | None) -> tuple[Reply, float]:
    """The reply with its playback figures, and the moment its playback ends."""
    if playback is None:
        return reply, time.perf_counter()
    reply.audio = playback.position
    reply.underruns, reply.underrun_time = playback.underruns, playback.stalled
    return reply, playback.end


class PluginSpeaker:
    """Speaks through the real plugin: one ``TTS`` (one socket) per conversation."""

    def __init__(self, url: str, tolerance: float) -> None:
        self.tts = TTS(base_url=url)
        self.tolerance = tolerance

    async def start(self) -> None:
        self.tts.prewarm()  # as the framework does at session start

    async def close(self) -> None:
        await self.tts.aclose()

    async def speak(self, text: str) -> tuple[Reply, float]:
        return await speak_reply(self.tts, text, self.tolerance)


class ProtocolSpeaker:
    """Speaks the way docs/protocol.md says a client does, with nothing else in between.

    One request per sentence, all with the reply's stream id, up to three ahead of the one
    playing, played in order.  It measures the server alone, whatever the plugin does.
    """

    AHEAD = 3

    def __init__(self, url: str, tolerance: float) -> None:
        self.url = url
        self.tolerance = tolerance
        self.routes: dict[str, asyncio.Queue[protocol.ServerMessage]] = {}
        self.replies = 0

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.url, protocols=(protocol.SUBPROTOCOL,))
        await self.ws.receive()  # capabilities
        self.reader = asyncio.create_task(self.read())

    async def close(self) -> None:
        self.reader.cancel()
        await self.ws.close()
        await self.http.close()

    async def read(self) -> None:
        async for message in self.ws:
            msg = protocol.decode_server_message(message.data, tagged_binary=True)
            queue = self.routes.get(getattr(msg, "request_id", None) or "")
            if queue is not None:
                queue.put_nowait(msg)

    async def speak(self, text: str) -> tuple[Reply, float]:
        self.replies += 1
        stream_id = f"{id(self):x}-{self.replies}"
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
        window = asyncio.Semaphore(self.AHEAD)
        order: asyncio.Queue[str] = asyncio.Queue()

        async def send_all() -> None:
            for index, sentence in enumerate(sentences):
                await window.acquire()
                rid = f"{stream_id}-{index}"
                self.routes[rid] = asyncio.Queue()
                order.put_nowait(rid)
                request = protocol.TextToSpeech(
                    rid, sentence, "joe", SAMPLE_RATE, "pcm", stream_id=stream_id
                )
                await self.ws.send_str(protocol.encode_client_message(request))

        reply, playback = Reply(), None
        pushed = time.perf_counter()
        sender = asyncio.create_task(send_all())
        try:
            for _ in sentences:
                rid = await order.get()
                while not isinstance(msg := await self.routes[rid].get(), protocol.Complete):
                    if isinstance(msg, protocol.Error):
                        if msg.code == protocol.ERR_BUSY and playback is None:
                            reply.refused = True
                            reply.refused_after = time.perf_counter() - pushed
                        else:
                            reply.failed = f"{msg.code}: {msg.message}"
                        return finish(reply, playback)
                    if isinstance(msg, protocol.Audio):
                        now = time.perf_counter()
                        if playback is None:
                            reply.ttfa = now - pushed
                            playback = Playback(now, self.tolerance)
                        playback.frame(now, len(msg.data) / 2 / SAMPLE_RATE)
                del self.routes[rid]
                window.release()
        finally:
            sender.cancel()
            for rid in list(self.routes):  # what a refused or failed reply left open
                del self.routes[rid]
                cancel = protocol.encode_client_message(protocol.Cancel(rid))
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.ws.send_str(cancel)
        return finish(reply, playback)


async def speak_reply(tts: TTS, text: str, tolerance: float) -> tuple[Reply, float]:
    """Speak one reply through the plugin; returns it and the moment its playback ends."""
    reply = Reply()
    pushed = time.perf_counter()
    playback: Playback | None = None
    try:
        async with tts.stream(conn_options=NO_RETRY) as stream:
            stream.push_text(text)
            stream.end_input()
            async for ev in stream:
                now = time.perf_counter()
                frame = ev.frame
                if ev.is_final and frame.samples_per_channel == frame.sample_rate // 100:
                    continue  # the framework's own 10 ms end marker, not audio
                if playback is None:
                    reply.ttfa = now - pushed
                    playback = Playback(now, tolerance)
                playback.frame(now, frame.duration)
    except APIStatusError as e:
        if "error busy" in str(e):
            reply.refused = True
            reply.refused_after = time.perf_counter() - pushed
        else:
            reply.failed = str(e)
    except Exception as e:  # the bench reports what went wrong instead of stopping
        reply.failed = f"{type(e).__name__}: {e}"
    return finish(reply, playback)


Speaker = PluginSpeaker | ProtocolSpeaker


async def conversation(
    speaker: Speaker, index: int, until: float, rng: random.Random, user_turn: tuple[float, float]
) -> list[Reply]:
    """Replies one after another, each heard to its end, then the user's turn."""
    replies: list[Reply] = []
    try:
        await speaker.start()  # the socket is open before the first reply
        await asyncio.sleep(rng.uniform(0.0, 2.0))  # conversations do not start in step
        turn = index
        while time.perf_counter() < until:
            reply, playback_end = await speaker.speak(REPLIES[turn % len(REPLIES)])
            replies.append(reply)
            turn += 1
            # listen to the end, then the user speaks (or, refused, the agent waits as long)
            await asyncio.sleep(max(0.0, playback_end - time.perf_counter()))
            await asyncio.sleep(rng.uniform(*user_turn))
    finally:
        await speaker.close()
    return replies


# -- the server ---------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    http: aiohttp.ClientSession
    pid: int

    async def get(self, path: str) -> aiohttp.ClientResponse:
        async with self.http.get(self.url.replace("ws://", "http://") + path) as response:
            await response.read()
            return response


def server_flags(limit: str) -> list[str]:
    """The admission flags of one ``--limits`` value (see ``--help``)."""
    if limit == "0":  # nothing but the CPU decides
        flags = ["--max-streams", "0", "--first-audio-target", "0", "--max-requests", "100000"]
    elif limit == "default":
        flags = []
    elif limit.startswith("t"):  # admission by headroom with this target, in ms
        flags = ["--first-audio-target", str(int(limit[1:]) / 1000)]
    else:  # a fixed count of replies, as before admission by headroom
        flags = ["--max-streams", limit, "--first-audio-target", "0"]
    return flags


@contextlib.asynccontextmanager
async def running_server(
    limit: str, cpus: set[int] | None, extra: Sequence[str]
) -> AsyncIterator[Server]:
    port = free_port()
    args = ["--host", "127.0.0.1", "--port", str(port), "--rate-limit", "0"]
    args += ["--log-level", "WARNING", *server_flags(limit)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tts_server", *args, *extra, cwd=REPO
    )
    if cpus:
        # set before piper loads: the threads it starts inherit the main thread's affinity
        os.sched_setaffinity(process.pid, cpus)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, f"{base}/health", process)
            yield Server(f"ws://127.0.0.1:{port}", http, process.pid)
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


async def server_health(server: Server) -> dict[str, object]:
    health: dict[str, object] = await (await server.get("/health")).json()
    return health


async def refused_streams(server: Server) -> int:
    text = await (await server.get("/metrics")).text()
    match = re.search(r'^knowlithic_tts_streams_total\{outcome="refused"\} (\S+)$', text, re.M)
    return int(float(match.group(1))) if match else 0


async def wait_idle(server: Server) -> None:
    """Until the last run's streams have left their idle window."""
    async with asyncio.timeout(30):
        while (await server_health(server)).get("active_streams"):  # noqa: ASYNC110
            await asyncio.sleep(0.25)


async def sample_utilization(server: Server, samples: list[float]) -> None:
    """The server's own synthesis utilization, twice a second (what an autoscaler sees)."""
    while True:
        await asyncio.sleep(0.5)
        value = (await server_health(server)).get("synthesis_utilization")
        if isinstance(value, int | float):
            samples.append(float(value))


def cpu_seconds(pid: int | str) -> float:
    """User and system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_memory_mb(pid: int) -> float:
    """The peak resident memory of a process so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent on anything but idling, over all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


async def measure(server: Server, limit: str, n: int, args: argparse.Namespace) -> Point:
    await wait_idle(server)
    refused_before = await refused_streams(server)
    pid, url = server.pid, server.url
    wall, busy = time.perf_counter(), machine_busy_seconds()
    server_cpu, own_cpu = cpu_seconds(pid), cpu_seconds("self")
    rng = random.Random(f"{n}-{limit}")
    until = time.perf_counter() + args.duration
    make = PluginSpeaker if args.client == "plugin" else ProtocolSpeaker
    runs = [
        conversation(
            make(url, args.tolerance), i, until, random.Random(rng.random()), args.user_turn
        )
        for i in range(n)
    ]
    point = Point(limit, n)
    samples: list[float] = []
    sampler = asyncio.create_task(sample_utilization(server, samples))
    try:
        for replies in await asyncio.gather(*runs):
            point.replies.extend(replies)
    finally:
        sampler.cancel()
    point.utilization = statistics.mean(samples) if samples else float("nan")
    point.server_refused = await refused_streams(server) - refused_before
    wall = time.perf_counter() - wall
    server_cpu, own_cpu = cpu_seconds(pid) - server_cpu, cpu_seconds("self") - own_cpu
    point.server_cores = server_cpu / wall
    point.client_cores = own_cpu / wall
    point.speech = sum(r.audio for r in point.replies) / wall
    point.server_peak_mb = peak_memory_mb(pid)
    point.other_cores = max(0.0, (machine_busy_seconds() - busy - server_cpu - own_cpu) / wall)
    return point


async def sweep(args: argparse.Namespace) -> list[Point]:
    points = []
    for limit in args.limits:
        async with running_server(limit, args.server_cpus, args.server_args) as server:
            health = await server_health(server)
            shown = limit
            if limit == "default":
                shown = f"default ({health.get('first_audio_target')} s)"
            counts = args.conversations
            if limit != "0":
                counts = args.limited_conversations
            for n in counts:
                point = await measure(server, shown, n, args)
                print(row(point), flush=True)
                points.append(point)
    return points


# -- report -------------------------------------------------------------------------------------

HEADER = (
    "admission        N  replies  admitted  refused  failed  TTFA p50  TTFA p95  "
    "underruns  underrun s  busy p95  busy max  refused (server)  server cores  "
    "utilization  other load  client cores  speech s/s  server peak MB"
)


def row(p: Point) -> str:
    return (
        f"{p.limit:>14} {p.conversations:4d} {len(p.replies):8d} {len(p.admitted):9d} "
        f"{p.refused:8d} {p.failed:7d} {p.ttfa(0.5) * 1000:7.0f}ms {p.ttfa(0.95) * 1000:7.0f}ms "
        f"{p.underruns:10d} {p.underrun_time:11.2f} {p.refusal(0.95) * 1000:7.0f}ms "
        f"{p.refusal(1.0) * 1000:7.0f}ms {p.server_refused:17d} "
        f"{p.server_cores:13.2f} {p.utilization:12.2f} {p.other_cores:11.2f} "
        f"{p.client_cores:13.2f} {p.speech:11.1f} {p.server_peak_mb:15.0f}"
    )


def median_points(runs: list[list[Point]]) -> list[tuple[str, int, dict[str, float]]]:
    """Per (limit, N): the median over the runs of each figure."""
    table = []
    for points in zip(*runs, strict=True):
        first = points[0]
        figures = {
            "admitted": statistics.median(len(p.admitted) for p in points),
            "refused": statistics.median(p.refused for p in points),
            "p50": statistics.median(p.ttfa(0.5) for p in points),
            "p95": statistics.median(p.ttfa(0.95) for p in points),
            "underruns": statistics.median(p.underruns for p in points),
            "underrun_time": statistics.median(p.underrun_time for p in points),
            "busy_p95": statistics.median(p.refusal(0.95) for p in points),
            "utilization": statistics.median(p.utilization for p in points),
            "other": statistics.median(p.other_cores for p in points),
            "client": statistics.median(p.client_cores for p in points),
            "speech": statistics.median(p.speech for p in points),
        }
        table.append((first.limit, first.conversations, figures))
    return table


def capacity(
    table: list[tuple[str, int, dict[str, float]]], limit: str, ttfa_p95: float, stall: float
) -> int:
    """The largest N whose admitted replies stay real-time, with every smaller N too."""
    best = 0
    for name, n, f in sorted((t for t in table if t[0] == limit), key=lambda t: t[1]):
        del name
        if f["p95"] <= ttfa_p95 and f["underrun_time"] <= stall * max(1.0, f["admitted"]):
            best = n
        else:
            break
    return best


def plot(
    table: list[tuple[str, int, dict[str, float]]], path: Path, title: str, ttfa_p95: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ttfa, ax_stall, ax_refused) = plt.subplots(1, 3, figsize=(15, 4.5))
    for limit in dict.fromkeys(t[0] for t in table):
        rows = sorted((n, f) for name, n, f in table if name == limit)
        ns = [n for n, _ in rows]
        label = "no limit" if limit == "0" else f"admission {limit}"
        line = ax_ttfa.plot(ns, [f["p95"] * 1000 for _, f in rows], "o-", label=f"{label} p95")
        color = line[0].get_color()
        ax_ttfa.plot(ns, [f["p50"] * 1000 for _, f in rows], "x--", color=color, label="p50")
        ax_stall.plot(ns, [f["underrun_time"] for _, f in rows], "o-", label=label)
        ax_refused.plot(
            ns,
            [f["refused"] / max(1.0, f["refused"] + f["admitted"]) * 100 for _, f in rows],
            "o-",
            label=label,
        )
    ax_ttfa.axhline(ttfa_p95 * 1000, color="grey", linewidth=0.8, linestyle=":")
    ax_ttfa.set(xlabel="concurrent conversations", ylabel="time to first audio (ms)")
    ax_stall.set(xlabel="concurrent conversations", ylabel="underrun time, admitted replies (s)")
    ax_refused.set(xlabel="concurrent conversations", ylabel="replies refused busy (%)")
    for ax in (ax_ttfa, ax_stall, ax_refused):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _seconds_range(text: str) -> tuple[float, float]:
    low, high = (float(x) for x in text.split(","))
    if not 0 <= low <= high:
        raise argparse.ArgumentTypeError("MIN,MAX with 0 <= MIN <= MAX")
    return low, high


def _cpus(text: str) -> set[int]:
    return set(_ints(text))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--conversations", type=_ints, default=[1, 2, 4, 6, 8, 10, 12], help="values of N"
    )
    parser.add_argument(
        "--limits",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=["0", "default"],
        help="admission of each server: 0 (none: only the CPU decides), 'default' (the "
        "server's defaults), tMS (headroom with --first-audio-target MS ms), or a number "
        "(a fixed --max-streams, no headroom)",
    )
    parser.add_argument(
        "--limited-conversations",
        type=_ints,
        default=[48],
        help="values of N for servers with admission (default: 48, twice the 24 this "
        "2-core machine serves)",
    )
    parser.add_argument(
        "--duration", type=float, default=12.0, help="seconds in which replies start, per N"
    )
    parser.add_argument("--repeat", type=int, default=1, help="sweeps; the table is the median")
    parser.add_argument(
        "--client",
        choices=("plugin", "protocol"),
        default="plugin",
        help="speak through the plugin, or through a bare protocol client (the server alone)",
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.02, help="lateness not counted as an underrun (s)"
    )
    parser.add_argument("--ttfa-p95", type=float, default=0.4, help="real-time: p95 TTFA (s)")
    parser.add_argument(
        "--stall", type=float, default=0.01, help="real-time: underrun s per admitted reply"
    )
    parser.add_argument(
        "--user-turn",
        type=_seconds_range,
        default=(0.5, 1.5),
        help="MIN,MAX seconds from the end of one reply to the next (the user speaks, the "
        "agent thinks): 0.5,1.5 keeps the agent talking ~90%% of the time",
    )
    parser.add_argument("--server-cpus", type=_cpus, default=None, help="pin the server: 0,1")
    parser.add_argument(
        "--server-args", type=str.split, default=[], help="more server flags, one string"
    )
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    runs = []
    for run in range(args.repeat):
        print(f"\nrun {run + 1} of {args.repeat}\n{HEADER}", flush=True)
        runs.append(asyncio.run(sweep(args)))
    table = median_points(runs)
    if args.repeat > 1:
        print(f"\nmedian of {args.repeat} runs")
        print(
            "admission        N  admitted  refused  TTFA p50  TTFA p95  underruns  underrun s"
            "  busy p95  utilization  other load  client cores  speech s/s"
        )
        for limit, n, f in table:
            print(
                f"{limit:>14} {n:4d} {f['admitted']:9.0f} {f['refused']:8.0f} "
                f"{f['p50'] * 1000:7.0f}ms {f['p95'] * 1000:7.0f}ms {f['underruns']:10.0f} "
                f"{f['underrun_time']:11.2f} {f['busy_p95'] * 1000:7.0f}ms "
                f"{f['utilization']:12.2f} {f['other']:11.2f} {f['client']:13.2f} "
                f"{f['speech']:11.1f}"
            )
    if "0" in args.limits:
        best = capacity(table, "0", args.ttfa_p95, args.stall)
        cores = len(args.server_cpus) if args.server_cpus else len(os.sched_getaffinity(0))
        print(
            f"\ncapacity without a limit: {best} conversations stay real-time "
            f"(p95 TTFA <= {args.ttfa_p95 * 1000:.0f} ms, underruns <= {args.stall * 1000:.0f} "
            f"ms per reply) on {cores} cores"
        )
    title = f"Piper server capacity, {os.cpu_count()} cores, {args.duration:.0f} s per point"
    plot(table, args.plot, title, args.ttfa_p95)
    print(f"plot: {args.plot}; {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
