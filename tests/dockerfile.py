"""A Dockerfile's instructions, read for the checks that replay an image without Docker
(scripts/check_image_steps.py, tests/test_worker_drain.py).

Only what this project's Dockerfiles use: one instruction per logical line (backslash
continuations joined, comments and blank lines dropped), and exec-form (JSON) commands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str
    """Upper case: ``FROM``, ``RUN``, ``COPY``..."""
    args: str


def instructions(path: Path) -> list[Instruction]:
    found: list[Instruction] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        found.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    return found


def only(path: Path, keyword: str) -> Instruction:
    """The one ``keyword`` instruction of ``path``; an error when there are none or several."""
    matches = [i for i in instructions(path) if i.keyword == keyword]
    if len(matches) != 1:
        raise ValueError(f"{path}: expected one {keyword}, found {len(matches)}")
    return matches[0]


def exec_form(args: str) -> list[str]:
    """``["python", "agent.py", "start"]`` → its list; shell form is refused (signals would go
    to a shell instead of the program)."""
    try:
        command = json.loads(args)
    except ValueError:
        raise ValueError(f"not an exec-form (JSON) command: {args}") from None
    if not isinstance(command, list) or not all(isinstance(part, str) for part in command):
        raise ValueError(f"not an exec-form (JSON) command: {args}")
    return command


def command(path: Path) -> list[str]:
    """The image's ``CMD``."""
    return exec_form(only(path, "CMD").args)


def healthcheck(path: Path) -> list[str]:
    """The command of the image's ``HEALTHCHECK ... CMD [...]``."""
    _, found, check = only(path, "HEALTHCHECK").args.partition("CMD ")
    if not found:
        raise ValueError(f"{path}: HEALTHCHECK has no CMD")
    return exec_form(check)
