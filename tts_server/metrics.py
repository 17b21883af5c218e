"""Prometheus metrics, in a registry per app so several apps (tests) never collide."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.time_to_first_audio = Histogram(
            "knowlithic_tts_time_to_first_audio_seconds",
            "From a request's arrival to its first audio message being sent.",
            buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0),
            registry=self.registry,
        )
        self.real_time_factor = Histogram(
            "knowlithic_tts_real_time_factor",
            "Synthesis time of a request divided by the duration of its audio (below 1 is "
            "faster than real time).",
            buckets=(0.02, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0),
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "knowlithic_tts_audio_seconds",
            "Seconds of audio synthesized.",
            registry=self.registry,
        )
        self.active_connections = Gauge(
            "knowlithic_tts_active_connections",
            "Open WebSocket connections.",
            registry=self.registry,
        )
        self.active_requests = Gauge(
            "knowlithic_tts_active_requests",
            "Requests in flight (accepted and not yet ended).",
            registry=self.registry,
        )
        self.active_streams = Gauge(
            "knowlithic_tts_active_streams",
            "Replies (streams) admitted: with requests in flight or within their idle window.",
            registry=self.registry,
        )
        self.streams = Counter(
            "knowlithic_tts_streams",
            "New streams by admission outcome (admitted, or refused with busy), and idle "
            "streams that yielded their place to a new one (yielded).",
            ["outcome"],
            registry=self.registry,
        )
        self.requests = Counter(
            "knowlithic_tts_requests",
            "Requests that ended, by outcome (complete, cancelled, error).",
            ["outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "knowlithic_tts_errors",
            "Error messages sent, by protocol error code.",
            ["code"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
