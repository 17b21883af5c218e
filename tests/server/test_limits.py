"""Authentication and every limit: text length, message size, in flight per connection and
overall, rate per client, duplicate request ids."""

from __future__ import annotations

import aiohttp
import pytest

import knowlithic_protocol as protocol

from .helpers import Connect, StartServer

LONG_TEXT = "This sentence keeps the server busy for a little while. " * 6


@pytest.mark.parametrize(
    "headers",
    [None, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": "k3y"}],
)
async def test_a_missing_or_wrong_key_is_refused_with_401(
    start_server: StartServer, headers: dict[str, str] | None
) -> None:
    server = await start_server(api_key="k3y")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(server.ws_url, headers=headers)
        assert refused.value.status == 401
        for path in ("/v1/voices", "/metrics"):
            async with http.get(server.url(path), headers=headers) as response:
                assert response.status == 401
        async with http.get(server.url("/health")) as response:
            assert response.status == 200  # probes need no key


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer k3y"}, {"X-API-Key": "k3y"}])
async def test_either_header_with_the_key_is_accepted(
    start_server: StartServer, connect: Connect, headers: dict[str, str]
) -> None:
    server = await start_server(api_key="k3y")
    client = await connect(target=server, headers=headers)
    assert (await client.run("Authorized.")).completed


async def test_text_too_long(start_server: StartServer, connect: Connect) -> None:
    client = await connect(target=await start_server(max_text_length=20))
    result = await client.run("This text is longer than twenty characters.")
    assert isinstance(result.terminal, protocol.Error)
    assert result.terminal.code == protocol.ERR_TEXT_TOO_LONG
    assert (await client.run("Short.", request_id="ok")).completed


async def test_a_message_over_the_size_limit_closes_with_1009(
    start_server: StartServer, connect: Connect
) -> None:
    client = await connect(target=await start_server(max_message_size=2048))
    await client.request("x" * 4000)
    message = await client.ws.receive(timeout=10)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert client.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


async def test_too_many_requests_in_flight_on_one_connection(
    start_server: StartServer, connect: Connect
) -> None:
    client = await connect(target=await start_server(max_requests_per_connection=2))
    for rid in ("a", "b", "c"):
        await client.request(LONG_TEXT, request_id=rid)
    await client.until_done("a", "b", "c")
    assert client.results["a"].completed and client.results["b"].completed
    refused = client.results["c"].terminal
    assert isinstance(refused, protocol.Error)
    assert refused.code == protocol.ERR_TOO_MANY_REQUESTS and refused.retryable
    assert (await client.run("Room again.", request_id="d")).completed


async def test_a_full_server_answers_busy_at_once(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(max_requests=1)
    first, second = await connect(target=server), await connect(target=server)
    await first.request(LONG_TEXT, request_id="long")
    first._dispatch(await first.receive())  # its first audio: it is surely in flight now
    result = await second.run("Me too.", request_id="refused")
    assert isinstance(result.terminal, protocol.Error)
    assert result.terminal.code == protocol.ERR_BUSY and result.terminal.retryable
    # immediately, not after the long request finished
    assert "long" not in first.results or first.results["long"].terminal is None
    await first.until_done("long")
    assert first.results["long"].completed
    assert (await second.run("Now there is room.", request_id="later")).completed


async def test_rate_limit_per_client(start_server: StartServer, connect: Connect) -> None:
    client = await connect(target=await start_server(rate_limit=0.5, rate_burst=2))
    for rid in ("a", "b", "c"):
        await client.request("Hi.", request_id=rid)
    await client.until_done("a", "b", "c")
    assert client.results["a"].completed and client.results["b"].completed
    limited = client.results["c"].terminal
    assert isinstance(limited, protocol.Error)
    assert limited.code == protocol.ERR_RATE_LIMITED and limited.retryable


async def test_duplicate_in_flight_request_id(connect: Connect) -> None:
    client = await connect()
    await client.request(LONG_TEXT, request_id="dup")
    await client.request("Again.", request_id="dup")
    first_error = None
    while True:
        msg = await client.receive()
        if isinstance(msg, protocol.Error):
            first_error = msg
        if isinstance(msg, protocol.Complete):
            break
    assert first_error is not None and first_error.code == protocol.ERR_DUPLICATE_REQUEST
    assert msg == protocol.Complete("dup")  # the first request went on to the end


async def test_too_many_connections_are_refused_at_the_handshake(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(max_connections=1)
    await connect(target=server)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(server.ws_url)
    assert refused.value.status == 503
