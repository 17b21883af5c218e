"""bench.call.script: parsing call scripts, and one clear error for each kind of mistake."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bench.call.script import CallScript, ScriptError, Turn, load_script, parse_script

SCRIPTS = Path(__file__).resolve().parent.parent / "bench" / "call" / "scripts"

GOOD: dict[str, Any] = {
    "greeting": "Hello, I'm Avery. How can I help you today?",
    "turns": [
        {"caller": "I think I sprained my ankle.", "reply": "Can you stand on it?"},
        {
            "caller": ["It hurts a lot,", "but I can walk a little."],
            "gap_s": 0.5,
            "reply": "Keep it raised and put ice on it.",
            "barge_in_after_s": 1.5,
            "pause_before_s": 2,
        },
        {"caller": "Thanks.", "reply": "You're welcome."},
    ],
}


def test_parses_with_defaults() -> None:
    script = parse_script(GOOD)
    assert script.greeting == GOOD["greeting"]
    first, second, third = script.turns
    assert first == Turn(
        caller=("I think I sprained my ankle.",),
        reply="Can you stand on it?",
        gap_s=0.7,
        pause_before_s=1.0,
        barge_in_after_s=None,
    )
    assert second.caller == ("It hurts a lot,", "but I can walk a little.")
    assert second.caller_text == "It hurts a lot, but I can walk a little."
    assert (second.gap_s, second.pause_before_s, second.barge_in_after_s) == (0.5, 2.0, 1.5)
    assert isinstance(second.pause_before_s, float)
    assert third.barge_in_after_s is None


def test_frozen() -> None:
    script = parse_script(GOOD)
    with pytest.raises(AttributeError):
        script.greeting = "hi"  # type: ignore[misc]
    assert isinstance(script.turns, tuple)


@pytest.mark.parametrize("name", ["ankle.json", "smoke.json"])
def test_shipped_scripts(name: str) -> None:
    script = load_script(SCRIPTS / name)
    assert len(script.turns) >= 4
    assert any(len(t.caller) > 1 and t.gap_s == pytest.approx(0.7) for t in script.turns)
    assert sum(t.barge_in_after_s is not None for t in script.turns) >= 1


def test_ankle_barge_in_cuts_a_long_reply() -> None:
    """1.5 s into a reply of ~2.5 words a second, there must be plenty left to cut."""
    script = load_script(SCRIPTS / "ankle.json")
    [barged] = [t for t in script.turns if t.barge_in_after_s is not None]
    assert barged.barge_in_after_s == 1.5
    assert len(barged.reply.split()) >= 20


def edited(path: str, value: object) -> dict[str, Any]:
    """GOOD with ``path`` (like ``turns[1].gap_s``) set to ``value``; ``...`` deletes it."""
    data = copy.deepcopy(GOOD)
    keys: list[str | int] = [
        int(k[1:-1]) if k.startswith("[") else k for k in re.findall(r"\[\d+\]|[^.\[\]]+", path)
    ]
    target: Any = data
    for key in keys[:-1]:
        target = target[key]
    if value is ...:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "script: must be a JSON object, got a list"),
        ("hi", "script: must be a JSON object, got a string"),
        (edited("greeting", ...), "greeting: missing"),
        (edited("turns", ...), "turns: missing"),
        (edited("greeting", "   "), "greeting: must not be empty"),
        (edited("greeting", 3), "greeting: must be a string, got the number 3"),
        (edited("turns", []), "turns: must hold at least one turn, got an empty list"),
        (edited("turns", {}), "turns: must be a list of turns, got an object"),
        (edited("turns[0]", "hello"), "turns[0]: must be a JSON object, got a string"),
        (edited("turns[0].caller", ...), "turns[0].caller: missing"),
        (edited("turns[2].reply", ...), "turns[2].reply: missing"),
        (edited("turns[0].caller", ""), "turns[0].caller: must not be empty"),
        (edited("turns[0].caller", []), "turns[0].caller: must hold at least one part"),
        (edited("turns[1].caller[1]", " \n"), "turns[1].caller[1]: must not be empty"),
        (edited("turns[1].caller[0]", None), "turns[1].caller[0]: must be a string, got null"),
        (edited("turns[0].caller", 7), "turns[0].caller: must be a string or a list of strings"),
        (edited("turns[2].reply", "\t"), "turns[2].reply: must not be empty"),
        (edited("turns[1].gap_s", -0.5), "turns[1].gap_s: must be a number >= 0, got -0.5"),
        (edited("turns[1].gap_s", True), "turns[1].gap_s: must be a number >= 0, got true"),
        (edited("turns[1].gap_s", "0.7"), 'turns[1].gap_s: must be a number >= 0, got "0.7"'),
        (
            edited("turns[0].pause_before_s", float("nan")),
            "turns[0].pause_before_s: must be a number >= 0, got NaN",
        ),
        (
            edited("turns[0].pause_before_s", float("inf")),
            "turns[0].pause_before_s: must be a number >= 0, got Infinity",
        ),
        (
            edited("turns[1].barge_in_after_s", -1),
            "turns[1].barge_in_after_s: must be a number >= 0, got -1",
        ),
        (
            edited("turns[2].barge_in_after_s", 1.0),
            "turns[2].barge_in_after_s: not allowed on the last turn",
        ),
        (
            edited("turns[0].pause_befor_s", 1.0),
            "turns[0].pause_befor_s: unknown key (allowed: caller, reply, gap_s, "
            "pause_before_s, barge_in_after_s, backchannel_after_s)",
        ),
        (
            edited("turns[1].backchannel_after_s", 1.0),
            "turns[1].backchannel_after_s: not allowed with barge_in_after_s",
        ),
        (
            edited("turns[0].backchannel_after_s", "soon"),
            "turns[0].backchannel_after_s: must be a number >= 0",
        ),
        (edited("greting", "hi"), "greting: unknown key (allowed: greeting, turns)"),
    ],
)
def test_bad_scripts_name_the_field(data: object, message: str) -> None:
    with pytest.raises(ScriptError) as caught:
        parse_script(data)
    assert str(caught.value).startswith(message), str(caught.value)


def test_null_barge_in_means_none() -> None:
    assert parse_script(edited("turns[2].barge_in_after_s", None)).turns[2].barge_in_after_s is None


def test_load_script_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "call.json"
    path.write_text("{ not json", encoding="utf-8")
    with pytest.raises(ScriptError, match=r"call\.json: not valid JSON"):
        load_script(path)
    path.write_text(json.dumps(edited("turns[1].gap_s", -0.5)), encoding="utf-8")
    with pytest.raises(ScriptError, match=r"call\.json: turns\[1\]\.gap_s: must be a number >= 0"):
        load_script(path)
    with pytest.raises(ScriptError, match="cannot read"):
        load_script(tmp_path / "missing.json")


def test_load_script_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "call.json"
    path.write_text(json.dumps(GOOD), encoding="utf-8")
    assert load_script(path) == parse_script(GOOD)
    assert isinstance(load_script(path), CallScript)
