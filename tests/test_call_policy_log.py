"""The outage policy's log filter drops exactly the framework's per-reply TTS failures."""

from __future__ import annotations

import logging

import pytest
from livekit.agents import APIConnectionError

from worker.call_policy.log_filter import FRAMEWORK_LOGGER, QuietTtsFailures, quiet_tts_failures


def _log_traceback(logger: logging.Logger, error: Exception) -> None:
    try:
        raise error
    except Exception:
        logger.exception("Error in _tts_inference_task")  # as utils.log_exceptions words it


def test_only_the_frameworks_per_reply_tts_failures_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet_tts_failures()
    quiet_tts_failures()  # once per process, however often the policy is attached
    framework = logging.getLogger(FRAMEWORK_LOGGER)
    assert sum(isinstance(f, QuietTtsFailures) for f in framework.filters) == 1
    caplog.set_level(logging.INFO)

    _log_traceback(framework, APIConnectionError("cannot connect"))
    framework.error("TTS failed after partial audio was already sent to the user, skip retrying.")
    assert not caplog.records

    _log_traceback(framework, RuntimeError("a bug, not an outage"))
    framework.error("AgentSession is closing due to unrecoverable error: x")
    framework.warning("failed to synthesize speech: x, retrying in 0.1s")
    _log_traceback(logging.getLogger("agent"), APIConnectionError("another logger"))
    assert [r.getMessage() for r in caplog.records] == [
        "Error in _tts_inference_task",
        "AgentSession is closing due to unrecoverable error: x",
        "failed to synthesize speech: x, retrying in 0.1s",
        "Error in _tts_inference_task",
    ]
