"""The HTTP transport: one ``POST /v1/audio/speech`` per request, over kept-alive connections.

An :class:`HttpTransport` (a :class:`~.transport.Transport`) stands for a server reached over
HTTP: aiohttp's connection pool keeps its connections open between requests, so a sentence
pays no handshake, and several requests run at once on connections of their own (the
synthesis sends sentences ahead, as over the WebSocket).  Each request is an
:class:`HttpChannel`: its response's bytes become ``Audio`` events, the end of its body
``Complete``, a refusal (a 4xx, a busy 503) the protocol's ``Error`` (:mod:`.http_speech`
says which).  A connection that fails (refused, reset, cut mid-body) counts as the server's
link dying, as a dropped socket does: every open request gets ``ConnectionLost`` and the
shared connection opens a new transport, which finds out whether the server is still there.
Cancelling a request closes its response: the server sees the client go, and nothing of it
can reach another request.  No word timings come over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Final

import aiohttp
from livekit.agents import APIConnectionError, APIError, APITimeoutError

import knowlithic_protocol as protocol

from .errors import connection_lost_error, handshake_error, redact_url
from .http_speech import (
    CAPABILITIES,
    AudioStream,
    Endpoints,
    audio_stream,
    refusal,
    request_body,
    request_headers,
)
from .log import logger
from .transport import ChannelEvents, ConnectionLost
from .wav_splitter import WavSplitter

# no limit on a response as a whole: a long sentence streams for seconds, and a stalled one
# is the synthesis's to notice (its wait for the next event); only connecting is bounded here
_NO_TOTAL: Final = aiohttp.ClientTimeout(total=None)
_MAX_ERROR_BODY: Final = 64 * 1024
# aiohttp closes a client's idle connection after 15 s: a request this often keeps one warm
KEEP_WARM_MAX: Final = 10.0


class _Lost(Exception):
    """The connection carrying a request failed: the link is gone."""


class HttpChannel(ChannelEvents):
    """One request's response, as events, in the order its bytes arrived."""

    def __init__(self, transport: HttpTransport, request_id: str) -> None:
        super().__init__(request_id)
        self._transport = transport
        self._exchange: asyncio.Task[None] | None = None

    @property
    def transport(self) -> HttpTransport:
        return self._transport

    async def send(self, msg: protocol.TextToSpeech) -> None:
        """Start the request; its response is read in a task of its own."""
        if self.finished:  # its link was lost before it was sent: nothing to start
            return
        self._exchange = asyncio.create_task(
            self._transport._exchange(self, msg), name="knowlithic.http"
        )

    async def cancel(self) -> None:
        """Close the response (the server sees the client go) and drop what follows."""
        exchange = self._exchange
        self.close()
        if exchange is not None and exchange is not asyncio.current_task():
            # unlike awaiting it, survives its cancellation; and ours still reaches us
            await asyncio.wait([exchange])

    def close(self) -> None:
        """Stop taking events; a response still open is closed, not left to finish."""
        self.closed = True
        self._transport._unroute(self)
        if self._exchange is not None and not self._exchange.done():
            self._exchange.cancel()
            # its connection closes with it: open another now, not in the next turn's wait
            self._transport._refill()


