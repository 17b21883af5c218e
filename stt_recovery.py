"""How long the caller's speech may go unheard when Deepgram's socket drops, and for how long
the worker keeps trying to reopen it.

The Deepgram plugin turns a dropped socket into a retryable error; the framework then opens
a new socket within the same stream, and the audio pushed meanwhile waits in the stream's
input and goes to the new socket (late, but nothing of it is lost).  With the framework's
defaults (3 retries, 2 s apart) the stream gives up after ~4 s of refused connects; the
session recreates it, and after 3 more such failures in a row it closes: a Deepgram outage
of ~20 s ends the call, with no word to the caller.  docs/reliability.md has the details.
"""

from __future__ import annotations

from typing import Final

from livekit.agents import APIConnectOptions

RETRY_INTERVAL_S: Final = 0.5
"""Between two connects.  A restarted server listens again 1-2 s after it died: this finds
it at most 0.5 s late, and one call makes 2 connects a second at worst, not a flood."""

CONNECT_TIMEOUT_S: Final = 5.0
"""A handshake Deepgram does not answer: give up on it and try again (default 10 s)."""

OUTAGE_BUDGET_S: Final = 3600.0
"""Keep trying for this long while every connect fails: longer than any call, so an outage
never closes the session; the caller hears again as soon as a socket opens."""


def stt_connect_options() -> APIConnectOptions:
    """The STT stream's retry policy (``SessionConnectOptions.stt_conn_options``).

    The framework counts only consecutive quick failures: a socket that stays up longer than
    ``timeout``, or a final transcript, starts the count over.
    """
    return APIConnectOptions(
        max_retry=int(OUTAGE_BUDGET_S / RETRY_INTERVAL_S),
        retry_interval=RETRY_INTERVAL_S,
        timeout=CONNECT_TIMEOUT_S,
    )
