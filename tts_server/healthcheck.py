"""``python -m tts_server.healthcheck``: exit 0 while the server is alive, 1 otherwise.

A liveness check for the container (Docker ``HEALTHCHECK``, a Kubernetes liveness probe).
``/health`` answers 503 while the server is ``busy`` (every place for a new reply is taken) or
``shutting_down`` (draining): both are alive and must not be restarted, so this accepts them.
Readiness is ``/health``'s own status code: 200 only while a new reply would be admitted.
Standard library only, so the check costs one short-lived interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Final

ALIVE: Final = frozenset({"ok", "busy", "shutting_down"})


def alive(url: str, timeout: float) -> bool:
    """Whether ``url`` (the server's ``/health``) answers with a status of a live server."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as e:  # 503 busy/shutting_down carries the same JSON
        with e:
            body = e.read()
    except (OSError, ValueError):  # refused, timed out, reset, or not a URL
        return False
    try:
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        return False
    return status in ALIVE


def main(argv: Sequence[str] | None = None) -> int:
    port = os.environ.get("KNOWLITHIC_PORT", "8000")
    parser = argparse.ArgumentParser(prog="python -m tts_server.healthcheck", description=__doc__)
    parser.add_argument("--url", default=f"http://127.0.0.1:{port}/health")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    args = parser.parse_args(argv)
    return 0 if alive(args.url, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
