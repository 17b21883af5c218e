"""A whole call through the worker's own session, offline: speech in, speech out.

The session is the one ``agent.py`` builds (Silero VAD, the local end-of-turn model, the
worker's turn and interruption settings, the TTS plugin against the real local server, the
prompt and greeting), with the room's audio, the speech-to-text and the LLM swapped for the
harness's (``bench.conversation``).  The caller's lines are Piper speech, played in real
time, and the caller reacts to the agent as a person would.  This asserts behaviour, not
timing: ``python -m bench.conversation`` and ``bench.turn_sweep`` measure that.
"""

from __future__ import annotations

from difflib import SequenceMatcher
from pathlib import Path

from bench.call.script import CallScript, load_script
from bench.call.scripted_llm import FALLBACK_REPLY
from bench.common import local_tts_server
from bench.conversation import caller_voice, run_call
from tests.server.asr import normalize

SMOKE = Path(__file__).resolve().parent.parent / "bench" / "call" / "scripts" / "smoke.json"


async def test_a_short_call_is_heard_in_order_without_cut_ins_and_a_barge_in_is_answered() -> None:
    script = load_script(SMOKE)
    assert len(script.turns) >= 4
    assert any(len(t.caller) > 1 for t in script.turns)  # a mid-sentence pause
    barge = next(i for i, t in enumerate(script.turns) if t.barge_in_after_s is not None)
    async with local_tts_server("--max-streams", "0", "--first-audio-target", "0") as url:
        voice = await caller_voice(url, script)
        run = await run_call(
            script,
            url=url,
            voice=voice,
            llm_ttft=0.0,
            framework_defaults=False,
            overrides={},
        )
    measure = run.measure

    # the greeting and every reply heard, each its own turn's, in order
    assert measure.greeting is not None
    assert measure.missed_replies == 0
    for index, turn in enumerate(measure.turns):
        assert turn.reply is not None, turn
        heard = _nearest_reply(script, turn.reply.transcript)
        assert heard == index, (turn.reply, run.transcripts, [c["reply"] for c in run.choices])
    starts = [t.reply.start for t in measure.turns if t.reply is not None]
    assert starts == sorted(starts)

    # never over the caller, mid-sentence pause included (the barge-in is the caller's doing)
    assert measure.cut_ins == 0, [t.cut_ins for t in measure.turns]

    # the barge-in cut the reply, the session knows it was cut, and the caller was answered
    cut = measure.turns[barge].barge_in
    assert cut is not None and cut.overlapped and cut.stopped
    said = {m["text"]: m["interrupted"] for m in run.framework if m["role"] == "assistant"}
    cut_reply, next_reply = script.turns[barge].reply, script.turns[barge + 1].reply
    assert any(interrupted and cut_reply.startswith(text) for text, interrupted in said.items())
    assert said.get(next_reply) is False
    assert measure.turns[barge + 1].reply is not None


def _nearest_reply(script: CallScript, transcript: str | None) -> int | None:
    """The turn whose scripted reply ``transcript`` is nearest to; None for the greeting or
    the fallback.  Nearest by letters, not words: the recognizer slips on short replies
    ("you're welcome daycare" for "You are welcome. Take care."); and against each prefix
    of a reply, as one cut by a barge-in is only its start."""
    heard = " ".join(normalize(transcript or ""))
    candidates: list[tuple[int | None, str]] = [(None, script.greeting), (None, FALLBACK_REPLY)]
    candidates += [(i, t.reply) for i, t in enumerate(script.turns)]

    def likeness(candidate: tuple[int | None, str]) -> float:
        words = normalize(candidate[1])
        prefixes = (" ".join(words[:k]) for k in range(1, len(words) + 1))
        return max(SequenceMatcher(None, heard, prefix).ratio() for prefix in prefixes)

    return max(candidates, key=likeness)[0]
