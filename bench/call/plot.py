"""A picture of one call: both sides' waveforms on one time axis, with what was measured."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.patches import Patch

from .analysis import SAMPLE_RATE, CallMeasure, Stereo

_BINS_PER_INCH = 200  # envelope resolution: a 10-minute call is millions of samples
_V2V = "tab:orange"
_BARGE = "tab:red"
_CUT_IN = "tab:purple"
_CALLER = "tab:blue"
_AGENT = "tab:green"


def plot_call(samples: Stereo, measure: CallMeasure, path: Path) -> None:
    """Write a PNG: caller above, agent below, each turn's latency a labelled span."""
    duration = len(samples) / SAMPLE_RATE
    width = min(40.0, max(12.0, duration / 4))  # ~4 s an inch keeps words' shapes visible
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(width, 5.5), sharex=True, gridspec_kw={"hspace": 0.08}
    )
    bins = int(width * _BINS_PER_INCH)
    _envelope(top, samples[:, 0], bins, _CALLER)
    _envelope(bottom, samples[:, 1], bins, _AGENT)
    top.set_ylabel("caller")
    bottom.set_ylabel("agent")
    bottom.set_xlabel("seconds")
    bottom.set_xlim(0, duration)

    if measure.greeting is not None:
        bottom.text(
            measure.greeting.start,
            0.95,
            "greeting",
            fontsize=8,
            va="top",
            transform=bottom.get_xaxis_transform(),
        )
    for turn in measure.turns:
        top.text(
            (turn.caller.start + turn.caller.end) / 2,
            0.95,
            f"turn {turn.index}",  # 0-based, as in the JSON and the script's errors
            fontsize=9,
            fontweight="bold",
            ha="center",
            va="top",
            transform=top.get_xaxis_transform(),
        )
        if turn.reply is not None and turn.voice_to_voice_s is not None:
            lo, hi = sorted((turn.caller.end, turn.reply.start))
            for ax in (top, bottom):
                ax.axvspan(lo, hi, color=_V2V, alpha=0.3, lw=0)
            bottom.text(
                (lo + hi) / 2,
                0.95,
                f"{turn.voice_to_voice_s * 1000:.0f} ms",
                ha="center",
                va="top",
                fontsize=8,
                color="black",
                transform=bottom.get_xaxis_transform(),
            )
        for cut in turn.cut_ins:
            bottom.axvspan(cut.start, cut.end, color=_CUT_IN, alpha=0.25, lw=0)
            bottom.text(
                cut.start,
                0.05,
                "cut-in",
                fontsize=8,
                color=_CUT_IN,
                transform=bottom.get_xaxis_transform(),
            )
        barge = turn.barge_in
        if barge is not None:
            for ax in (top, bottom):
                ax.axvline(barge.caller_start, color=_BARGE, lw=1.2)
            if barge.agent_stop is not None and barge.stop_latency_s is not None:
                bottom.axvspan(barge.caller_start, barge.agent_stop, color=_BARGE, alpha=0.25)
                label = f"barge-in: stop {barge.stop_latency_s * 1000:.0f} ms"
                if not barge.stopped:
                    label += " (talked on)"
            else:
                label = "barge-in: agent already silent"
            bottom.text(
                barge.caller_start,
                0.05,
                f" {label}",
                fontsize=8,
                color=_BARGE,
                transform=bottom.get_xaxis_transform(),
            )

    top.set_title(_headline(measure), fontsize=10, loc="left")
    # below the axes, where it hides no speech
    bottom.legend(
        handles=[
            Patch(color=_V2V, alpha=0.3, label="voice-to-voice: caller's end to agent's sound"),
            Patch(color=_BARGE, alpha=0.25, label="barge-in: caller's start to agent's stop"),
            Patch(color=_CUT_IN, alpha=0.25, label="cut-in: agent over the caller"),
        ],
        loc="upper left",
        bbox_to_anchor=(0, -0.22),
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _envelope(ax: Axes, channel: npt.NDArray[np.int16], bins: int, color: str) -> None:
    """Min/max per bin: the waveform's outline at a fraction of the points."""
    n = len(channel)
    size = max(1, -(-n // bins))
    padded = np.zeros(-(-n // size) * size, dtype=np.float64)
    padded[:n] = channel / 32768.0
    frames = padded.reshape(-1, size)
    t = (np.arange(len(frames)) + 0.5) * size / SAMPLE_RATE
    ax.fill_between(t, frames.min(axis=1), frames.max(axis=1), color=color, lw=0)
    ax.set_ylim(-1, 1)
    ax.set_yticks([])


def _headline(measure: CallMeasure) -> str:
    def ms(value: float | None) -> str:
        return "–" if value is None else f"{value * 1000:.0f} ms"

    v2v, stop = measure.voice_to_voice, measure.barge_in_stop
    parts = [
        f"voice-to-voice p50 {ms(v2v.p50)}, p95 {ms(v2v.p95)} ({v2v.n} turns)",
        f"barge-in stop p50 {ms(stop.p50)}",
        f"cut-ins {measure.cut_ins}",
        f"missed replies {measure.missed_replies}",
    ]
    if measure.wer is not None:
        parts.append(f"reply WER {measure.wer:.0%}")
    return "   ·   ".join(parts)
