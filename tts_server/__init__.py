"""A self-hosted TTS server speaking the Knowlithic WebSocket protocol, backed by Piper.

Run it with ``python -m tts_server --help``.  This package is GPL-3.0 because it imports
piper-tts; it stands on :mod:`knowlithic_protocol` (MIT), as the plugin does; nothing in the
plugin, the protocol package or the worker may import it.
"""

__version__ = "0.1.0"
