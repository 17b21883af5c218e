"""A whole call through the worker's own session, offline: speech in, speech out.

The session is the one ``agent.py`` builds (Silero VAD, the local end-of-turn model, the
worker's turn and interruption settings, the TTS plugin against the real local server, the
prompt and greeting), with the room's audio, the speech-to-text and the LLM swapped for the
harness's (``bench.conversation``).  The caller's lines are Piper speech, played in real
time, and the caller reacts to the agent as a person would.  This asserts behaviour, not
timing: ``python -m bench.conversation`` and ``bench.turn_sweep`` measure that.
"""

from __future__ import annotations

from pathlib import Path

from bench.call.script import load_script
from bench.common import local_tts_server
from bench.conversation import caller_voice, run_call

SMOKE = Path(__file__).resolve().parent.parent / "bench" / "call" / "scripts" / "smoke.json"
# Recognizer slips on Piper's voice run 0.0-0.4 a reply; another reply, or the fallback
# "Sorry, could you say that again?", would be near 1.
SAME_REPLY_WER = 0.6


async def test_a_short_call_is_heard_in_order_without_cut_ins_and_a_barge_in_is_answered() -> None:
    script = load_script(SMOKE)
    assert len(script.turns) >= 4
    assert any(len(t.caller) > 1 for t in script.turns)  # a mid-sentence pause
    barge = next(i for i, t in enumerate(script.turns) if t.barge_in_after_s is not None)
    async with local_tts_server("--max-streams", "0") as url:
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
    for turn in measure.turns:
        assert turn.reply is not None, turn
        assert turn.reply.wer is not None and turn.reply.wer <= SAME_REPLY_WER, turn.reply
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
