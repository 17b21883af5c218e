"""The plugin's normal life: turns, prewarm, concurrency, interruption, metrics, options."""

from __future__ import annotations

import asyncio

from livekit.agents import tts as lk_tts
from livekit.agents.metrics import TTSMetrics

from tests.conftest import MakeTTS
from tests.fake_knowlithic import SECONDS_PER_CHAR, FakeKnowlithicServer, speech_for
from tests.plugin_helpers import (
    Spoken,
    eventually,
    expected_digest,
    interrupt_after_first_audio,
    speak,
    synthesize,
)

FIRST = "Hello there, this is the first sentence."
SECOND = "And this one is the second sentence."


async def test_one_connection_serves_many_turns(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts()
    for turn in range(5):
        spoken = await speak(tts, f"Turn number {turn} starts here. ", SECOND)
        assert spoken.digest == expected_digest([f"Turn number {turn} starts here.", SECOND])
    assert server.received.connections == 1


async def test_text_is_sent_sentence_by_sentence_as_it_arrives(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts()
    async with tts.stream() as stream:
        for word in FIRST.split():
            stream.push_text(word + " ")
        stream.push_text("And now more")
        # the first sentence goes out before the reply is complete
        await eventually(lambda: len(server.received.requests) == 1)
        assert server.received.requests[0].text == FIRST
        stream.push_text(" text follows.")
        stream.end_input()
        spoken = Spoken()
        async for ev in stream:
            spoken.add(ev)
    assert [r.text for r in server.received.requests] == [FIRST, "And now more text follows."]
    assert spoken.digest == expected_digest([FIRST, "And now more text follows."])


async def test_prewarm_opens_the_socket_before_the_first_reply(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts()
    metrics: list[TTSMetrics] = []
    tts.on("metrics_collected", metrics.append)
    tts.prewarm()
    tts.prewarm()  # a second call while connecting opens nothing more
    await eventually(lambda: server.received.connections == 1)
    assert server.received.requests == []
    await speak(tts, FIRST)
    assert server.received.connections == 1
    assert metrics[-1].connection_reused is True


async def test_prewarm_racing_the_first_stream_opens_one_socket(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.first_audio_delay = 0.0
    tts = make_tts()
    tts.prewarm()
    await asyncio.gather(*(speak(tts, f"Stream {n} says hello.") for n in range(4)))
    assert server.received.connections == 1


async def test_concurrent_streams_never_get_each_others_audio(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.chunk_bytes = 320
    server.behavior.chunk_delay = 0.001
    tts = make_tts()
    texts = [(f"Caller {n} asked a question. ", f"Here is answer {n} for you.") for n in range(8)]
    results = await asyncio.gather(*(speak(tts, *t) for t in texts))
    for text, spoken in zip(texts, results, strict=True):
        assert spoken.digest == expected_digest([t.strip() for t in text])
        assert len(spoken.request_ids) == 1
    assert len({r.request_ids.pop() for r in results}) == 8
    assert server.received.connections == 1


async def test_interruption_cancels_on_the_server_and_leaves_no_stale_audio(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.chunk_bytes = 320
    server.behavior.chunk_delay = 0.02
    tts = make_tts()
    await interrupt_after_first_audio(tts, FIRST + " " + SECOND)
    await eventually(lambda: len(server.received.cancels) == 2)
    assert set(server.received.cancels) == {r.request_id for r in server.received.requests}

    server.behavior.chunk_delay = 0.0
    spoken = await speak(tts, "A fresh answer after the interruption.")
    assert spoken.digest == expected_digest(["A fresh answer after the interruption."])
    assert server.received.connections == 1


async def test_late_audio_of_a_cancelled_request_is_dropped(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    # a server that ignores cancel keeps streaming the old request over the shared socket
    server.behavior.ignore_cancel = True
    server.behavior.chunk_bytes = 320
    server.behavior.chunk_delay = 0.005
    tts = make_tts()
    await interrupt_after_first_audio(tts, FIRST)

    spoken = await speak(tts, "The next turn must be clean.")
    assert spoken.digest == expected_digest(["The next turn must be clean."])


async def test_interruption_before_the_first_audio_also_cancels(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.first_audio_delay = 5.0
    tts = make_tts()
    stream = tts.stream()
    stream.push_text(FIRST)
    stream.end_input()
    await eventually(lambda: len(server.received.requests) == 1)
    await stream.aclose()
    await eventually(lambda: server.received.cancels == [server.received.requests[0].request_id])


async def test_metrics_report_ttfb_audio_and_connection_reuse(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts()
    metrics: list[TTSMetrics] = []
    tts.on("metrics_collected", metrics.append)
    await speak(tts, FIRST)
    await speak(tts, SECOND)
    await eventually(lambda: len(metrics) == 2)
    first, second = metrics
    assert first.connection_reused is False and second.connection_reused is True
    assert 0 < first.ttfb < 2.0
    assert first.acquire_time > 0
    assert abs(first.audio_duration - SECONDS_PER_CHAR * len(FIRST)) < 0.02
    assert first.characters_count == len(FIRST)
    assert first.streamed is True


async def test_word_timestamps_become_the_aligned_transcript(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts()
    assert tts.capabilities.aligned_transcript is True
    spoken = await speak(tts, FIRST + " " + SECOND)
    assert "".join(spoken.timed) == FIRST + " " + SECOND
    starts = [t.start_time for t in spoken.timed if isinstance(t.start_time, float)]
    assert len(starts) == len(spoken.timed) and starts == sorted(starts)
    # the second sentence's words are placed after the first sentence's audio
    second_start = starts[next(i for i, t in enumerate(spoken.timed) if "And" in t)]
    assert abs(second_start - SECONDS_PER_CHAR * len(FIRST)) < 0.01


async def test_without_server_timestamps_the_transcript_is_not_aligned(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.word_timestamps = False
    tts = make_tts()
    spoken = await speak(tts, FIRST)
    assert spoken.timed == []
    assert tts.capabilities.aligned_transcript is False
    assert server.received.requests[-1].word_timestamps is False


async def test_update_options_changes_voice_and_rate_for_later_streams(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts()
    await speak(tts, FIRST)
    tts.update_options(voice="joe", sample_rate=24000)
    spoken = await speak(tts, SECOND)
    last = server.received.requests[-1]
    assert (last.voice, last.sample_rate) == ("joe", 24000)
    assert spoken.sample_rates == {24000} and tts.sample_rate == 24000
    assert spoken.digest == expected_digest([SECOND], 24000)
    assert server.received.connections == 1


async def test_synthesize_and_stream_share_the_socket(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts()
    spoken = await synthesize(tts, FIRST + " " + SECOND)
    assert spoken.digest == expected_digest([FIRST, SECOND])
    await speak(tts, FIRST)
    assert server.received.connections == 1


async def test_non_streaming_mode_is_declared(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts(use_streaming=False)
    assert tts.capabilities.streaming is False
    adapter = lk_tts.StreamAdapter(tts=tts)
    spoken = Spoken()
    async with adapter.stream() as stream:
        stream.push_text(FIRST + " " + SECOND)
        stream.end_input()
        async for ev in stream:
            spoken.add(ev)
    sent = [r.text for r in server.received.requests]
    assert [s.strip() for s in sent] == [FIRST, SECOND]
    # the adapter flushes each sentence, and the framework then ends it with 10 ms of silence
    expected = b"".join(speech_for(text, 16000) for text in sent)
    assert spoken.pcm[: len(expected)] == expected
    assert spoken.pcm[len(expected) :] == bytes(len(spoken.pcm) - len(expected))
    assert len(spoken.pcm) - len(expected) <= 320


async def test_aclose_closes_the_socket_and_open_streams(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.first_audio_delay = 5.0
    tts = make_tts()
    stream = tts.stream()
    stream.push_text(FIRST)
    await eventually(lambda: server.open_connections == 1)
    await tts.aclose()
    await eventually(lambda: server.open_connections == 0)
    assert stream._task.done()


async def test_long_sentences_are_split_to_the_servers_limit(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    server.behavior.max_text_length = 40
    tts = make_tts()
    text = "This sentence is much longer than the forty characters the server accepts."
    spoken = await speak(tts, text)
    pieces = [r.text for r in server.received.requests]
    assert all(len(p) <= 40 for p in pieces) and " ".join(pieces) == text
    assert spoken.digest == expected_digest(pieces)


async def test_cancelling_on_a_server_without_request_ids_drops_the_socket(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    # its late audio would carry no id and could only be mistaken for the next reply's
    server.behavior.subprotocol = False
    server.behavior.tag_messages = False
    server.behavior.ignore_cancel = True
    server.behavior.chunk_bytes = 320
    server.behavior.chunk_delay = 0.01
    tts = make_tts()
    await interrupt_after_first_audio(tts, FIRST)
    await eventually(lambda: server.received.connections == 2)  # reopened in the background

    server.behavior.chunk_delay = 0.0
    spoken = await speak(tts, "The next turn must be clean.")
    assert spoken.digest == expected_digest(["The next turn must be clean."])


async def test_text_with_nothing_to_say_is_skipped_not_failed(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts()
    errors: list[object] = []
    tts.on("error", errors.append)
    spoken = await speak(tts, "😀👍 ... — ")
    assert server.received.requests == []
    assert spoken.pcm == bytes(len(spoken.pcm)) and 0 < len(spoken.pcm) <= 640  # 20 ms silence
    assert errors == []

    # mixed text is sent whole (the server decides how to read the emoji)
    spoken = await speak(tts, "🎉 Great news, the results are back! 🎉")
    sent = [r.text for r in server.received.requests]
    assert "".join(sent).replace(" ", "") == "🎉Greatnews,theresultsareback!🎉"
    assert spoken.digest == expected_digest(sent)


async def test_empty_and_whitespace_input_produce_nothing(
    server: FakeKnowlithicServer, make_tts: MakeTTS
) -> None:
    tts = make_tts()
    for text in ("", "   \n\t  "):
        spoken = await speak(tts, text)
        assert spoken.pcm == b""
    assert server.received.requests == []
