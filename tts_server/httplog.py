"""What aiohttp logs about HTTP requests, with nothing a client chose in it.

A client can put a key anywhere in a request: in the query (``?api_key=...``), the path, any
header, or bytes that do not even parse.  aiohttp's own access log writes the request line
with its query, the Referer and the User-Agent; its server logger writes the raw bytes of a
malformed request, traceback and all, at ERROR.  Here the access line holds only what the
server chose or measured (the peer's address, a known method, the route it matched), and a
malformed request is one INFO line naming its kind.  Use :func:`runner_options` wherever an
aiohttp runner serves the app.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest

# The route's own path stands in for the requested one; a method outside these is "OTHER".
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"}
)
SERVER_LOGGER: Final = logging.getLogger("tts_server.http")


class AccessLogger(AbstractAccessLogger):
    """One line per request: address, method, route, status, bytes, seconds."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %d %.3fs',
            request.remote or "-",
            request.method if request.method in _METHODS else "OTHER",
            _route(request),
            response.status,
            response.body_length,
            time,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def _route(request: BaseRequest) -> str:
    """The path of the route that served the request, or "-" when none matched."""
    try:
        resource = request.match_info.route.resource  # type: ignore[attr-defined]
    except (AttributeError, AssertionError):  # never routed: the request did not parse
        return "-"
    return resource.canonical if resource is not None else "-"


class _MalformedRequests(logging.Filter):
    """aiohttp's report of a request it could not parse, without the request's bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "-"
            record.msg = "malformed HTTP request from %s: %s (HTTP %d)"
            record.args = (remote, type(error).__name__, error.code)
            record.exc_info = record.exc_text = None
            if record.levelno > logging.INFO:  # the client's mistake, not the server's
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True


SERVER_LOGGER.addFilter(_MalformedRequests())


def runner_options() -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner`` (or ``TestServer.start_server``)."""
    return {"access_log_class": AccessLogger, "logger": SERVER_LOGGER}
