"""POST /v1/audio/speech on the real server (real Piper): each format, streaming, every
refusal, auth, admission, a client that goes away, and the discovery routes."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import av
import pytest

import knowlithic_protocol as protocol
from knowlithic_protocol.http import STREAM_HEADER
from tts_server.state import ServerState

from .helpers import RunningServer, StartServer

TEXT = "Good morning, and welcome. How can I help you with your booking today?"
# several sentences: several segments, rendered one after the other
LONG = (
    "Thank you for calling. Your appointment is on Tuesday at three. "
    "Please bring your insurance card. We will send a reminder the day before. "
    "If you need to cancel, call us at least a day ahead. Have a wonderful afternoon."
)
SPEECH = "/v1/audio/speech"


def decoded_seconds(data: bytes) -> tuple[float, int]:
    """(seconds, rate) of a whole file as a player (PyAV) reads it."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        samples = 0
        rate = 0
        for frame in container.decode(stream):
            samples += frame.samples
            rate = frame.sample_rate
    return samples / rate, rate


async def post(
    http: aiohttp.ClientSession, server: RunningServer, body: Any, **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    async with http.post(server.url(SPEECH), json=body, **kwargs) as response:
        return response.status, dict(response.headers), await response.read()


@dataclass
class Gate:
    """Holds every segment after the first until opened: what the server has rendered when
    the client sees its first bytes is then known, not a race."""

    opened: asyncio.Event
    segments_started: int = 0


@pytest.fixture
def gate_server(monkeypatch: pytest.MonkeyPatch) -> Callable[[RunningServer], Gate]:
    def install(server: RunningServer) -> Gate:
        scheduler = server.state.scheduler
        original = scheduler.run
        gate = Gate(asyncio.Event())

        async def gated(job: Callable[[], Any], deadline: float) -> Any:
            gate.segments_started += 1
            if gate.segments_started > 1:
                await gate.opened.wait()
            return await original(job, deadline)

        monkeypatch.setattr(scheduler, "run", gated)
        return gate

    return install


def idle(state: ServerState) -> bool:
    return (
        not state.speeches
        and state.capacity.in_use == 0
        and state.streams.active == 0
        and not state.headroom.pending
    )


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for ``condition``, looking every 10 ms (a bound for a hang, not a measurement)."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def sample_value(server: RunningServer, name: str, labels: dict[str, str]) -> float:
    value = server.state.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


# -- formats --------------------------------------------------------------------------------------


async def test_pcm_is_raw_s16le_at_24_khz_as_openai_defines_it(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    status, headers, data = await post(http, server, {"input": TEXT, "response_format": "pcm"})
    assert status == 200
    assert headers["Content-Type"] == "audio/pcm"
    assert headers["X-Sample-Rate"] == "24000"
    assert headers["Transfer-Encoding"] == "chunked"
    assert len(data) % 2 == 0
    assert 3.0 < len(data) / 2 / 24000 < 8.0  # a sentence and a half of speech


async def test_the_sample_rate_extension_sets_the_rate(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    body = {"input": TEXT, "response_format": "pcm", "sample_rate": 16000}
    status, headers, data = await post(http, server, body)
    assert (status, headers["X-Sample-Rate"]) == (200, "16000")
    assert 3.0 < len(data) / 2 / 16000 < 8.0


async def test_wav_has_a_streaming_header_then_the_samples(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    status, headers, data = await post(http, server, {"input": TEXT, "response_format": "wav"})
    assert status == 200
    assert (headers["Content-Type"], headers["X-Sample-Rate"]) == ("audio/wav", "24000")
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    channels, rate = struct.unpack_from("<HI", data, 22)
    assert (channels, rate) == (1, 24000)
    assert data[36:40] == b"data" and data[40:44] == b"\xff\xff\xff\xff"  # length unknown
    assert 3.0 < (len(data) - 44) / 2 / 24000 < 8.0


@pytest.mark.parametrize(
    ("response_format", "content_type", "codec"),
    [("opus", "audio/ogg", {"opus", "libopus"}), ("mp3", "audio/mpeg", {"mp3", "mp3float"})],
)
async def test_compressed_formats_are_files_a_player_decodes(
    start_server: StartServer,
    http: aiohttp.ClientSession,
    response_format: str,
    content_type: str,
    codec: set[str],
) -> None:
    server = await start_server(noise_scale=0.0, noise_w=0.0)  # the same audio twice
    _, _, pcm = await post(http, server, {"input": TEXT, "response_format": "pcm"})
    status, headers, data = await post(
        http, server, {"input": TEXT, "response_format": response_format}
    )
    assert status == 200
    assert (headers["Content-Type"], headers["X-Sample-Rate"]) == (content_type, "24000")
    with av.open(io.BytesIO(data), mode="r") as container:
        assert container.streams.audio[0].codec_context.name in codec
    seconds, _ = decoded_seconds(data)
    # MP3 adds its encoder's delay and padding (~50 ms), which no raw MP3 stream states
    assert abs(seconds - len(pcm) / 2 / 24000) < 0.1
    assert len(data) < len(pcm) / 4


async def test_an_omitted_format_is_mp3_as_openai_s_default(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    status, headers, data = await post(http, server, {"input": "Hello.", "voice": "alloy"})
    assert (status, headers["Content-Type"]) == (200, "audio/mpeg")
    assert decoded_seconds(data)[0] > 0.3


async def test_speed_maps_onto_the_engine_s_pace(start_server: StartServer) -> None:
    server = await start_server(noise_scale=0.0, noise_w=0.0)
    seconds = {}
    async with aiohttp.ClientSession() as http:
        for speed in (0.5, 1.0, 2.0):
            body = {"input": TEXT, "response_format": "pcm", "speed": speed}
            status, _, data = await post(http, server, body)
            assert status == 200
            seconds[speed] = len(data) / 2 / 24000
    # Piper's phoneme lengths and the pauses scale (measured: 5.6, 3.3 and 2.1 s); what
    # the voice does not stretch (its plosives, the fades) keeps the ratios under 2
    assert 1.4 < seconds[0.5] / seconds[1.0] < 2.3
    assert 1.3 < seconds[1.0] / seconds[2.0] < 2.3


async def test_sse_carries_the_same_audio_in_openai_s_events(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    body = {"input": TEXT, "response_format": "pcm", "stream_format": "sse"}
    status, headers, data = await post(http, server, body)
    assert (status, headers["Content-Type"], headers["X-Sample-Rate"]) == (
        200,
        "text/event-stream",
        "24000",
    )
    events = [json.loads(line[6:]) for line in data.decode().split("\n\n") if line]
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"}
    assert events[-1]["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert 3.0 < len(audio) / 2 / 24000 < 8.0


async def test_input_with_nothing_to_say_is_an_empty_valid_file(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    status, headers, data = await post(http, server, {"input": "🙂", "response_format": "wav"})
    assert (status, headers["Content-Type"]) == (200, "audio/wav")
    assert data[:4] == b"RIFF" and len(data) == 44


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b'{"input": "Hi.",', 400, None),
        (json.dumps({"voice": "joe"}).encode(), 400, "input"),
        (json.dumps({"input": "  "}).encode(), 400, "input"),
        (json.dumps({"input": "x" * 101}).encode(), 400, "input"),
        (json.dumps({"input": "Hi.", "voice": "nobody"}).encode(), 400, "voice"),
        (json.dumps({"input": "Hi.", "response_format": "flac"}).encode(), 400, "response_format"),
        (json.dumps({"input": "Hi.", "speed": 8.0}).encode(), 400, "speed"),
    ],
    ids=["malformed", "missing", "empty", "too-long", "voice", "format", "speed"],
)
async def test_bad_input_is_a_4xx_with_an_openai_error_naming_the_field(
    start_server: StartServer, body: bytes, status: int, param: str | None
) -> None:
    server = await start_server(max_text_length=100)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            server.url(SPEECH), data=body, headers={"Content-Type": "application/json"}
        ) as response,
    ):
        assert response.status == status
        error = (await response.json())["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"] and "code" in error
    assert idle(server.state)


async def test_a_body_that_is_not_json_is_415(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(server.url(SPEECH), data="input=Hi.") as response:
        assert response.status == 415
        assert (await response.json())["error"]["code"] == "unsupported_media_type"


async def test_the_key_is_required_as_for_the_websocket(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    server = await start_server(api_key="k3y")
    body = {"input": "Hi.", "response_format": "pcm"}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        status, response_headers, data = await post(http, server, body, headers=headers)
        assert status == 401
        assert json.loads(data)["error"]["code"] == "invalid_api_key"
        assert response_headers["WWW-Authenticate"].startswith("Bearer")
        for path in ("/v1/models", "/v1/audio/voices"):
            async with http.get(server.url(path), headers=headers) as response:
                assert response.status == 401
    status, _, data = await post(http, server, body, headers={"Authorization": "Bearer k3y"})
    assert status == 200 and data


async def test_a_full_server_answers_503_with_retry_after(
    start_server: StartServer,
    http: aiohttp.ClientSession,
    gate_server: Callable[[RunningServer], Gate],
) -> None:
    server = await start_server(max_streams=1)
    gate = gate_server(server)
    async with http.post(
        server.url(SPEECH), json={"input": LONG, "response_format": "pcm"}
    ) as first:
        assert first.status == 200
        await first.content.readany()  # admitted, and held at its second segment
        status, headers, data = await post(http, server, {"input": "Hi."})
        assert status == 503
        assert int(headers["Retry-After"]) >= 1
        error = json.loads(data)["error"]
        assert (error["type"], error["code"]) == ("server_error", "busy")
        gate.opened.set()
        assert len(await first.read()) > 0
    await until(lambda: idle(server.state))
    assert sample_value(server, "knowlithic_tts_busy_refusals_total", {"reason": "cap"}) == 1
    status, _, _ = await post(http, server, {"input": "Hi.", "response_format": "pcm"})
    assert status == 200


async def test_a_reply_named_by_x_stream_id_is_admitted_as_a_whole(
    start_server: StartServer,
    http: aiohttp.ClientSession,
    gate_server: Callable[[RunningServer], Gate],
) -> None:
    # one request per sentence, as the plugin sends them: a full server refuses a new reply,
    # never the next sentence of one it is speaking
    server = await start_server(max_streams=1)
    gate = gate_server(server)
    reply = {STREAM_HEADER: "reply-a"}
    body = {"input": LONG, "response_format": "pcm"}
    async with http.post(server.url(SPEECH), json=body, headers=reply) as first:
        assert first.status == 200
        await first.content.readany()  # admitted, and held at its second segment
        status, _, data = await post(http, server, body, headers={STREAM_HEADER: "reply-b"})
        assert (status, json.loads(data)["error"]["code"]) == (503, "busy")
        second = asyncio.ensure_future(
            post(http, server, {"input": "Hi.", "response_format": "pcm"}, headers=reply)
        )
        await until(lambda: server.state.capacity.in_use == 2)  # judged while the first runs
        gate.opened.set()
        status, _, data = await second
        assert status == 200 and data
        assert len(await first.read()) > 0
    await until(lambda: idle(server.state))


async def test_a_malformed_x_stream_id_is_a_400_naming_it(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    headers = {STREAM_HEADER: "x" * (protocol.MAX_REQUEST_ID_LENGTH + 1)}
    status, _, data = await post(http, server, {"input": "Hi."}, headers=headers)
    assert status == 400 and json.loads(data)["error"]["param"] == STREAM_HEADER


async def test_a_draining_server_answers_503_shutting_down(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    server.state.shutting_down = True  # what draining sets before it waits for requests
    status, headers, data = await post(http, server, {"input": "Hi."})
    assert (status, json.loads(data)["error"]["code"]) == (503, "shutting_down")
    assert "Retry-After" in headers


# -- streaming, and a client that goes away -----------------------------------------------------


async def test_the_first_bytes_leave_before_the_rest_is_rendered(
    server: RunningServer,
    http: aiohttp.ClientSession,
    gate_server: Callable[[RunningServer], Gate],
) -> None:
    gate = gate_server(server)
    async with http.post(
        server.url(SPEECH), json={"input": LONG, "response_format": "pcm"}
    ) as response:
        assert response.status == 200
        first = await response.content.readany()
        # the client holds audio while the second segment has not even started synthesis
        assert first
        assert not gate.opened.is_set()
        assert gate.segments_started == 2
        gate.opened.set()
        rest = await response.read()
    assert gate.segments_started > 2
    assert (len(first) + len(rest)) / 2 / 24000 > 8.0  # the whole input, every segment


async def test_a_client_that_disconnects_mid_response_frees_its_synthesis_at_once(
    server: RunningServer,
    http: aiohttp.ClientSession,
    gate_server: Callable[[RunningServer], Gate],
) -> None:
    gate = gate_server(server)
    response = await http.post(server.url(SPEECH), json={"input": LONG, "response_format": "pcm"})
    assert response.status == 200
    assert await response.content.readany()
    assert not idle(server.state)
    response.close()  # closes the socket mid-stream
    # freed while its next segment is still held: nobody waits for synthesis to notice
    await until(lambda: idle(server.state))
    assert not gate.opened.is_set()
    assert server.state.metrics.active_requests._value.get() == 0
    assert sample_value(server, "knowlithic_tts_requests_total", {"outcome": "closed"}) == 1
    gate.opened.set()
    status, _, data = await post(http, server, {"input": "Hi.", "response_format": "pcm"})
    assert status == 200 and data  # the server serves on


async def test_shutdown_cuts_a_response_that_outlives_the_grace_period(
    start_server: StartServer,
    http: aiohttp.ClientSession,
    gate_server: Callable[[RunningServer], Gate],
) -> None:
    server = await start_server(shutdown_grace=0.1)
    gate_server(server)
    async with http.post(
        server.url(SPEECH), json={"input": LONG, "response_format": "pcm"}
    ) as response:
        assert await response.content.readany()
        stopping = asyncio.create_task(server.stop())
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()  # the last chunk never comes: the file is incomplete
        await stopping
    assert idle(server.state)


# -- discovery ------------------------------------------------------------------------------------


async def test_models_and_voices_are_listed(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(server.url("/v1/models")) as response:
        models = await response.json()
    assert models["object"] == "list"
    assert "tts-1" in {m["id"] for m in models["data"]}
    assert all(m["object"] == "model" for m in models["data"])
    async with http.get(server.url("/v1/audio/voices")) as response:
        voices = await response.json()
    assert voices["object"] == "list"
    assert voices["default"] == "joe"
    assert [v["id"] for v in voices["data"]] == ["joe"]
    assert voices["data"][0]["aliases"] == ["elise"]
    assert "alloy" in voices["openai_voices"]


async def test_no_text_and_no_key_reach_the_log(
    start_server: StartServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start_server(api_key="s3cret-key", max_text_length=60)
    secret = "Zanzibar quokka marmalade."
    auth = {"Authorization": "Bearer s3cret-key"}
    for body, headers in [
        ({"input": secret, "response_format": "pcm"}, auth),  # spoken
        ({"input": secret, "voice": "nobody"}, auth),  # refused
        ({"input": secret * 3}, auth),  # too long
        ({"input": secret}, {"Authorization": "Bearer wrong-s3cret-key"}),  # unauthorized
    ]:
        await post(http, server, body, headers=headers)
    async with http.post(
        server.url(SPEECH), json={"input": secret, "response_format": "pcm"}, headers=auth
    ) as response:
        await response.content.readany()
        response.close()  # gone mid-response: logged
    await until(lambda: idle(server.state))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "POST /v1/audio/speech" in logged  # the access log saw the requests
    for word in ("Zanzibar", "quokka", "s3cret"):
        assert word not in logged


async def test_a_client_over_its_rate_gets_429_with_retry_after(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    server = await start_server(rate_limit=0.1, rate_burst=1)
    body = {"input": "Hi.", "response_format": "pcm"}
    assert (await post(http, server, body))[0] == 200
    status, headers, data = await post(http, server, body)
    assert status == 429
    assert int(headers["Retry-After"]) >= 1
    error = json.loads(data)["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limited")


@pytest.mark.parametrize("failing_segment", [1, 2])
async def test_a_synthesis_failure_is_a_500_or_a_cut_stream(
    server: RunningServer,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    failing_segment: int,
) -> None:
    scheduler = server.state.scheduler
    original = scheduler.run
    started = 0

    async def failing(job: Callable[[], Any], deadline: float) -> Any:
        nonlocal started
        started += 1
        if started == failing_segment:
            raise RuntimeError("the engine broke")
        return await original(job, deadline)

    monkeypatch.setattr(scheduler, "run", failing)
    async with http.post(
        server.url(SPEECH), json={"input": LONG, "response_format": "pcm"}
    ) as response:
        if failing_segment == 1:  # nothing sent yet: OpenAI's error object
            assert response.status == 500
            error = (await response.json())["error"]
            assert (error["type"], error["code"]) == ("server_error", "internal")
        else:  # audio already left: the stream is cut short, never ended as if complete
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
    await until(lambda: idle(server.state))
    assert sample_value(server, "knowlithic_tts_errors_total", {"code": "internal"}) == 1
