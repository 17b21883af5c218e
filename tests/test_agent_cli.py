"""agent.py's command line: configuration is checked before the framework takes over.

The worker runs as a real subprocess, from an empty temporary directory and with an empty
environment, so neither a developer's .env nor their shell's variables can leak in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

import agent
from settings import ConfigError

AGENT = Path(agent.__file__).resolve()
REQUIRED_NAMES = [
    "LIVEKIT_URL",
    "LIVEKIT_API_KEY",
    "LIVEKIT_API_SECRET",
    "DEEPGRAM_API_KEY",
    "GROQ_API_KEY",
]
KEYS = {"DEEPGRAM_API_KEY": "dg-s3cr3t", "GROQ_API_KEY": "gsk_s3cr3t"}


def _has_unshare_net() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def run_agent(
    args: Sequence[str],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    *,
    offline: bool = False,
) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(cwd),
        "NO_COLOR": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    command = [sys.executable, str(AGENT), *args]
    if offline:
        if _has_unshare_net():
            command = ["unshare", "-n", *command]  # a network namespace with no interfaces
        else:
            # No namespace available: at least send anything proxy-aware into a closed port.
            base |= {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    return subprocess.run(
        command,
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", ["dev", "start"])
def test_run_without_configuration_fails_naming_every_variable(
    command: str, tmp_path: Path
) -> None:
    result = run_agent([command], tmp_path)
    assert result.returncode != 0
    for name in REQUIRED_NAMES:
        assert name in result.stderr
    assert "invalid configuration (5 problems)" in result.stderr
    assert ".env" in result.stderr


def test_console_does_not_need_livekit_credentials(tmp_path: Path) -> None:
    result = run_agent(["console"], tmp_path)
    assert result.returncode != 0
    assert "DEEPGRAM_API_KEY" in result.stderr
    assert "GROQ_API_KEY" in result.stderr
    assert "LIVEKIT" not in result.stderr


def test_dotenv_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "LIVEKIT_URL=wss://example.livekit.cloud\n"
        "LIVEKIT_API_KEY=lk-key-s3cr3t\n"
        "LIVEKIT_API_SECRET=lk-secret-s3cr3t\n"
        "DEEPGRAM_API_KEY=dg-s3cr3t\n"
        "VAD_ACTIVATION_THRESHOLD=20.0\n",
        encoding="utf-8",
    )
    result = run_agent(["start"], tmp_path)
    assert result.returncode != 0
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert [p.split(":")[0] for p in problems] == [
        "  - GROQ_API_KEY",
        "  - VAD_ACTIVATION_THRESHOLD",
    ]
    assert "0 < value < 1" in result.stderr
    for secret in ("lk-key-s3cr3t", "lk-secret-s3cr3t", "dg-s3cr3t"):
        assert secret not in result.stderr + result.stdout


def test_download_files_needs_no_configuration_and_no_network(tmp_path: Path) -> None:
    result = run_agent(["download-files"], tmp_path, offline=True)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "invalid configuration" not in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["start", "--help"], ["dev", "--help"]])
def test_help_needs_no_configuration(args: list[str], tmp_path: Path) -> None:
    result = run_agent(args, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


# check_config in-process: which subcommands need what.


@pytest.mark.parametrize(
    "args", [[], ["download-files"], ["--help"], ["start", "--help"], ["console", "--help"]]
)
def test_commands_that_need_no_configuration(args: list[str]) -> None:
    assert agent.check_config(args, {}) is None


def test_livekit_flags_stand_in_for_the_variables() -> None:
    args = ["start", "--url", "wss://lk.example.com", "--api-key=k", "--api-secret", "s"]
    settings = agent.check_config(args, KEYS)
    assert settings is not None
    assert settings.livekit_url == "wss://lk.example.com"


def test_livekit_flags_are_validated_too() -> None:
    with pytest.raises(ConfigError) as info:
        agent.check_config(["dev", "--url", "localhost:7880"], KEYS)
    assert [p.split(":")[0] for p in info.value.problems] == [
        "LIVEKIT_URL",
        "LIVEKIT_API_KEY",
        "LIVEKIT_API_SECRET",
    ]


def test_console_settings_have_no_livekit_credentials() -> None:
    settings = agent.check_config(["console", "--text"], KEYS)
    assert settings is not None
    assert settings.livekit_url is None


def test_console_without_portaudio_says_what_to_install_in_one_line(tmp_path: Path) -> None:
    # sounddevice raises exactly this when it cannot load the PortAudio library: a stand-in
    # module first on the path fails the same way whether or not this machine has PortAudio
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    result = run_agent(["console"], tmp_path, {**KEYS, "PYTHONPATH": str(shadow)})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("agent.py console: PortAudio")
    assert "libportaudio2" in lines[0] and "Traceback" not in result.stderr


def test_the_portaudio_check_concerns_console_only() -> None:
    assert agent.check_console_audio(["dev"]) is None
    assert agent.check_console_audio(["console", "--help"]) is None
    assert agent.check_console_audio([]) is None
