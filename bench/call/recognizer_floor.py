"""How well the offline recognizer hears a script's replies with no call at all.

    python -m bench.call.recognizer_floor [--script bench/call/scripts/tuning.json]

Each reply (and the greeting) is synthesized by the local TTS server through the plugin and
transcribed by pocketsphinx exactly as ``bench.call.analysis`` transcribes a recorded reply.
Its word error rates are the floor a call's can be judged against: a reply heard in a call
at the same rate lost nothing; the recognizer slipped, not the call.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from bench.call.analysis import SAMPLE_RATE, transcribe_speech
from bench.call.script import load_script
from bench.common import local_tts_server
from tests.server.asr import normalize, word_errors
from tts_custom.knowlithictts import TTS

SCRIPT = Path(__file__).resolve().parent / "scripts" / "tuning.json"


async def floor(script_path: Path) -> list[tuple[str, str, int, int]]:
    """(reply, transcript, word errors, reference words) for every reply of the script."""
    script = load_script(script_path)
    replies = [script.greeting, *(t.reply for t in script.turns)]
    rows = []
    async with local_tts_server() as url:
        tts = TTS(base_url=url, sample_rate=SAMPLE_RATE)
        try:
            for reply in replies:
                pcm = b"".join([e.frame.data.tobytes() async for e in tts.synthesize(reply)])
                heard = await asyncio.to_thread(transcribe_speech, pcm)
                reference = normalize(reply)
                rows.append(
                    (reply, heard, word_errors(reference, normalize(heard)), len(reference))
                )
        finally:
            await tts.aclose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--script", type=Path, default=SCRIPT)
    args = parser.parse_args()
    rows = asyncio.run(floor(args.script))
    for _reply, heard, errors, words in rows:
        print(f"{errors / words:5.2f}  {heard}")
    total = sum(r[2] for r in rows) / sum(r[3] for r in rows)
    print(f"overall word error rate {total:.3f} over {len(rows)} replies")


if __name__ == "__main__":
    main()
