"""Replay a Docker image's build steps without Docker, then start what the image starts.

    python scripts/check_image_steps.py Dockerfile              # the worker
    python scripts/check_image_steps.py tts_server/Dockerfile   # the TTS server

No Docker engine runs in CI, so this does what the Dockerfile says, in order, on this machine:
a fresh virtual environment on the image's Python version stands in for the image's
interpreter and a temporary directory for its WORKDIR; ENV is applied, COPY copies, and RUN
runs ``pip``/``python`` in that environment (``useradd`` is skipped: it needs the image's root).
Any other RUN fails the check, so a step added to a Dockerfile is never skipped unseen.  Then:

* worker: tests/test_worker_drain.py against that environment: the worker starts, registers
  with a stand-in LiveKit endpoint, passes the image's HEALTHCHECK, drains on SIGTERM, exits 0;
* TTS server: its CMD starts, the image's HEALTHCHECK passes, SIGTERM stops it with exit 0.

pip's cache is used (the image's PIP_NO_CACHE_DIR is dropped): it changes how fast, not what,
is installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import dockerfile  # noqa: E402  (after the path: this file runs as a script)

STARTUP_TIMEOUT = 60.0
EXIT_TIMEOUT = 30.0


class Skipped(Exception):
    """A step that makes no sense outside the image; the reason is the message."""


@dataclass
class Image:
    """The image being replayed: its Python environment, WORKDIR and ENV."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir = self.app
        self.home.mkdir(parents=True)

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def app(self) -> Path:
        return self.root / "app"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def run_env(self) -> dict[str, str]:
        env = {**os.environ, **self.env, "HOME": str(self.home)}
        env.pop("PIP_NO_CACHE_DIR", None)
        env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache/pip"))
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return env


def from_(image: Image, args: str) -> None:
    match = re.fullmatch(r"python:(\d+\.\d+)[-\w.]*", args)
    if not match:
        raise SystemExit(f"FROM {args}: expected an official python:X.Y image")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if match.group(1) != here:
        raise SystemExit(f"FROM {args}: the image has Python {match.group(1)}, this is {here}")
    subprocess.run([sys.executable, "-m", "venv", str(image.venv)], check=True)


def env(image: Image, args: str) -> None:
    for pair in shlex.split(args):
        name, _, value = pair.partition("=")
        image.env[name] = value


def workdir(image: Image, args: str) -> None:
    image.workdir = image.app  # the image's WORKDIR is where the app lives
    image.workdir.mkdir(parents=True, exist_ok=True)


def copy(image: Image, args: str) -> None:
    *sources, target = shlex.split(args)
    if any(s.startswith("--") for s in sources):
        raise SystemExit(f"COPY {args}: flags are not replayed")
    into_dir = target.endswith("/") or target == "." or len(sources) > 1
    dest = image.workdir / target
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for source in sources:
        src = REPO / source
        if src.is_dir():
            shutil.copytree(src, dest, ignore=ignore, dirs_exist_ok=True)
        else:
            path = dest / src.name if into_dir else dest
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, path)


def run(image: Image, args: str) -> None:
    argv = shlex.split(args)
    if argv[0] == "useradd":
        raise Skipped("the image's own user: here every step runs as whoever runs this check")
    if argv[0] not in ("pip", "python"):
        raise SystemExit(f"RUN {args}: not replayed (only pip and python steps are)")
    program = str(image.venv / "bin" / argv[0])
    subprocess.run([program, *argv[1:]], cwd=image.workdir, env=image.run_env(), check=True)


REPLAYED: Mapping[str, Callable[[Image, str], None]] = {
    "FROM": from_,
    "ENV": env,
    "WORKDIR": workdir,
    "COPY": copy,
    "RUN": run,
}
RECORDED_ONLY = frozenset({"USER", "EXPOSE", "HEALTHCHECK", "STOPSIGNAL", "CMD"})


def build(path: Path, image: Image) -> None:
    print(f"replaying {path.relative_to(REPO)} in {image.root}")
    for instruction in dockerfile.instructions(path):
        if instruction.keyword in RECORDED_ONLY:
            continue
        if instruction.keyword not in REPLAYED:
            raise SystemExit(f"{instruction.keyword}: not replayed by this check")
        step = f"{instruction.keyword} {instruction.args[:60]}"
        started = time.monotonic()
        try:
            REPLAYED[instruction.keyword](image, instruction.args)
        except Skipped as e:
            print(f"  --  {step} (skipped: {e})")
        else:
            print(f"  ok  {step} ({time.monotonic() - started:.1f} s)", flush=True)


def check_worker(path: Path, image: Image) -> None:
    """The drain test, run with the image's environment and layout."""
    env = {
        **os.environ,
        "AVERY_WORKER_PYTHON": image.python,
        "AVERY_WORKER_APP": str(image.app),
        "AVERY_WORKER_HOME": str(image.home),
    }
    test = "tests/test_worker_drain.py"
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
    if subprocess.run(pytest, cwd=REPO, env=env, check=False).returncode != 0:
        raise SystemExit(f"{test} failed against the image's environment")


def check_tts_server(path: Path, image: Image) -> None:
    """Start the CMD on loopback, wait for the HEALTHCHECK to pass, then stop it with SIGTERM."""
    port = free_port()
    env = {**image.run_env(), "KNOWLITHIC_HOST": "127.0.0.1", "KNOWLITHIC_PORT": str(port)}
    cmd = in_image(image, dockerfile.command(path))
    health = in_image(image, dockerfile.healthcheck(path))
    server = subprocess.Popen(cmd, cwd=image.app, env=env)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while subprocess.run(health, cwd=image.app, env=env, check=False).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the TTS server never passed its HEALTHCHECK")
            time.sleep(0.5)
        print(f"  ok  HEALTHCHECK passes on 127.0.0.1:{port}")
        server.send_signal(signal.SIGTERM)
        returncode = server.wait(timeout=EXIT_TIMEOUT)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    if returncode != 0:
        raise SystemExit(f"the TTS server exited {returncode} on SIGTERM")
    print("  ok  SIGTERM: exit 0")


def free_port() -> int:
    """A loopback port that is free now (closed again before the server binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def in_image(image: Image, command: Sequence[str]) -> list[str]:
    """An exec-form command with its ``python`` taken from the image's environment."""
    if command[0] != "python":
        raise SystemExit(f"{command}: expected a python command")
    return [image.python, *command[1:]]


SMOKE_CHECKS: Mapping[tuple[str, ...], Callable[[Path, Image], None]] = {
    ("python", "agent.py", "start"): check_worker,
    ("python", "-m", "tts_server"): check_tts_server,
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dockerfile", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    path = args.dockerfile.resolve()
    smoke = SMOKE_CHECKS.get(tuple(dockerfile.command(path)))
    if smoke is None:
        raise SystemExit(f"{path}: no start-up check for CMD {dockerfile.command(path)}")
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="image-steps-"))
    try:
        image = Image(root)
        build(path, image)
        smoke(path, image)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{path.relative_to(REPO)}: the image's steps work ({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
