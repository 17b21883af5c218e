"""The hashed lock files: every package the worker, the server and the checks install, pinned
with the hashes of its files, resolved for the images' Python on Linux x86_64.

    python scripts/locks.py compile [UV_ARGS...]   # make lock: (re)write the locks with uv
    python scripts/locks.py check                  # make lock-check: offline

The ``requirements*.txt`` files stay the ones people edit; ``compile`` resolves each into its
``.lock`` (``uv pip compile --generate-hashes``, keeping the pins already locked unless
UV_ARGS say ``--upgrade`` or ``--upgrade-package NAME``) and writes a fingerprint of its
inputs into the lock's header.  ``check`` needs no index: it recomputes the fingerprints (so a
requirement file edited without ``make lock`` fails), checks every requirement is met by a
hashed pin, and that the locks agree with each other on every package they share.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import dockerfile  # noqa: E402  (after the path: this file runs as a script)


@dataclass(frozen=True)
class Lock:
    path: str
    source: str
    constraints: tuple[str, ...] = ()
    """Locks this one is resolved against, so both install the same version of what they share."""


# In this order: each lock is resolved against those before it.  The server takes the
# worker's versions of what they share and the dev lock both, so the checks run the versions
# the images ship, and one environment can hold the worker and the server side by side.
LOCKS = (
    Lock("requirements.lock", "requirements.txt"),
    Lock("requirements-server.lock", "requirements-server.txt", ("requirements.lock",)),
    Lock(
        "requirements-dev.lock",
        "requirements-dev.txt",
        ("requirements.lock", "requirements-server.lock"),
    ),
)
DOCKERFILES = ("Dockerfile", "tts_server/Dockerfile")
# python:3.11-slim-bookworm has glibc 2.36; 2.28 keeps the lock right on older hosts too.
PLATFORM = "x86_64-manylinux_2_28"
FINGERPRINT = "# inputs-sha256: "
COMPILE_COMMAND = "make lock"
# Wheels only: nothing is built at install time, so nothing unhashed (a build backend) is
# fetched; --emit-build-options writes that into the lock, where pip obeys it too.
UV_FLAGS = ("--generate-hashes", "--only-binary", ":all:", "--emit-build-options", "--quiet")


def target_python(root: Path) -> str:
    """The images' ``X.Y``, from both Dockerfiles' FROM lines (they must agree)."""
    versions = set()
    for name in DOCKERFILES:
        image = dockerfile.only(root / name, "FROM").args
        match = re.fullmatch(r"python:(\d+\.\d+)[-\w.]*", image)
        if not match:
            raise SystemExit(f"{name}: FROM {image} is not an official python:X.Y image")
        versions.add(match.group(1))
    if len(versions) != 1:
        raise SystemExit(f"the Dockerfiles start from different Pythons: {sorted(versions)}")
    return versions.pop()


def logical_lines(path: Path) -> Iterator[str]:
    """A pip requirements file's lines: continuations joined, comments and blanks dropped."""
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            yield line


def included(line: str) -> str | None:
    """The file a ``-r``/``-c`` line pulls in, if it is one."""
    match = re.fullmatch(r"(?:-r|-c|--requirement|--constraint)[\s=]+(\S+)", line)
    return match.group(1) if match else None


def requirement_lines(path: Path) -> Iterator[str]:
    """Every logical line of ``path`` and of the files it includes, in order."""
    for line in logical_lines(path):
        yield line
        name = included(line)
        if name is not None:
            yield from requirement_lines(path.parent / name)


def fingerprint(root: Path, lock: Lock) -> str:
    """What a lock was made from: the target, uv's flags, the requirements and the locks it
    is resolved against.  Comments and blank lines are left out, so editing them needs no
    new lock."""
    digest = hashlib.sha256()
    parts = [f"python {target_python(root)} {PLATFORM}", " ".join(UV_FLAGS)]
    parts += requirement_lines(root / lock.source)
    for name in lock.constraints:
        parts += [f"-c {name}", *logical_lines(root / name)]
    for part in parts:
        digest.update(part.encode() + b"\n")
    return digest.hexdigest()


def recorded_fingerprint(path: Path) -> str | None:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(FINGERPRINT):
            return line.removeprefix(FINGERPRINT).split()[0]
    return None


