"""LiveKit Agents TTS plugin for the Knowlithic TTS WebSocket service.

Usage::

    from tts_custom.knowlithictts import TTS

    tts = TTS()  # KNOWLITHIC_TTS_SERVER (or TTS_SERVER_URL), voice "elise", 16 kHz

One persistent WebSocket per ``TTS`` instance carries every request of every stream, each
tagged with its own request id; with ``transport="http"`` each request is a
``POST /v1/audio/speech`` over kept-alive connections instead.  See ``docs/protocol.md`` for
the messages.
"""

from __future__ import annotations

import asyncio
import functools
import os
import weakref
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from typing import Final, Literal, TypeAlias, get_args
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
from livekit.agents import APIConnectOptions, APIStatusError, tokenize, tts, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr
from livekit.agents.utils import is_given

import knowlithic_protocol as protocol

from . import http_transport, ws_transport
from .backoff import Outage, Patience
from .errors import redact_url
from .http_speech import DEFAULT_MODEL
from .log import logger
from .server_pool import ServerPool
from .shared_connection import Acquired, SharedConnection
from .synthesis import SentenceSynthesis
from .transport import Transport

DEFAULT_VOICE: Final = "elise"
DEFAULT_SAMPLE_RATE: Final = 16000
BASE_URL_ENV_VARS: Final = ("KNOWLITHIC_TTS_SERVER", "TTS_SERVER_URL")
API_KEY_ENV_VAR: Final = "KNOWLITHIC_API_KEY"
_WS_SCHEMES: Final = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}
TransportName: TypeAlias = Literal["websocket", "http"]
TRANSPORTS: Final[tuple[TransportName, ...]] = get_args(TransportName)
# a WebSocket upgrade answered so (a page, a bad request, no such route or method, "upgrade
# required") says "no WebSocket here" (a proxy, an HTTP-only server), not "you may not": the
# same host is then spoken to over HTTP
NO_WEBSOCKET: Final = frozenset({200, 400, 404, 405, 426})
# the schemes a base_url may have (an http(s) URL means the WebSocket on the same host)
URL_SCHEMES: Final = tuple(_WS_SCHEMES)
# query parameters that carry a key: moved to the Authorization header, never sent in a URL
# (access logs and proxies write request lines down)
_KEY_PARAMETERS: Final = frozenset(
    {"api_key", "apikey", "api-key", "key", "token", "access_token", "auth", "authorization"}
)


@dataclass
class _TTSOptions:
    urls: tuple[str, ...]  # the servers, in order of preference
    voice: str
    sample_rate: int
    output_format: protocol.OutputFormat
    word_timestamps: bool
    transport: TransportName
    model: str
    api_key: str | None = field(repr=False)

    def template(self, request_id: str) -> protocol.TextToSpeech:
        return protocol.TextToSpeech(
            request_id=request_id,
            stream_id=request_id,  # the sentences' request ids are "<stream id>-<n>"
            text="",
            voice=self.voice,
            sample_rate=self.sample_rate,
            output_format=self.output_format,
            word_timestamps=self.word_timestamps,
        )


