"""Knowlithic TTS plugin for LiveKit Agents.

Use it as ``from tts_custom.knowlithictts import TTS``.  This package's ``__init__`` imports
nothing from LiveKit so that the self-hosted server can share :mod:`tts_custom.protocol`
without depending on the agents framework.
"""

__version__ = "0.1.0"
