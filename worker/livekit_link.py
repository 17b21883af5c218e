"""Whether the worker reaches LiveKit, said in one line, and a non-zero exit when it cannot.

livekit-agents 1.8.9 (worker.py ``_connection_task``) retries the connection 16 times, 0 to
10 s apart (about two minutes when the port is closed or the server answers 401), logging a
warning per retry; then ``AgentServer.run()`` raises, the CLI logs "worker failed" and
``cli.run_app`` still exits 0.  A server that accepts TCP and never answers holds each attempt
for aiohttp's default 5 minutes, so the framework alone would keep trying for over an hour.

The hooks, all public: the ``worker_started`` and ``worker_registered`` events, an override of
``AgentServer.run()`` (what it raises is its documented failure), and the ``error`` field of the
framework's retry warnings, read by a logging filter that never drops a record; it only names
the cause, so a change in the framework's logging costs the cause, not the notice or the exit.
The worker runs in the CLI's own process in both ``dev`` and ``start`` (1.8.9 removed the
in-process reloader), so the verdict is read in ``main()`` once ``run_app`` is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
from livekit.agents import AgentServer

# When a worker still trying to connect says so, counted from main(), which the imports delay
# by 2-4 s: within 15 s of the command, after the framework's first attempts (0, 2 and 4 s
# apart, from when the job processes are up, 3-5 s into main()).
NOTICE_AFTER_S: Final = 10.0
_FRAMEWORK_LOGGER: Final = "livekit.agents"


def describe_url(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: no credentials, path or query (they may hold keys)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}"


def describe_error(error: BaseException | None) -> str:
    """Why one connection attempt failed, in words that point at the fix; no server text."""
    if error is None:
        return "no answer yet"
    if isinstance(error, aiohttp.WSServerHandshakeError):
        if error.status in (401, 403):
            return (
                f"it refused the worker's token (HTTP {error.status}): "
                "check LIVEKIT_API_KEY and LIVEKIT_API_SECRET"
            )
        if error.status == 404:
            return "HTTP 404: no LiveKit agent endpoint at that address"
        return f"HTTP {error.status} instead of a WebSocket"
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(error.os_error, ConnectionRefusedError):
            return "connection refused"
        return f"cannot connect ({error.os_error.strerror or type(error.os_error).__name__})"
    if isinstance(error, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return "no answer in time"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    return type(error).__name__


def _is_give_up(error: BaseException | None) -> bool:
    """The exception livekit-agents raises when it stops retrying (worker.py, 1.8.9)."""
    return isinstance(error, RuntimeError) and str(error).startswith("failed to connect to livekit")


class LinkWatch:
    """Watches one worker's connection to LiveKit; ``verdict()`` is the line to exit with."""

    def __init__(self, prog: str, url: str, *, give_up_after: float) -> None:
        self._prog = prog  # "agent.py dev"
        self._host = describe_url(url)
        self._give_up_after = give_up_after
        self._created_at = time.monotonic()  # both bounds count from here
        self._ever_registered = False
        self._last_error: BaseException | None = None
        self._failed_after_retries = False
        self._failure: str | None = None
        self._task: asyncio.Task[None] | None = None

    def attach(self, server: AgentServer) -> None:
        server.on("worker_started", self._on_started)
        server.on("worker_registered", self._on_registered)
        logging.getLogger(_FRAMEWORK_LOGGER).addFilter(self._note_retry)

    def verdict(self) -> str | None:
        """The one line to print before exiting 1, or None when the worker ended normally."""
        if self._failure is None:
            return None
        return f"{self._prog}: {self._failure}"

    def run_failed(self, error: BaseException) -> bool:
        """``AgentServer.run()`` raised: whether it was the framework giving up on LiveKit
        (else something else failed, which the framework's own log should show in full)."""
        if self._failure is not None:  # our own deadline already stopped it
            return True
        if _is_give_up(error) or self._failed_after_retries:
            self._failure = (
                f"cannot reach LIVEKIT_URL ({self._host}): {describe_error(self._last_error)}; "
                "the framework gave up retrying"
            )
            return True
        self._failure = f"the worker failed ({type(error).__name__}; the log above says why)"
        return False

    def _note_retry(self, record: logging.LogRecord) -> bool:
        # The framework's retry warning carries the attempt's exception as ``error``.
        error = getattr(record, "error", None)
        if isinstance(error, BaseException) and hasattr(record, "retry_count"):
            self._last_error = error
            self._failed_after_retries = True
        # Its give-up is logged with a traceback into its own retry loop, which says nothing
        # the one line at exit does not: keep the record, drop the traceback.
        if record.exc_info and _is_give_up(record.exc_info[1]):
            record.exc_info = None
            record.exc_text = None
        return True

    def _on_started(self, *_: Any) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="livekit_link")

    def _on_registered(self, *_: Any) -> None:
        self._ever_registered = True
        self._failed_after_retries = False
        self._last_error = None

    async def _watch(self) -> None:
        if self._give_up_after > NOTICE_AFTER_S:
            await asyncio.sleep(max(0.0, self._created_at + NOTICE_AFTER_S - time.monotonic()))
            if not self._ever_registered:
                print(
                    f"{self._prog}: cannot reach LIVEKIT_URL ({self._host}) yet: "
                    f"{describe_error(self._last_error)}; still trying, for up to "
                    f"{self._give_up_after:g} s",
                    file=sys.stderr,
                    flush=True,
                )
        await asyncio.sleep(max(0.0, self._created_at + self._give_up_after - time.monotonic()))
        # Only the first connection is bounded here: a connection lost later is the framework's
        # to retry (its 16 attempts), and run_failed() hears when it gives up.
        if self._ever_registered or self._failure is not None:
            return
        self._failure = (
            f"cannot reach LIVEKIT_URL ({self._host}): {describe_error(self._last_error)}; "
            f"gave up after {self._give_up_after:g} s (LIVEKIT_CONNECT_TIMEOUT)"
        )
        # Stop the way an operator does: the CLI's SIGTERM handler runs its normal shutdown.
        with contextlib.suppress(OSError):
            signal.raise_signal(signal.SIGTERM)


class WatchedAgentServer(AgentServer):
    """An ``AgentServer`` whose failure in ``run()`` reaches a :class:`LinkWatch`.

    The CLI logs ``run()``'s exception and exits 0; recording it here lets ``main()`` exit 1.
    """

    link: LinkWatch | None = None

    async def run(self, *, devmode: bool = False, unregistered: bool = False) -> None:
        try:
            await super().run(devmode=devmode, unregistered=unregistered)
        except Exception as e:
            if self.link is None:
                raise
            # A LiveKit give-up is recorded, not re-raised: main() prints the one line instead
            # of the CLI's traceback.  Anything else keeps the framework's full log.
            if not self.link.run_failed(e):
                raise
