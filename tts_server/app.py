"""The aiohttp application: routes, authentication, connection admission, shutdown."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Final

from aiohttp import web

import knowlithic_protocol as protocol
from knowlithic_protocol import http

from . import __version__, http_speech
from .access import authorized, client_key, limit_unsent
from .admission import Capacity, RateLimiter, Streams
from .audio import StreamResampler
from .config import ServerConfig
from .engines import Engine, load_engine
from .headroom import Headroom
from .metrics import CONTENT_TYPE, Metrics
from .scheduler import Scheduler
from .session import Session
from .state import ServerState
from .text import cost

_LOG = logging.getLogger("tts_server.app")


@dataclass
class _Runtime:
    config: ServerConfig
    engine: Engine | None
    owns_engine: bool
    state: ServerState | None = None
    draining: asyncio.Task[None] | None = None
    watching: asyncio.Task[None] | None = None  # measures the loop's lag and the utilization


_RUNTIME = web.AppKey("runtime", _Runtime)
# What admission's start-up measurement synthesizes: a typical sentence of a reply.
_CALIBRATION_TEXT: Final = "Your appointment is on Tuesday at three in the afternoon."


def create_app(config: ServerConfig, engine: Engine | None = None) -> web.Application:
    """The server as an aiohttp app.

    Without ``engine`` the voices are loaded (and warmed up) at start-up, before the app
    accepts connections, and released at clean-up; a given engine is shared and left open,
    and keeps the voices and synthesis settings of the config it was loaded with.
    """
    app = web.Application()
    app[_RUNTIME] = _Runtime(config, engine, owns_engine=engine is None)
    app.router.add_get("/", _websocket)
    app.router.add_get("/v1/tts", _websocket)
    app.router.add_get("/health", _health)
    app.router.add_get("/v1/voices", _voices)
    # OpenAI's speech API (tts_server/http_speech.py)
    app.router.add_post(http.SPEECH_PATH, _speech)
    app.router.add_get(http.VOICES_PATH, _audio_voices)
    app.router.add_get(http.MODELS_PATH, _models)
    app.router.add_get("/metrics", _metrics)
    app.on_startup.append(_startup)
    app.on_shutdown.append(_shutdown)
    app.on_cleanup.append(_cleanup)
    return app


def server_state(app: web.Application) -> ServerState:
    state = app[_RUNTIME].state
    if state is None:
        raise RuntimeError("the app has not started")
    return state


async def _startup(app: web.Application) -> None:
    runtime = app[_RUNTIME]
    config = runtime.config
    if runtime.engine is None:
        runtime.engine = await asyncio.get_running_loop().run_in_executor(None, load_engine, config)
    engine = runtime.engine
    scheduler = Scheduler(engine.executor, engine.workers)
    headroom = Headroom(engine.workers, config.first_audio_target)
    runtime.state = ServerState(
        config=config,
        engine=engine,
        scheduler=scheduler,
        capacity=Capacity(config.max_requests),
        streams=Streams(config.max_streams, config.stream_idle_window),
        headroom=headroom,
        rate_limiter=RateLimiter(config.rate_limit, config.rate_burst),
        metrics=Metrics(),
    )
    if headroom.enabled:
        await _calibrate(engine, headroom)
    runtime.watching = asyncio.create_task(headroom.watch(scheduler.busy_seconds))


async def _calibrate(engine: Engine, headroom: Headroom) -> None:
    """Measure one typical sentence alone: admission's prior until real segments are."""
    voice = next(iter(engine.voices.values()))
    render = functools.partial(
        voice.render,
        _CALIBRATION_TEXT,
        resampler=StreamResampler(voice.sample_rate, voice.sample_rate),
        pause_after=0.0,
        inner_pause=0.0,
        last=True,
        with_words=False,
    )
    rendered = await asyncio.get_running_loop().run_in_executor(engine.executor, render)
    headroom.calibrate(cost(_CALIBRATION_TEXT), rendered.compute_seconds)


async def stop(runner: web.BaseRunner) -> None:
    """Shut the server down gracefully: use this rather than ``runner.cleanup()`` alone.

    Stops listening, lets requests in flight finish for up to the grace period while the
    connections still work both ways (cancels and pings are read), ends the rest with a
    ``shutting_down`` error, closes every WebSocket with 1001, then cleans up.  aiohttp's
    own clean-up stops reading from all connections before it runs ``on_shutdown``, which is
    why the draining happens here first.
    """
    for site in list(runner.sites):
        await site.stop()
    if isinstance(runner, web.AppRunner):
        await drain(runner.app)
    await runner.cleanup()


async def drain(app: web.Application) -> None:
    """Refuse new work, let requests in flight finish (within the grace period), close 1001."""
    runtime = app[_RUNTIME]
    if runtime.draining is None:
        runtime.draining = asyncio.create_task(_drain(runtime))
    await asyncio.shield(runtime.draining)


