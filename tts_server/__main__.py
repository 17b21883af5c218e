"""``python -m tts_server``: load the voices, listen, and shut down gracefully on a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from .app import create_app, server_state, stop
from .config import ServerConfig, load_config
from .engines import load_engine
from .httplog import runner_options

_LOG = logging.getLogger("tts_server")


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain (see ``--shutdown-grace``) and stop."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)

    engine = await loop.run_in_executor(None, load_engine, config)
    app = create_app(config, engine)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        # stop() drains the WebSockets first; this only bounds aiohttp's wait for plain HTTP.
        shutdown_timeout=5.0,
        **runner_options(),
    )
    await runner.setup()
    try:
        for host in config.hosts:
            await web.TCPSite(runner, host, config.port).start()
        addresses = ", ".join(_format(a) for a in runner.addresses)
        voices = ", ".join(server_state(app).voice_names)
        _LOG.info("listening on %s (voices: %s)", addresses, voices)
        await stop_requested.wait()
        _LOG.info("signal received: no new connections; finishing requests in flight")
    finally:
        await stop(runner)
        engine.close()
    _LOG.info("stopped")


def _format(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(argv)
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # piper logs every text it speaks at DEBUG: user text stays out of the log at any level.
    logging.getLogger("piper").setLevel(max(logging.INFO, logging.getLogger().level))
    try:
        asyncio.run(serve(config))
    except OSError as e:  # e.g. the port is in use
        _LOG.error("cannot serve: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
