"""The least a LiveKit TTS plugin on one shared socket can do: a floor for benchmark 3.

One reader task routes each tagged binary frame, by the request id in its header, to the
stream that asked for it; each stream sends its sentences one after another and pushes the
PCM into LiveKit's ``AudioEmitter``.  No streaming tokenizer, no pipelining, no timeouts,
retries, cancels or checks of the audio: what any plugin built on the framework pays, and
nothing more.  Not for use outside the benchmarks.
"""

from __future__ import annotations

import asyncio
import json
import struct

import aiohttp
from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions, tokenize, tts, utils

import knowlithic_protocol as protocol

_HEADER = struct.Struct(">H")
_DONE = b""


class MinimalTTS(tts.TTS[None]):
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, *, sample_rate: int) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True),
            sample_rate=sample_rate,
            num_channels=1,
        )
        self.ws = ws
        self.routes: dict[str, asyncio.Queue[bytes]] = {}
        self._reader = asyncio.create_task(self._read())

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        raise NotImplementedError("streaming only")

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> MinimalStream:
        return MinimalStream(tts=self, conn_options=conn_options)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                (size,) = _HEADER.unpack_from(msg.data)
                header = json.loads(msg.data[_HEADER.size : _HEADER.size + size])
                self.routes[header["request_id"]].put_nowait(msg.data[_HEADER.size + size :])
            elif msg.type == aiohttp.WSMsgType.TEXT:
                request_id = json.loads(msg.data).get("request_id")
                if request_id in self.routes:
                    self.routes[request_id].put_nowait(_DONE)

    async def aclose(self) -> None:
        await utils.aio.cancel_and_wait(self._reader)


class MinimalStream(tts.SynthesizeStream):
    _tts: MinimalTTS

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        stream_id = utils.shortuuid()
        rate = self._tts.sample_rate
        output_emitter.initialize(
            request_id=stream_id,
            sample_rate=rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        output_emitter.start_segment(segment_id=stream_id)
        text = "".join([item async for item in self._input_ch if isinstance(item, str)])
        for n, sentence in enumerate(tokenize.blingfire.SentenceTokenizer().tokenize(text)):
            request_id = f"{stream_id}-{n}"
            audio = self._tts.routes[request_id] = asyncio.Queue()
            request = protocol.TextToSpeech(request_id, sentence, "elise", rate, "pcm")
            await self._tts.ws.send_str(protocol.encode_client_message(request))
            while pcm := await audio.get():
                output_emitter.push(pcm)
            del self._tts.routes[request_id]
        output_emitter.end_segment()