class HttpTransport:
    """A server reached over HTTP, and the requests open on it."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoints: Endpoints,
        *,
        headers: Mapping[str, str],
        model: str,
        keep_warm: float | None,
        connections: int = 2,
    ) -> None:
        self._session = session
        # connections reopened at once after cancelled responses: as many as connect()
        # opened.  A storm of barge-ins cancels many responses; one reopen each would open
        # (and keep) as many connections, and pile up tasks while the server is slow.
        self.max_refills = max(1, connections)
        self._endpoints = endpoints
        self._headers = dict(headers)
        # the key, so that a server echoing it in an error body never gets it into ours
        self._secret = self._headers.get("Authorization", "").partition(" ")[2].encode()
        self._model = model
        self.connected_at = time.monotonic()
        self._routes: dict[str, HttpChannel] = {}
        self._lost: ConnectionLost | None = None
        self._lost_at = 0.0
        self._closing = False
        self._gone = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._owed_since: float | None = None  # as the WebSocket transport's
        self.answered = 0
        self.on_first_answer: Callable[[], None] | None = None
        self._refills: set[asyncio.Task[None]] = set()
        self._warmer = (
            asyncio.create_task(self._keep_warm(min(keep_warm, KEEP_WARM_MAX)))
            if keep_warm
            else None
        )

    @property
    def capabilities(self) -> protocol.Capabilities:
        return CAPABILITIES

    @property
    def closed(self) -> bool:
        return self._lost is not None

    @property
    def closed_by_client(self) -> bool:
        return self._closing

    @property
    def age(self) -> float:
        return time.monotonic() - self.connected_at

    @property
    def in_flight(self) -> int:
        return len(self._routes)

    @property
    def fault_began(self) -> float:
        if self._owed_since is not None:
            return min(self._owed_since, self._lost_at or time.monotonic())
        return self._lost_at or time.monotonic()

    async def open_request(self, request_id: str) -> HttpChannel:
        if self._lost is not None:
            raise self.lost_error()
        channel = HttpChannel(self, request_id)
        if not self._routes:
            self._owed_since = time.monotonic()
        self._routes[request_id] = channel
        self._idle.clear()
        return channel

    def lost_error(self) -> APIConnectionError:
        lost = self._lost or ConnectionLost(None, "connection closed")
        return connection_lost_error(lost.close_code, lost.reason)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def wait_closed(self) -> None:
        await self._gone.wait()

    async def aclose(self) -> None:
        self._closing = True
        self._lose(ConnectionLost(None, "closed by the client"))
        tasks = [c._exchange for c in self._routes.values() if c._exchange is not None]
        if self._warmer is not None:
            tasks.append(self._warmer)
        tasks.extend(self._refills)
        for task in tasks:
            task.cancel()
        current = asyncio.current_task()
        await asyncio.gather(*(t for t in tasks if t is not current), return_exceptions=True)

    # -- requests ------------------------------------------------------------------------------

    async def _exchange(self, channel: HttpChannel, msg: protocol.TextToSpeech) -> None:
        """POST the request and turn its response into the channel's events."""
        try:
            end = await self._post(channel, msg)
        except _Lost as e:
            self._lose(ConnectionLost(None, str(e)))
            return
        except Exception as e:  # a request's task must never die silently
            logger.exception("Knowlithic TTS HTTP request failed")
            self._lose(ConnectionLost(None, f"request failed: {type(e).__name__}"))
            return
        if isinstance(end, protocol.Error):
            self._answered()  # a refusal proves the server is there, as audio does
        channel._deliver(end)
        self._unroute(channel)

    async def _post(
        self, channel: HttpChannel, msg: protocol.TextToSpeech
    ) -> protocol.Complete | protocol.Error:
        body = request_body(msg, self._model)
        headers = {**self._headers, **request_headers(msg)}
        for attempt in (1, 2):
            headers_came = False
            try:
                # never followed: a redirect would carry the user's words (and, to the same
                # host, the key) wherever a hostile or misconfigured server points
                async with self._session.post(
                    self._endpoints.speech,
                    json=body,
                    headers=headers,
                    timeout=_NO_TOTAL,
                    allow_redirects=False,
                ) as response:
                    headers_came = True
                    self._heard()
                    if response.status != 200:
                        raw = await _error_body(response)
                        if self._secret:  # quoted in errors, which get logged
                            raw = raw.replace(self._secret, b"[redacted]")
                        return refusal(response.status, raw, msg.request_id)
                    stream = audio_stream(response.headers, msg.output_format, msg.request_id)
                    if isinstance(stream, protocol.Error):
                        return stream
                    await self._read_body(channel, response, stream)
                # the connection is back in the pool before the request is reported complete
                return protocol.Complete(request_id=msg.request_id)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
                # a kept-alive connection the server had closed meanwhile fails before any
                # answer: once more, on a new one (browsers do the same).  A refused connect
                # is the server gone, not a stale connection.
                stale = not headers_came and not isinstance(e, aiohttp.ClientConnectorError)
                if stale and attempt == 1:
                    continue
                raise _Lost(_reason(e)) from None
            except (aiohttp.ClientError, OSError) as e:
                raise _Lost(_reason(e)) from None
        raise AssertionError("unreachable")

    async def _read_body(
        self, channel: HttpChannel, response: aiohttp.ClientResponse, stream: AudioStream
    ) -> None:
        # WAV headers may hide anywhere in raw PCM or WAV; other formats frame themselves
        splitter = WavSplitter() if stream.output_format in ("pcm", "wav") else None
        async for data in response.content.iter_any():
            self._heard()
            for piece in splitter.feed(data) if splitter is not None else (data,):
                self._audio(channel, piece, stream.sample_rate)
        if splitter is not None and (tail := splitter.finish()):
            self._audio(channel, tail, stream.sample_rate)

    def _audio(self, channel: HttpChannel, data: bytes, rate: int | None) -> None:
        channel._deliver(protocol.Audio(request_id=channel.request_id, data=data, sample_rate=rate))
        self._answered()

    def _answered(self) -> None:
        self.answered += 1
        if self.answered == 1 and self.on_first_answer is not None:
            self.on_first_answer()

    def _heard(self) -> None:
        if self._owed_since is not None:
            self._owed_since = time.monotonic()

    def _unroute(self, channel: HttpChannel) -> None:
        if self._routes.get(channel.request_id) is channel:
            del self._routes[channel.request_id]
        if not self._routes:
            self._idle.set()
            self._owed_since = None

    def _refill(self) -> None:
        """Open a kept-alive connection in place of one a closed response took down.  A
        failure here says nothing the next request would not: it is left to that request."""
        if self._lost is not None or len(self._refills) >= self.max_refills:
            return

        async def reopen() -> None:
            # RuntimeError: the session was closed under it (the TTS is closing)
            with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError, RuntimeError):
                async with asyncio.timeout(KEEP_WARM_MAX):
                    await _probe(self._session, self._endpoints.models, self._headers)

        task = asyncio.create_task(reopen(), name="knowlithic.http.refill")
        self._refills.add(task)
        task.add_done_callback(self._refills.discard)

    def _lose(self, lost: ConnectionLost) -> None:
        """The link is gone: every open request learns it now, and its response closes."""
        if self._lost is None:
            self._lost = lost
            self._lost_at = time.monotonic()
            if not self._closing:
                logger.warning(
                    "Knowlithic TTS HTTP connection lost: %s",
                    lost.reason,
                    extra={"in_flight": len(self._routes)},
                )
        current = asyncio.current_task()
        for channel in list(self._routes.values()):
            channel._deliver(lost)
            exchange = channel._exchange
            if exchange is not None and exchange is not current and not exchange.done():
                exchange.cancel()
        if self._warmer is not None and self._warmer is not current:
            self._warmer.cancel()
        for task in self._refills:
            task.cancel()
        self._gone.set()

    async def _keep_warm(self, interval: float) -> None:
        """A cheap request now and then while idle, so the next sentence finds a connection
        open; one that fails means the server is gone (as a missed WebSocket ping does)."""
        while True:
            await asyncio.sleep(interval)
            if self._routes:
                continue  # requests keep it warm
            try:
                async with asyncio.timeout(interval):
                    await _probe(self._session, self._endpoints.models, self._headers)
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                self._lose(ConnectionLost(None, f"keep-warm request failed: {_reason(e)}"))
                return


