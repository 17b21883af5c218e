import logging

logger = logging.getLogger("tts_custom.knowlithic")
