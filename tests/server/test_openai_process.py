"""/v1/audio/speech on `python -m tts_server` in a process of its own, seen only from outside
(its socket, /health and /metrics): a full server's 503, and a client that closes its socket
mid-response giving its place back."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.server_process import ServerProcess

KEY = "k3y"
AUTH = {"Authorization": f"Bearer {KEY}"}
# many segments: the reply is still being synthesized long after its first bytes left
LONG = (
    "Thank you for calling. Your appointment is on Tuesday at three. "
    "Please bring your insurance card. We will send a reminder the day before. "
) * 8


async def metric(http: aiohttp.ClientSession, server: ServerProcess, line: str) -> float:
    async with http.get(f"{server.http_url}/metrics", headers=AUTH) as response:
        for row in (await response.text()).splitlines():
            if row.startswith(line + " "):
                return float(row.split()[-1])
    return 0.0


async def health(http: aiohttp.ClientSession, server: ServerProcess) -> dict[str, object]:
    async with http.get(f"{server.http_url}/health") as response:
        body: dict[str, object] = await response.json()
        return body


async def test_a_full_server_says_503_and_a_client_gone_mid_response_frees_its_place() -> None:
    server = ServerProcess(
        "--max-streams", "1", "--rate-limit", "0", env={"KNOWLITHIC_API_KEY": KEY}
    )
    await server.start()
    speech = f"{server.http_url}/v1/audio/speech"
    try:
        async with aiohttp.ClientSession() as http:
            response = await http.post(
                speech, json={"input": LONG, "response_format": "pcm"}, headers=AUTH
            )
            assert response.status == 200
            assert response.headers["X-Sample-Rate"] == "24000"
            assert await response.content.readany()
            # the one place is held: another reply is refused at once, with when to retry
            async with http.post(speech, json={"input": "Hi."}, headers=AUTH) as refused:
                assert refused.status == 503
                assert int(refused.headers["Retry-After"]) >= 1
                assert (await refused.json())["error"]["code"] == "busy"
            response.close()  # the socket closes mid-stream
            for _ in range(1000):  # 10 s at most: a bound for a hang, not a measurement
                state = await health(http, server)
                if state["active_requests"] == 0 and state["active_streams"] == 0:
                    break
                await asyncio.sleep(0.01)
            assert state["status"] == "ok"
            closed = 'knowlithic_tts_requests_total{outcome="closed"}'
            assert await metric(http, server, closed) == 1
            assert await metric(http, server, "knowlithic_tts_active_requests") == 0
            async with http.post(
                speech, json={"input": "Hi.", "response_format": "pcm"}, headers=AUTH
            ) as again:
                assert again.status == 200  # the place was given back
                assert await again.read()
    finally:
        await server.stop()
    assert "Thank you for calling" not in server.log
    assert KEY not in server.log
