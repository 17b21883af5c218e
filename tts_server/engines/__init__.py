"""The synthesis engines, and the one place each is registered.

A new engine is one module implementing :class:`.base.Engine` plus one entry in ``_LOADERS``;
``--engine`` chooses among them.  Engines are imported only when chosen.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from .base import Engine, RenderedSegment, Voice

if TYPE_CHECKING:
    from ..config import ServerConfig

# engine name -> the module whose load(config) builds it
_LOADERS: Final = {"piper": "tts_server.engines.piper"}
ENGINE_NAMES: Final = tuple(_LOADERS)


def load_engine(config: ServerConfig) -> Engine:
    """Load the configured engine and its voices (blocking: seconds per voice)."""
    module = importlib.import_module(_LOADERS[config.engine])
    load: Callable[[ServerConfig], Engine] = module.load
    return load(config)


__all__ = ["ENGINE_NAMES", "Engine", "RenderedSegment", "Voice", "load_engine"]
