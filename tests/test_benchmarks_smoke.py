"""A few requests through each benchmark, so that none of them can rot.

The figures are not checked here (timing assertions do not belong in a test suite); that
each benchmark runs end to end, prints its table and writes its plot, is.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import cost_at_scale, pipeline_latency, plugin_load, plugin_overhead, turn_latency


def test_plugin_overhead(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plugin_overhead.main(["--requests", "3"], out_dir=tmp_path)
    assert "first audio" in capsys.readouterr().out
    assert (tmp_path / "plugin_overhead.png").stat().st_size > 0


def test_turn_latency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    turn_latency.main(["--turns", "1", "--rtt", "20"], out_dir=tmp_path)
    out = capsys.readouterr().out
    assert "persistent (this plugin)" in out and "50 ms + TLS" in out
    assert (tmp_path / "turn_latency.png").stat().st_size > 0


def test_cost_at_scale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cost_at_scale.main(
        ["--streams", "1", "3", "--rounds", "1", "--min-audio", "0"], out_dir=tmp_path
    )
    out = capsys.readouterr().out
    assert "CPU ms per audio s" in out and "minimal plugin" in out
    assert (tmp_path / "cost_at_scale.png").stat().st_size > 0


def test_pipeline_latency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline_latency.main(["--turns", "2"], out_dir=tmp_path)
    assert "voice pipeline" in capsys.readouterr().out
    assert (tmp_path / "pipeline_latency.png").stat().st_size > 0


def test_plugin_load(capsys: pytest.CaptureFixture[str]) -> None:
    plugin_load.main(["--streams", "3", "--rounds", "2"])
    assert "heap growth" in capsys.readouterr().out


def test_server_capacity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench import server_capacity

    plot = tmp_path / "server_capacity.png"
    server_capacity.main(
        [
            "--conversations",
            "1",
            "--limits",
            "0",
            "--duration",
            "2",
            "--plot",
            str(plot),
            "--user-turn",
            "0.1,0.2",
        ]
    )
    out = capsys.readouterr().out
    assert "capacity without a limit" in out
    assert plot.stat().st_size > 0
    assert server_capacity.HEADER.endswith("client cores  speech s/s  server peak MB")
    point = next(line.split() for line in out.splitlines() if line.lstrip().startswith("0 "))
    speech, peak = float(point[-2]), float(point[-1])
    assert 0 < speech < 1.5  # one conversation hears at most real time
    assert peak > 100  # the server with its voice loaded, in MB
    with pytest.raises(SystemExit):
        server_capacity.main(["--user-turn", "2,1"])


def test_server_latency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench import server_latency

    server_latency.main(
        ["--runs", "1", "--concurrency", "1", "--texts", "short", "medium"], out_dir=tmp_path
    )
    out = capsys.readouterr().out
    assert all(system in out for system in server_latency.SYSTEMS)
    assert (tmp_path / "server_latency.png").stat().st_size > 0


def test_worker_footprint(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import worker_footprint

    worker_footprint.main(["--settle", "1", "--vad-seconds", "1"])
    out = capsys.readouterr().out
    assert "worker (agent.py start)" in out and "Silero VAD" in out


def test_opus_link(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import opus_link

    opus_link.main(["--texts", "1", "--rounds", "1", "--bitrates", "24000", "--replies", "2"])
    out = capsys.readouterr().out
    assert "Open link" in out and "Constrained link" in out and "opus" in out


def test_opus_codec(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import opus_codec

    opus_codec.main(["--synthetic", "--seconds", "1", "--rounds", "1"])
    assert "encode CPU ms/s" in capsys.readouterr().out


def test_llm_fallback(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import llm_fallback

    llm_fallback.main(["--turns", "1", "--stall-turns", "1", "--attempt-timeout", "0.3"])
    out = capsys.readouterr().out
    assert "stall after a sentence" in out and "added to first text" in out


def test_stt_drop(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import stt_drop

    stt_drop.main(["--fault", "drop", "--runs", "1"])
    out = capsys.readouterr().out
    assert "STT gets audio again" in out and "|  drop |     0/1 |" in out


def test_failover(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import failover

    failover.main(["--rounds", "1"])
    out = capsys.readouterr().out
    assert "first audio, preferred full" in out and "silence, one server restarted" in out


def test_http_transport(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import http_transport

    http_transport.main(["--rounds", "1", "--texts", "1", "--rtts", "0.02"])
    out = capsys.readouterr().out
    assert "after an interruption" in out and "Piper's HTTP server" in out