class TTS(tts.TTS[None]):
    def __init__(
        self,
        *,
        base_url: str | None = None,
        voice: str = DEFAULT_VOICE,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        use_streaming: bool = True,
        api_key: str | None = None,
        output_format: protocol.OutputFormat = "wav",
        word_timestamps: bool = True,
        http_session: aiohttp.ClientSession | None = None,
        tokenizer: NotGivenOr[tokenize.SentenceTokenizer] = NOT_GIVEN,
        connect_timeout: float = 10.0,
        max_connection_age: float = 600.0,
        heartbeat: float | None = 15.0,
        sentences_ahead: int = 3,
        unhealthy_after: float = 10.0,
        transport: NotGivenOr[TransportName] = NOT_GIVEN,
        model: NotGivenOr[str] = NOT_GIVEN,
    ) -> None:
        """Create a Knowlithic TTS.

        Args:
            base_url (str, optional): ``ws://``, ``wss://``, ``http://`` or ``https://`` URL of
                the service, or several separated by commas, in order of preference: the
                first fit one speaks, a reply moves to the next when its server refuses
                connections, is full or dies, and the preferred one is used again once it
                has proved itself. Defaults to ``KNOWLITHIC_TTS_SERVER``, then
                ``TTS_SERVER_URL``.
            voice (str): Voice name. Defaults to ``"elise"``.
            sample_rate (int): Output rate in Hz, 8000 to 48000. Defaults to 16000.
            use_streaming (bool): Declare streaming synthesis (text is sent sentence by
                sentence as the LLM writes it). With False the framework wraps this TTS in a
                ``StreamAdapter``. Defaults to True.
            api_key (str, optional): Sent as ``Authorization: Bearer``, never in the URL.
                Defaults to ``KNOWLITHIC_API_KEY``, then a key in ``base_url``'s query
                (``?api_key=...``), which is taken out of the URL.
            output_format (str): ``"wav"`` or ``"pcm"`` audio from the server. Defaults to wav.
            word_timestamps (bool): Ask for word timings and declare an aligned transcript.
            http_session (aiohttp.ClientSession, optional): Session to open the socket with;
                by default the TTS owns one.
            tokenizer (SentenceTokenizer, optional): Splits text into sentence requests.
            connect_timeout (float): Seconds allowed for opening the socket in the background.
            max_connection_age (float): Seconds after which the socket is replaced.
            heartbeat (float, optional): WebSocket ping interval that keeps idle sockets open.
            sentences_ahead (int): Sentence requests sent before earlier ones have played.
            unhealthy_after (float): Seconds of failing connection attempts, without a
                break, after which the server counts as down: a new reply then fails after
                one more attempt instead of waiting its whole ``conn_options.timeout``.
            transport (str, optional): ``"websocket"`` (the default) or ``"http"``: one
                ``POST /v1/audio/speech`` per sentence (OpenAI's speech API) over kept-alive
                connections, to this project's server or any OpenAI-compatible one; no word
                timings then. The URLs are the same either way. A server that answers the
                WebSocket upgrade with a page (200) or 400, 404, 405 or 426 is spoken to over
                HTTP (logged once).
            model (str, optional): The ``model`` sent over HTTP. Defaults to ``"knowlithic"``.

        Each reply waits for a failing server (a restart, a dropped socket, a stall) at most
        ``conn_options.timeout`` seconds in all, the framework's retries included.
        """
        if not protocol.MIN_SAMPLE_RATE <= sample_rate <= protocol.MAX_SAMPLE_RATE:
            raise ValueError(
                f"sample_rate must be from {protocol.MIN_SAMPLE_RATE} to "
                f"{protocol.MAX_SAMPLE_RATE} Hz, got {sample_rate}"
            )
        if output_format not in protocol.OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {protocol.OUTPUT_FORMATS}")
        if sentences_ahead < 1:
            raise ValueError("sentences_ahead must be at least 1")
        chosen = _transport_name(transport) if is_given(transport) else "websocket"
        super().__init__(
            capabilities=tts.TTSCapabilities(
                streaming=use_streaming,
                # HTTP brings no word timings: said now, before a session reads it
                aligned_transcript=word_timestamps and chosen == "websocket",
            ),
            sample_rate=sample_rate,
            num_channels=1,
        )
        urls, key = endpoints(base_url, api_key)
        self._opts = _TTSOptions(
            urls=urls,
            voice=voice,
            sample_rate=sample_rate,
            output_format=output_format,
            word_timestamps=word_timestamps,
            transport=chosen,
            model=model if is_given(model) else DEFAULT_MODEL,
            api_key=key,
        )
        self._http_fallback: set[str] = set()  # URLs whose server refused the WebSocket
        self._session = http_session
        self._owns_session = http_session is None
        self._tokenizer = (
            tokenizer if is_given(tokenizer) else tokenize.blingfire.SentenceTokenizer()
        )
        self._heartbeat = heartbeat
        self._sentences_ahead = sentences_ahead
        self._pool = ServerPool(
            urls,
            lambda index, on_failure: SharedConnection(
                connect=functools.partial(self._connect, urls[index]),
                connect_timeout=connect_timeout,
                max_age=max_connection_age,
                outage=Outage(unhealthy_after=unhealthy_after),
                on_failure=on_failure,
            ),
        )
        self._streams: weakref.WeakSet[SynthesizeStream] = weakref.WeakSet()

    @property
    def model(self) -> str:
        return "knowlithic-tts"

    @property
    def provider(self) -> str:
        return "Knowlithic"

    @property
    def voice(self) -> str:
        return self._opts.voice

    @property
    def healthy(self) -> bool:
        """False once connecting to every server has failed for ``unhealthy_after`` seconds
        without a break."""
        return self._pool.healthy

    def update_options(
        self,
        *,
        voice: NotGivenOr[str] = NOT_GIVEN,
        sample_rate: NotGivenOr[int] = NOT_GIVEN,
        transport: NotGivenOr[TransportName] = NOT_GIVEN,
    ) -> None:
        """Change the voice, the output rate or the transport; streams started later use them.

        Args:
            voice (str, optional): Voice name.
            sample_rate (int, optional): Output rate in Hz, 8000 to 48000.
            transport (str, optional): ``"websocket"`` or ``"http"``: the open connections
                are replaced (each closes once the requests it carries are done).
        """
        if is_given(transport) and _transport_name(transport) != self._opts.transport:
            self._opts.transport = transport
            for index in range(len(self._opts.urls)):
                self._pool.connection(index).invalidate()
        if is_given(voice):
            self._opts.voice = voice
        if is_given(sample_rate):
            if not protocol.MIN_SAMPLE_RATE <= sample_rate <= protocol.MAX_SAMPLE_RATE:
                raise ValueError(f"sample_rate out of range: {sample_rate}")
            self._opts.sample_rate = sample_rate
            self._sample_rate = sample_rate

    def prewarm(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # the worker's setup function runs before the job's event loop exists
            logger.warning("Knowlithic TTS prewarm() needs a running event loop; skipped")
            return
        self._pool.prewarm()

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> ChunkedStream:
        return ChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> SynthesizeStream:
        stream = SynthesizeStream(tts=self, conn_options=conn_options)
        self._streams.add(stream)
        return stream

    async def aclose(self) -> None:
        for stream in list(self._streams):
            await stream.aclose()
        self._streams.clear()
        await self._pool.aclose()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _connect(self, url: str, timeout: float) -> Transport:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        if self._opts.transport == "http" or url in self._http_fallback:
            conn: Transport = await self._connect_http(url, timeout)
        else:
            try:
                conn = await ws_transport.connect(
                    self._session,
                    url,
                    api_key=self._opts.api_key,
                    timeout=timeout,
                    heartbeat=self._heartbeat,
                )
            except APIStatusError as e:
                if e.status_code not in NO_WEBSOCKET:
                    raise
                conn = await self._connect_http(url, timeout)
                self._http_fallback.add(url)
                logger.warning(
                    "Knowlithic TTS at %s refused the WebSocket upgrade (HTTP %d): speaking to "
                    "it over HTTP (POST /v1/audio/speech) from now on",
                    redact_url(url),
                    e.status_code,
                )
        if conn.capabilities is not None and not conn.capabilities.word_timestamps:
            # the framework then shows the reply's text as written, without word timings
            self._capabilities.aligned_transcript = False
        return conn

    async def _connect_http(self, url: str, timeout: float) -> Transport:
        assert self._session is not None
        return await http_transport.connect(
            self._session,
            url,
            api_key=self._opts.api_key,
            timeout=timeout,
            model=self._opts.model,
            keep_warm=self._heartbeat,
            # the sentence playing and those sent ahead each need a connection of their own
            connections=self._sentences_ahead + 1,
        )

    def _synthesis(
        self,
        stream: ChunkedStream | SynthesizeStream,
        emitter: tts.AudioEmitter,
    ) -> SentenceSynthesis:
        """Set up one attempt of a stream: its emitter and its requests.

        A retry runs this again with the input replayed, so all state is per attempt, but
        the stream's patience, which the framework's retries share.
        """
        request_id = utils.shortuuid()
        streaming = isinstance(stream, SynthesizeStream)
        emitter.initialize(
            request_id=request_id,
            sample_rate=stream._opts.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=streaming,
        )
        if streaming:
            emitter.start_segment(segment_id=request_id)
        return SentenceSynthesis(
            connections=self._pool,
            patience=stream._patience,
            template=stream._opts.template(request_id),
            emitter=emitter,
            window=self._sentences_ahead,
            on_connected=stream._connected,
            on_first_request=(
                stream._mark_started if isinstance(stream, SynthesizeStream) else _nothing
            ),
            retry_pause=stream._next_retry_pause(),
        )


class _StreamState:
    """What each kind of stream keeps for itself across the framework's retries."""

    _acquire_time: float
    _connection_reused: bool

    def _init_state(self, tts: TTS, conn_options: APIConnectOptions) -> None:
        self._opts = replace(tts._opts)
        self._patience = Patience(conn_options.timeout)
        self._retry_options = conn_options
        self._attempts = 0

    def _next_retry_pause(self) -> float:
        """The framework's pause before it retries the attempt starting now (its own rule)."""
        self._attempts += 1
        return self._retry_options._interval_for_retry(self._attempts - 1)

    def _connected(self, acquired: Acquired) -> None:
        # the stream's own metrics: how long it waited for the socket, and whether it was open
        self._acquire_time = acquired.acquire_time
        self._connection_reused = acquired.reused


class ChunkedStream(_StreamState, tts.ChunkedStream):
    """Synthesize a whole text: its sentences are sent as pipelined requests."""

    def __init__(self, *, tts: TTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._tts: TTS = tts
        self._init_state(tts, conn_options)

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        synthesis = self._tts._synthesis(self, output_emitter)
        await synthesis.run(_iterate(self._tts._tokenizer.tokenize(self._input_text)))
        # no flush(): the framework's end_input() sends the tail as the final frame, while a
        # flush first would make it append 10 ms of silence as a separate final marker


class SynthesizeStream(_StreamState, tts.SynthesizeStream):
    """Synthesize text as it is pushed: each sentence is sent once it is complete."""

    def __init__(self, *, tts: TTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._tts: TTS = tts
        self._init_state(tts, conn_options)

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        sentence_stream = self._tts._tokenizer.stream()

        async def forward_input() -> None:
            async for item in self._input_ch:
                if isinstance(item, self._FlushSentinel):
                    sentence_stream.flush()
                else:
                    sentence_stream.push_text(item)
            sentence_stream.end_input()

        async def sentences() -> AsyncIterator[str]:
            async for token in sentence_stream:
                yield token.token

        input_task = asyncio.create_task(forward_input(), name="knowlithic.input")
        try:
            synthesis = self._tts._synthesis(self, output_emitter)
            await synthesis.run(sentences())
        finally:
            await utils.aio.cancel_and_wait(input_task)
            await sentence_stream.aclose()
        output_emitter.end_segment()


def endpoints(
    base_url: str | None, api_key: str | None = None
) -> tuple[tuple[str, ...], str | None]:
    """The WebSocket URLs to open, in order, and the key to send in their header, from
    ``base_url`` (else the environment's; several URLs separated by commas) and ``api_key``
    (else ``KNOWLITHIC_API_KEY``, else a key in the URLs' query, taken out of them)."""
    given = base_url or _first_env(BASE_URL_ENV_VARS)
    parts = split_urls(given) if given else [None]
    urls, url_keys = zip(*(take_key_from_url(websocket_url(part)) for part in parts), strict=True)
    found = {k for k in url_keys if k is not None}
    if len(found) > 1:
        raise ValueError("the Knowlithic TTS URLs carry different API keys: give one api_key")
    url_key = next(iter(found), None)
    key = api_key or os.environ.get(API_KEY_ENV_VAR) or url_key
    if url_key is not None and key != url_key:
        raise ValueError("base_url carries an API key that differs from api_key: give one")
    if len(set(urls)) < len(urls):
        raise ValueError("the Knowlithic TTS server list names a server twice")
    return tuple(urls), header_safe_key(key)


def endpoint(base_url: str | None, api_key: str | None = None) -> tuple[str, str | None]:
    """The first server's WebSocket URL and the key, as :func:`endpoints` finds them."""
    urls, key = endpoints(base_url, api_key)
    return urls[0], key


def split_urls(value: str) -> list[str]:
    """The URLs of a comma-separated list (blanks around commas ignored)."""
    urls = [part.strip() for part in value.split(",")]
    if not all(urls):
        raise ValueError("the Knowlithic TTS server list has an empty entry (two commas?)")
    return urls


def websocket_url(base_url: str | None) -> str:
    """The WebSocket URL for a ``ws``, ``wss``, ``http`` or ``https`` base URL."""
    if not base_url:
        raise ValueError(
            "no Knowlithic TTS server: pass base_url or set "
            + " or ".join(BASE_URL_ENV_VARS)
            + " (for example ws://localhost:8000)"
        )
    parts = urlsplit(base_url.strip())
    scheme = _WS_SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(
            "the Knowlithic TTS URL must look like ws://host:port (ws, wss, http or https scheme)"
        )
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))


def take_key_from_url(url: str) -> tuple[str, str | None]:
    """``url`` without a key in its query, and that key: it belongs in a header.

    Credentials before the host (``user:secret@``) are refused: they would be sent as Basic
    authentication, which the service does not take.
    """
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "the Knowlithic TTS URL must not carry credentials (user:secret@host): "
            f"pass api_key or set {API_KEY_ENV_VAR}"
        )
    if not parts.query:
        return url, None
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    keys = {value for name, value in pairs if name.lower() in _KEY_PARAMETERS}
    if len(keys) > 1:
        raise ValueError("base_url carries more than one API key in its query")
    query = urlencode(
        [(name, value) for name, value in pairs if name.lower() not in _KEY_PARAMETERS]
    )
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
    return url, next(iter(keys), None)


def header_safe_key(key: str | None) -> str | None:
    """The key (``None`` for none), if it can travel in a header; the error never quotes it."""
    if not key:
        return None
    if not all("!" <= ch <= "~" for ch in key):
        raise ValueError(
            "the Knowlithic API key holds a space, a line break or a character outside "
            f"printable ASCII, so it cannot be sent in a header: check api_key or "
            f"{API_KEY_ENV_VAR}"
        )
    return key


def _transport_name(value: str) -> TransportName:
    for name in TRANSPORTS:
        if value == name:
            return name
    raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {value!r}")


def _first_env(names: Iterable[str]) -> str | None:
    return next((value for name in names if (value := os.environ.get(name))), None)


async def _iterate(items: Iterable[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


def _nothing() -> None:
    pass
