"""``python -m tts_server.occupant --port N``: who holds a local port, before a server is started.

scripts/run-local.sh asks this before it starts the TTS server, so that a port taken by
something else is reported instead of silently used (the new server would fail to bind, and the
worker would talk to whatever answers).  Exit status:

    0   nothing listens: start the server
    10  this checkout's own TTS server (same version) listens and is alive: reuse it
    1   something else listens (not a Knowlithic TTS server, or another version): one line says
        what, and the caller stops

Reusing a live server of the same version is safe: it is the server the script would start,
and its voices and settings are its own command line's, which the caller chose.  Another
version may speak another protocol or lack a fix, so it is refused rather than guessed at.
Standard library only, like the health check: it runs before anything else is imported.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Final

from tts_server import __version__
from tts_server.healthcheck import ALIVE

FREE: Final = 0
REUSE: Final = 10
TAKEN: Final = 1


def listening(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def health(host: str, port: int, timeout: float) -> dict[str, object] | None:
    """``/health``'s JSON, or None when what answers is not an HTTP server giving JSON."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=timeout) as response:
            body = response.read(65536)
    except urllib.error.HTTPError as e:  # 503 busy/shutting_down carries the same JSON
        with e:
            body = e.read(65536)
    except (OSError, ValueError):  # reset, timed out (a silent listener), not HTTP
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def verdict(host: str, port: int, timeout: float) -> tuple[int, str]:
    """The exit status and the line to print."""
    if not listening(host, port, timeout):
        return FREE, ""
    data = health(host, port, timeout)
    if data is None or "version" not in data or data.get("status") not in ALIVE:
        return TAKEN, (
            f"port {port} is taken by something that is not a Knowlithic TTS server (it does not "
            f"answer /health as one): stop it, or set KNOWLITHIC_TTS_SERVER to another port"
        )
    version = str(data["version"])[:40]
    if version != __version__:
        return TAKEN, (
            f"port {port} is taken by a Knowlithic TTS server of another version ({version}; "
            f"this checkout is {__version__}): stop it, or set KNOWLITHIC_TTS_SERVER to another "
            "port"
        )
    return REUSE, f"using the TTS server already running on :{port} (version {version})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tts_server.occupant", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    args = parser.parse_args(argv)
    status, line = verdict(args.host, args.port, args.timeout)
    if line:
        print(line, file=sys.stderr if status == TAKEN else sys.stdout)
    return status


if __name__ == "__main__":
    sys.exit(main())
