"""Knowlithic TTS plugin for LiveKit Agents.

Use it as ``from tts_custom.knowlithictts import TTS``.  The wire protocol it speaks is the
:mod:`knowlithic_protocol` package, which the self-hosted server stands on too.
"""

__version__ = "0.1.0"
