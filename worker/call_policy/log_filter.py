"""One line per TTS outage in the log, not a traceback per reply that could not be spoken.

The framework logs every reply whose TTS failed: a full traceback ("Error in
_tts_inference_task") and, after partial audio, "TTS failed after partial audio...".  Once
the outage policy is in charge it logs the outage itself, once, so those records go.
Everything else from the framework, and any error that is not a TTS ``APIError``, stays.
"""

from __future__ import annotations

import logging
from typing import Final

from livekit.agents import APIError

FRAMEWORK_LOGGER: Final = "livekit.agents"
_TTS_TRACEBACK: Final = "Error in _tts_inference_task"
_TTS_PARTIAL: Final = "TTS failed after partial audio was already sent"


class QuietTtsFailures(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not isinstance(record.msg, str):
            return True
        error = record.exc_info[1] if record.exc_info else None
        if record.msg == _TTS_TRACEBACK and isinstance(error, APIError):
            return False
        return not record.msg.startswith(_TTS_PARTIAL)


_FILTER: Final = QuietTtsFailures()


def quiet_tts_failures() -> None:
    """Install the filter on the framework's logger (once per process, however often called)."""
    framework = logging.getLogger(FRAMEWORK_LOGGER)
    if _FILTER not in framework.filters:
        framework.addFilter(_FILTER)
