"""A self-hosted TTS server speaking the Knowlithic WebSocket protocol, backed by Piper.

Run it with ``python -m tts_server --help``.  This package is GPL-3.0 because it imports
piper-tts; it may import :mod:`tts_custom.protocol` (MIT), but nothing in ``tts_custom`` may
import it.
"""

__version__ = "0.1.0"
