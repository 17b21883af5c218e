"""Every failure, mapped to the framework's API errors.

The framework retries only ``APIError``s marked retryable, and a stream only before its first
audio, so the mapping decides what the user hears: a refused key fails at once with a
message that says so; a dead or busy server is retried.  No message here ever contains the
API key: it travels in a header, and headers are never quoted.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit, urlunsplit

from livekit.agents import APIConnectionError, APIError, APIStatusError, APITimeoutError

import knowlithic_protocol as protocol

_AUTH_REFUSED: Final = frozenset({401, 403})
# a refused key reported per request (the HTTP transport's 401): not a protocol code
ERR_UNAUTHORIZED: Final = "unauthorized"
_OVERLOADED: Final = frozenset({408, 429})
# protocol error codes seen as HTTP statuses, for metrics and the framework's retry rules
_STATUS_BY_CODE: Final = {
    protocol.ERR_RATE_LIMITED: 429,
    protocol.ERR_TOO_MANY_REQUESTS: 429,
    protocol.ERR_BUSY: 503,
    protocol.ERR_SHUTTING_DOWN: 503,
    protocol.ERR_INTERNAL: 500,
    protocol.ERR_UNKNOWN_VOICE: 404,
    ERR_UNAUTHORIZED: 401,
}


def redact_url(url: str) -> str:
    """The URL without credentials or query, fit for a log line or an error message."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def handshake_error(url: str, status: int | None) -> APIError:
    """The WebSocket upgrade was answered with an HTTP status instead of 101."""
    code = status or -1
    if code in _AUTH_REFUSED:
        return APIStatusError(
            f"Knowlithic TTS refused the API key (HTTP {code}); check KNOWLITHIC_API_KEY",
            status_code=code,
            retryable=False,
        )
    if code in _OVERLOADED:
        return APIStatusError(
            f"Knowlithic TTS is overloaded (HTTP {code})", status_code=code, retryable=True
        )
    if 200 <= code < 300:  # a web server that ignored the Upgrade header: no WebSocket there
        return APIStatusError(
            f"Knowlithic TTS at {redact_url(url)} answered the WebSocket upgrade with a page "
            f"(HTTP {code}): no WebSocket there",
            status_code=code,
            retryable=False,
        )
    if 400 <= code < 500:
        return APIStatusError(
            f"Knowlithic TTS rejected the WebSocket handshake to {redact_url(url)} (HTTP {code})",
            status_code=code,
            retryable=False,
        )
    return APIConnectionError(f"Knowlithic TTS handshake failed with HTTP {code}")


def connection_lost_error(close_code: int | None, reason: str) -> APIConnectionError:
    code = f" (close code {close_code})" if close_code is not None else ""
    return APIConnectionError(f"Knowlithic TTS connection lost{code}: {reason}")


def server_error(err: protocol.Error) -> APIStatusError:
    """An ``error`` message the server sent for a request."""
    status = _STATUS_BY_CODE.get(err.code, 503 if err.retryable else 400)
    return APIStatusError(
        f"Knowlithic TTS error {err.code}: {err.message}",
        status_code=status,
        request_id=err.request_id,
        retryable=err.retryable,
    )


def unsupported(what: str) -> APIStatusError:
    """The server's capabilities rule the request out before it is sent."""
    return APIStatusError(
        f"Knowlithic TTS cannot do this: {what}", status_code=400, retryable=False
    )


def recontextualized(error: APIError, message: str, *, retryable: bool | None = None) -> APIError:
    """``error`` again, of the same kind and status, with a new message (and retry flag)."""
    keep = error.retryable if retryable is None else retryable
    if isinstance(error, APIStatusError):
        return APIStatusError(
            message,
            status_code=error.status_code,
            request_id=error.request_id,
            body=error.body,
            retryable=keep,
        )
    if isinstance(error, APITimeoutError):
        return APITimeoutError(message, retryable=keep)
    if isinstance(error, APIConnectionError):
        return APIConnectionError(message, retryable=keep)
    return APIError(message, body=error.body, retryable=keep)


def final(error: APIError) -> APIError:
    """``error``, not to be retried: the caller heard part of the reply, or waited enough.

    The framework retries a retryable error by replaying the whole text, so a caller who
    heard its start would hear it twice; and each retry would add its own wait to the silence.
    """
    return error if not error.retryable else recontextualized(error, error.message, retryable=False)


def did_not_come_back(fault: APIError, reconnect: APIError) -> APIError:
    """The reply lost its server to ``fault``, and waiting for it again failed."""
    return recontextualized(
        reconnect, f"{fault.message}; the server did not come back: {reconnect.message}"
    )
