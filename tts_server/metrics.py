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
        self.utilization = Gauge(
            "knowlithic_tts_synthesis_utilization",
            "Share of the synthesis workers' time in use, averaged over about 5 s (0 to 1): "
            "what an autoscaler follows.",
            registry=self.registry,
        )
        self.predicted_first_audio = Gauge(
            "knowlithic_tts_predicted_first_audio_seconds",
            "Seconds a new reply of typical length would wait for its first audio now, as "
            "admission predicts it (over --first-audio-target: it would get busy).",
            registry=self.registry,
        )
        self.seconds_per_character = Gauge(
            "knowlithic_tts_synthesis_seconds_per_character",
            "Worker seconds per character of text, as admission counts it (measured).",
            registry=self.registry,
        )
        self.loop_lag = Gauge(
            "knowlithic_tts_event_loop_lag_seconds",
            "How late the event loop wakes up (measured; encoding and sending run there).",
            registry=self.registry,
        )
        self.refusals = Counter(
            "knowlithic_tts_busy_refusals",
            "New replies refused with busy, by reason: headroom (the predicted first audio or "
            "an admitted reply's lead), cap (--max-streams or --max-requests).",
            ["reason"],
            registry=self.registry,
        )
        self.requests = Counter(
            "knowlithic_tts_requests",
            "Requests that ended, by outcome (complete, cancelled, error).",
            ["outcome"],
            registry=self.registry,
        )
        self.speech_responses = Counter(
            "knowlithic_tts_http_speech_responses",
            "Answers to POST /v1/audio/speech, by HTTP status (200 counted when the audio's "
            "headers leave).",
            ["status"],
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