@dataclass(frozen=True)
class Pin:
    version: Version
    hashes: int


def pins(path: Path) -> dict[NormalizedName, Pin]:
    """The ``name==version --hash=...`` entries of a lock."""
    found: dict[NormalizedName, Pin] = {}
    for line in logical_lines(path):
        if line.startswith("-"):
            continue
        spec, *options = line.split()
        name, sep, version = spec.partition("==")
        if not sep:
            raise SystemExit(f"{path.name}: {spec} is not pinned with ==")
        hashes = sum(option.startswith("--hash=") for option in options)
        found[canonicalize_name(name)] = Pin(Version(version), hashes)
    return found


def unmet(root: Path, lock: Lock, locked: dict[NormalizedName, Pin]) -> Iterator[str]:
    """The requirements of ``lock.source`` (and what it includes) that ``locked`` fails."""
    environment = {"python_version": target_python(root), "sys_platform": "linux"}
    for line in requirement_lines(root / lock.source):
        if line.startswith("-"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as e:
            yield f"{lock.source}: {e}"
            continue
        if requirement.marker and not requirement.marker.evaluate(environment):
            continue
        pin = locked.get(canonicalize_name(requirement.name))
        if pin is None:
            yield f"{lock.path}: {requirement.name} is required but not locked"
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            yield f"{lock.path}: {requirement.name}=={pin.version} does not meet {requirement}"


def problems(root: Path) -> list[str]:
    """Why the locks do not match the requirement files (nothing when they do)."""
    found: list[str] = []
    for lock in LOCKS:
        path = root / lock.path
        if not path.exists():
            found.append(f"{lock.path} is missing: run make lock")
            continue
        if recorded_fingerprint(path) != fingerprint(root, lock):
            found.append(
                f"{lock.path} is stale: {lock.source}, a file it includes, a lock it is "
                "resolved against or the images' Python changed since it was made: run make lock"
            )
        locked = pins(path)
        found += unmet(root, lock, locked)
        found += [f"{lock.path}: {name} has no hash" for name, p in locked.items() if not p.hashes]
        for other in lock.constraints:
            theirs = pins(root / other) if (root / other).exists() else {}
            for name in locked.keys() & theirs.keys():
                if locked[name].version != theirs[name].version:
                    found.append(
                        f"{lock.path} has {name}=={locked[name].version}, "
                        f"{other} has {theirs[name].version}: run make lock"
                    )
    return found


def compile_locks(root: Path, uv_args: Sequence[str]) -> None:
    uv = Path(sys.executable).parent / "uv"
    python = target_python(root)
    for lock in LOCKS:
        command = [str(uv), "pip", "compile", lock.source, "--output-file", lock.path]
        command += ["--python-version", python, "--python-platform", PLATFORM, *UV_FLAGS]
        command += ["--custom-compile-command", COMPILE_COMMAND]
        for name in lock.constraints:
            command += ["--constraint", name]
        subprocess.run([*command, *uv_args], cwd=root, check=True)
        path = root / lock.path
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        header = next(i for i, line in enumerate(lines) if not line.startswith("#"))
        stamp = f"{FINGERPRINT}{fingerprint(root, lock)}  (make lock-check recomputes it)\n"
        path.write_text("".join([*lines[:header], stamp, *lines[header:]]), encoding="utf-8")
        print(f"{lock.path}: {len(pins(path))} packages")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO, help="the checkout (default: this)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="fail when a lock does not match its requirement files")
    sub.add_parser(
        "compile",
        help="write the locks with uv (needs the index); other arguments, "
        "e.g. --upgrade-package NAME, go to uv",
    )
    args, uv_args = parser.parse_known_args(argv)
    if uv_args and args.command != "compile":
        parser.error(f"unrecognized arguments: {' '.join(uv_args)}")
    root = args.root.resolve()
    if args.command == "compile":
        compile_locks(root, uv_args)
    found = problems(root)
    for problem in found:
        print(problem, file=sys.stderr)
    if found:
        raise SystemExit(1)
    print(f"{', '.join(lock.path for lock in LOCKS)}: match their requirement files")


if __name__ == "__main__":
    main()
