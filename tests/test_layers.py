"""The layers point down only: the protocol package imports neither side, and the plugin and
the worker never load the GPL server or Piper (docs/server.md, Licensing)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def loaded_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return {name.split(".")[0] for name in json.loads(out.stdout)}


def test_the_protocol_package_stands_on_nothing_of_ours_nor_livekit_nor_piper() -> None:
    loaded = loaded_after(
        "import knowlithic_protocol, knowlithic_protocol.client, knowlithic_protocol.server"
    )
    assert not loaded & {"tts_custom", "tts_server", "livekit", "piper", "aiohttp", "agent"}


@pytest.mark.parametrize("statement", ["import tts_custom.knowlithictts", "import agent"])
def test_the_plugin_and_the_worker_never_load_the_server_or_piper(statement: str) -> None:
    loaded = loaded_after(statement)
    assert "knowlithic_protocol" in loaded
    assert not loaded & {"tts_server", "piper"}


def test_the_server_s_settings_load_pyav_only_when_opus_is_used() -> None:
    # PyAV takes ~0.2 s to import: `python -m tts_server --help` never pays it (the plugin
    # does anyway: LiveKit's framework imports it)
    assert "av" not in loaded_after("import tts_server.config, knowlithic_protocol.formats")
