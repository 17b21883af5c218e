"""An OpenAI-compatible chat-completions server that fails on demand, as a process of its own.

``POST /v1/chat/completions`` streams each model's scripted reply word by word as OpenAI does
(``data: {...}`` chunks, a usage chunk, ``data: [DONE]``).  ``POST /control`` queues faults per
model; each request to that model takes the next one, and once they are used up the model
answers normally again (it recovers):

    429            Too Many Requests with Retry-After
    500, 503       a server error
    stall          accept the request and send nothing at all
    stall_mid:N    send N words, then nothing, the socket left open
    drip:N         send N words, then SSE comments only (a keep-alive with no text)
    cut:N          send N words, then close the TCP connection mid-response

``GET /requests`` lists what was asked (model, messages, fault), for the tests to check what
each model saw.  Run it with ``python -m tests.fake_openai --port N``; :class:`FakeOpenAI`
starts it, drives it and kills it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.loopback import free_port

REPO = Path(__file__).resolve().parent.parent
FAULTS = ("429", "500", "503", "stall", "stall_mid", "drip", "cut")


def reply_for(model: str) -> str:
    """A model's reply: three sentences naming it, so a test can tell who said what."""
    return f"This is {model} speaking. Every word of mine arrives. That is all from {model}."


def words(text: str) -> list[str]:
    return re.findall(r"\S+\s*", text)


class _State:
    def __init__(self) -> None:
        self.faults: dict[str, list[str]] = {}
        self.replies: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []


def make_app() -> web.Application:
    state = _State()
    app = web.Application()

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def control(request: web.Request) -> web.Response:
        body = await request.json()
        for model, faults in body.get("faults", {}).items():
            for fault in faults:
                if fault.split(":")[0] not in FAULTS:
                    raise web.HTTPBadRequest(text=f"unknown fault {fault}")
            state.faults[model] = list(faults)
        state.replies.update(body.get("replies", {}))
        if body.get("forget"):
            state.requests.clear()
        return web.json_response({"faults": state.faults})

    async def requests(_: web.Request) -> web.Response:
        return web.json_response(state.requests)

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = str(body["model"])
        queue = state.faults.get(model, [])
        fault = queue.pop(0) if queue else "ok"
        state.requests.append(
            {"model": model, "messages": body["messages"], "fault": fault, "at": time.time()}
        )
        kind, _, count = fault.partition(":")
        if kind in ("429", "500", "503"):
            headers = {"Retry-After": "1"} if kind == "429" else {}
            error = {"message": f"fault {kind}", "type": "fault", "code": kind}
            return web.json_response({"error": error}, status=int(kind), headers=headers)
        if kind == "stall":
            await asyncio.sleep(3600)
        reply = state.replies.get(model, reply_for(model))
        if body.get("max_completion_tokens") == 1:
            reply = "OK"  # the chain's recovery probe
        pieces = words(reply)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        limit = int(count) if count else len(pieces)
        for piece in pieces[:limit]:
            await response.write(_event(_chunk(model, {"role": "assistant", "content": piece})))
            await asyncio.sleep(0.005)
        if kind == "stall_mid":
            await asyncio.sleep(3600)
        if kind == "drip":
            while True:
                await response.write(b": keep-alive\n\n")
                await asyncio.sleep(0.1)
        if kind == "cut":
            await asyncio.sleep(0.05)  # let the words leave before the connection closes
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(_event(_chunk(model, {}, finish="stop")))
        usage = {"prompt_tokens": 10, "completion_tokens": len(pieces), "total_tokens": 10}
        await response.write(_event({**_chunk(model, None), "choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app.router.add_get("/health", health)
    app.router.add_post("/control", control)
    app.router.add_get("/requests", requests)
    app.router.add_post("/v1/chat/completions", completions)
    return app


def _chunk(model: str, delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": choices,
    }


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


class FakeOpenAI:
    """The server above as a subprocess on 127.0.0.1, and a client for its controls."""

    def __init__(self) -> None:
        self.port = free_port()
        self._process: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self, timeout: float = 30.0) -> None:
        self._process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "tests.fake_openai", "--port", str(self.port)),
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with aiohttp.ClientSession() as http, asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{self.port}/health") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()

    async def restart(self, down: float) -> None:
        """SIGKILL, nothing listening for ``down`` seconds, then a fresh process on the port."""
        await self.stop()
        await asyncio.sleep(down)
        await self.start()

    async def fail(self, model: str, *faults: str) -> None:
        """Queue ``faults`` for ``model``'s next requests; after them it answers again."""
        await self._post({"faults": {model: list(faults)}})

    async def forget(self) -> None:
        await self._post({"forget": True})

    async def requests(self) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/requests"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            found: list[dict[str, Any]] = await response.json()
            return found

    async def _post(self, body: dict[str, Any]) -> None:
        url = f"http://127.0.0.1:{self.port}/control"
        async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
            response.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