async def connect(
    session: aiohttp.ClientSession,
    url: str,
    *,
    api_key: str | None,
    timeout: float,
    model: str,
    keep_warm: float | None,
    connections: int = 2,
) -> HttpTransport:
    """Reach the server over HTTP, mapping every failure to the framework's API errors.

    ``connections`` cheap requests at once (``GET /v1/models``) open that many kept-alive
    connections, so the first sentences pay no handshake; any answer proves the server is
    there (one without the endpoint says 404), a 401 that the key is refused, a 5xx that it
    cannot serve.  The key travels in a header only.
    """
    endpoints = Endpoints.of(url)
    headers: Mapping[str, str] = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with asyncio.timeout(timeout):
            statuses = await asyncio.gather(
                *(_probe(session, endpoints.models, headers) for _ in range(max(1, connections)))
            )
    except TimeoutError:
        raise APITimeoutError(
            f"timed out after {timeout:g} s connecting to Knowlithic TTS at {redact_url(url)}"
        ) from None
    except (aiohttp.ClientError, OSError) as e:
        raise APIConnectionError(
            f"cannot connect to Knowlithic TTS at {redact_url(endpoints.models)}: "
            f"{type(e).__name__}"
        ) from None
    if (error := _refused(url, max(statuses))) is not None:
        raise error
    return HttpTransport(
        session,
        endpoints,
        headers=headers,
        model=model,
        keep_warm=keep_warm,
        connections=connections,
    )


def _refused(url: str, status: int) -> APIError | None:
    if status in (401, 403, 408, 429):
        return handshake_error(url, status)
    if status >= 500:
        return APIConnectionError(
            f"Knowlithic TTS at {redact_url(url)} cannot serve (HTTP {status})"
        )
    return None  # 200, or 404/405 from a server without the endpoint: it is there


async def _probe(session: aiohttp.ClientSession, url: str, headers: Mapping[str, str]) -> int:
    async with session.get(url, headers=headers, allow_redirects=False) as response:
        await response.read()  # so the connection goes back to the pool
        return response.status


async def _error_body(response: aiohttp.ClientResponse) -> bytes:
    """Up to ``_MAX_ERROR_BODY`` bytes of an error body, however many pieces it comes in (one
    read returns only what has arrived: a body a proxy passes on in pieces lost its message)."""
    raw = bytearray()
    while len(raw) < _MAX_ERROR_BODY:
        chunk = await response.content.read(_MAX_ERROR_BODY - len(raw))
        if not chunk:
            break
        raw += chunk
    return bytes(raw)


def _reason(error: BaseException) -> str:
    """What failed, without the URL's query or anything a server sent."""
    if isinstance(error, aiohttp.ClientPayloadError):
        return "the response was cut off"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect ({error.os_error.strerror or type(error.os_error).__name__})"
    if isinstance(error, TimeoutError):
        return "no answer in time"
    return type(error).__name__
