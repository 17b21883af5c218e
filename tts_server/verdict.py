"""Whether a request starts: a verdict, decided at once, before any synthesis.

:func:`judge` checks the request against the server's rules (shutting down, duplicate id,
rate, text length, voice, requests per connection) and its capacity, and books an admitted
request's place.  It never sends anything; the transport that received the request answers
with what the verdict says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

import knowlithic_protocol as protocol

from .admission import StreamKey
from .config import ServerConfig
from .engines import Voice
from .state import ServerState
from .text import Segment, cost, split_segments

# A low estimate of the pace of speech (joe: 0.047-0.064 s per character, pauses included):
# a later sentence of a reply is scheduled for when the audio before it would run out, and
# guessing that moment early is safe where guessing it late would make a gap.
_SECONDS_PER_CHARACTER: Final = 0.04


@dataclass(frozen=True)
class Refuse:
    code: str
    message: str


@dataclass(frozen=True)
class NothingToSay:
    """Empty, spaces, emoji, bare tags: complete at once, no place taken."""


@dataclass(frozen=True)
class Admit:
    """Admitted, its place booked (release with ``state.capacity`` / ``state.streams``)."""

    voice: Voice
    segments: list[Segment]
    stream: StreamKey | None
    delay: float  # seconds until the listener needs its first audio
    estimate: float  # seconds of audio expected (a low estimate)


Verdict: TypeAlias = Refuse | NothingToSay | Admit


def judge(
    state: ServerState,
    msg: protocol.TextToSpeech,
    *,
    client: str,
    in_flight: int,
    duplicate: bool,
    speed: float = 1.0,
    in_flight_on: str = "connection",
) -> Verdict:
    """The verdict on ``msg`` from ``client``, which has ``in_flight`` requests on its
    ``in_flight_on`` (a WebSocket connection, or a reply over HTTP); ``duplicate``: its id is
    one of them; ``speed``: the pace it is to be spoken at, against the server's own (its
    audio is that much shorter)."""
    voice = state.resolve(msg.voice)
    refusal = _refusal(
        state,
        msg,
        voice,
        client=client,
        in_flight=in_flight,
        duplicate=duplicate,
        in_flight_on=in_flight_on,
    )
    if refusal is not None:
        return refusal
    assert voice is not None
    segments = split_segments(msg.text)
    if not segments:
        return NothingToSay()
    stream = (client, msg.stream_id) if msg.stream_id is not None else None
    if not _has_place(state, stream, segments, speed):
        return Refuse(protocol.ERR_BUSY, "the server is at capacity; retry shortly")
    estimate = _estimated_seconds(segments, state.config) / speed
    delay = state.streams.begin(stream, estimate)
    if delay > 0:
        # Its audio is not needed yet: whole sentences sound better than an early clause.
        segments = split_segments(msg.text, first_clause=False)
    state.capacity.acquire()
    return Admit(voice, segments, stream, delay, estimate)


def _refusal(
    state: ServerState,
    msg: protocol.TextToSpeech,
    voice: Voice | None,
    *,
    client: str,
    in_flight: int,
    duplicate: bool,
    in_flight_on: str,
) -> Refuse | None:
    """Why the request cannot start, capacity aside."""
    config = state.config
    if state.shutting_down:
        return Refuse(protocol.ERR_SHUTTING_DOWN, "the server is shutting down")
    if duplicate:
        return Refuse(
            protocol.ERR_DUPLICATE_REQUEST,
            "this request id is already in flight on this connection; the first request continues",
        )
    if not state.rate_limiter.allow(client):
        wait = state.rate_limiter.retry_after(client)
        return Refuse(protocol.ERR_RATE_LIMITED, f"too many requests; retry in {wait:.2f} s")
    if len(msg.text) > config.max_text_length:
        return Refuse(
            protocol.ERR_TEXT_TOO_LONG,
            f"text has {len(msg.text)} characters; the limit is {config.max_text_length}",
        )
    if voice is None:
        return Refuse(
            protocol.ERR_UNKNOWN_VOICE,
            f"unknown voice {msg.voice[:64]!r}; available: {', '.join(state.voice_names)}",
        )
    if in_flight >= config.max_requests_per_connection:
        return Refuse(
            protocol.ERR_TOO_MANY_REQUESTS,
            f"{in_flight} requests are in flight on this {in_flight_on}; the limit "
            f"is {config.max_requests_per_connection}",
        )
    return None


def _has_place(
    state: ServerState, stream: StreamKey | None, segments: list[Segment], speed: float
) -> bool:
    """Whether the request's reply is, or may become, one the server is speaking.

    A reply is admitted or refused as a whole, at its first request: the later ones of an
    admitted reply always have a place, those of a refused one never (for a while).  A new
    reply needs the headroom to get its first audio in time without making an admitted one
    late (:mod:`.headroom`), and a place under the hard caps.
    """
    streams, metrics, headroom = state.streams, state.metrics, state.headroom
    if streams.admitted(stream):
        return True
    if streams.refused(stream):
        return False
    reason = None
    if state.capped:
        reason = "cap"
    elif headroom.enabled:
        costs = [cost(s.text) for s in segments]
        pace = _SECONDS_PER_CHARACTER * (state.config.length_scale or 1.0) / speed
        if not headroom.forecast(costs, [c * pace for c in costs]).admits:
            reason = "headroom"
    if reason is not None:
        metrics.streams.labels("refused").inc()
        metrics.refusals.labels(reason).inc()
        streams.refuse(stream)
        return False
    if streams.make_room():
        metrics.streams.labels("yielded").inc()
    metrics.streams.labels("admitted").inc()
    return True


def _estimated_seconds(segments: list[Segment], config: ServerConfig) -> float:
    pace = config.length_scale or 1.0
    return sum(len(s.text) for s in segments) * _SECONDS_PER_CHARACTER * pace