async def _shutdown(app: web.Application) -> None:
    # Reached directly only when the runner is cleaned up without stop().
    await drain(app)


async def _drain(runtime: _Runtime) -> None:
    state = runtime.state
    if state is None:
        return
    state.shutting_down = True
    sessions, speeches = list(state.sessions), list(state.speeches)
    in_flight = sum(s.in_flight for s in sessions) + len(speeches)
    _LOG.info(
        "shutting down: %d connections, %d requests in flight, grace %.1f s",
        len(sessions),
        in_flight,
        state.config.shutdown_grace,
    )
    grace = state.config.shutdown_grace
    await asyncio.gather(
        *(s.shutdown(grace) for s in sessions), *(s.shutdown(grace) for s in speeches)
    )


async def _cleanup(app: web.Application) -> None:
    runtime = app[_RUNTIME]
    if runtime.watching is not None:
        runtime.watching.cancel()
        await runtime.watching
    if runtime.owns_engine and runtime.engine is not None:
        runtime.engine.close()


# -- authentication --------------------------------------------------------------------------


def _unauthorized() -> web.Response:
    return web.json_response(
        {"error": "unauthorized", "message": "a valid API key is required"},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="knowlithic-tts"'},
    )


# -- routes ----------------------------------------------------------------------------------


async def _websocket(request: web.Request) -> web.StreamResponse:
    state = server_state(request.app)
    config = state.config
    ws = web.WebSocketResponse(
        protocols=(protocol.SUBPROTOCOL,),
        heartbeat=config.heartbeat or None,
        # aiohttp refuses a message of exactly max_msg_size bytes; the flag is the largest taken.
        max_msg_size=config.max_message_size + 1,
        # Audio does not compress, and deflate would cost CPU the synthesis needs.
        compress=False,
    )
    if not ws.can_prepare(request).ok:
        return web.json_response(
            {
                "service": "knowlithic-tts",
                "version": __version__,
                "message": "connect with a WebSocket client; offer the subprotocol "
                f"{protocol.SUBPROTOCOL!r} for tagged binary audio",
            }
        )
    if state.shutting_down:
        return web.json_response({"error": "shutting_down"}, status=503)
    if not authorized(request, config.api_key):
        return _unauthorized()
    if len(state.sessions) >= config.max_connections:
        return web.json_response(
            {"error": "busy", "message": "too many connections"},
            status=503,
            headers={"Retry-After": "1"},
        )
    await ws.prepare(request)
    binary = ws.ws_protocol == protocol.SUBPROTOCOL
    client = client_key(request)
    limit_unsent(request)
    transport = request.transport
    session = Session(
        ws,
        state,
        client=client,
        binary_audio=binary,
        abort=transport.abort if transport is not None else lambda: None,
    )
    state.sessions.add(session)
    state.metrics.active_connections.inc()
    _LOG.info("connection from %s (%s)", client, protocol.SUBPROTOCOL if binary else "legacy")
    try:
        await session.run()
    finally:
        state.sessions.discard(session)
        state.metrics.active_connections.dec()
        _LOG.info("connection from %s closed (code %s)", client, ws.close_code)
    return ws


async def _health(request: web.Request) -> web.Response:
    state = request.app[_RUNTIME].state
    if state is None:
        return web.json_response({"status": "starting"}, status=503)
    if state.shutting_down:
        return web.json_response({"status": "shutting_down"}, status=503)
    full = state.full  # a new reply would be refused
    return web.json_response(
        {
            "status": "busy" if full else "ok",
            "version": __version__,
            "voices": list(state.voice_names),
            "active_connections": len(state.sessions),
            "active_streams": state.streams.active,
            "held_streams": state.streams.held,
            "max_streams": state.streams.limit or None,
            "predicted_first_audio": round(state.predicted_first_audio, 4),
            "first_audio_target": state.headroom.target or None,
            "synthesis_utilization": round(state.headroom.utilization, 4),
            "active_requests": state.capacity.in_use,
            "max_requests": state.capacity.limit,
            "workers": state.engine.workers,
            "queued_segments": state.scheduler.queued,
        },
        status=503 if full else 200,
    )


async def _voices(request: web.Request) -> web.Response:
    state = server_state(request.app)
    if not authorized(request, state.config.api_key):
        return _unauthorized()
    return web.json_response(state.describe_voices())


async def _speech(request: web.Request) -> web.StreamResponse:
    return await http_speech.speech(request, server_state(request.app))


async def _audio_voices(request: web.Request) -> web.Response:
    return await http_speech.voices(request, server_state(request.app))


async def _models(request: web.Request) -> web.Response:
    return await http_speech.models(request, server_state(request.app))


async def _metrics(request: web.Request) -> web.Response:
    state = server_state(request.app)
    if not authorized(request, state.config.api_key):
        return _unauthorized()
    return web.Response(body=state.metrics.render(), headers={"Content-Type": CONTENT_TYPE})
