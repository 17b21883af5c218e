"""The call script: what the caller says, what the agent should answer, and when.

A script is JSON; every mistake in it is refused up front with one message that names the
field (``turns[1].gap_s: must be a number >= 0, got -0.5``), so a typo never silently turns
into a default halfway through a long benchmark.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

DEFAULT_GAP_S: Final = 0.7
DEFAULT_PAUSE_BEFORE_S: Final = 1.0

_SCRIPT_KEYS: Final = ("greeting", "turns")
_TURN_KEYS: Final = (
    "caller",
    "reply",
    "gap_s",
    "pause_before_s",
    "barge_in_after_s",
    "backchannel_after_s",
)


class ScriptError(ValueError):
    """A call script that cannot be run; the message names the offending field."""


@dataclass(frozen=True)
class Turn:
    caller: tuple[str, ...]
    """What the caller says, in parts with ``gap_s`` of silence between them."""
    reply: str
    """What the agent is scripted to answer."""
    gap_s: float
    """Silence between the caller's parts: a mid-sentence pause the agent must wait through."""
    pause_before_s: float
    """Silence between the end of the agent's previous reply and the caller speaking."""
    barge_in_after_s: float | None
    """The caller's next turn starts this long after this turn's reply starts, over it."""
    backchannel_after_s: float | None = None
    """This long after the reply starts, the caller makes a short sound ("um", 0.25 s) over
    it: not a turn, and the reply must go on (or resume)."""

    @property
    def caller_text(self) -> str:
        return " ".join(self.caller)


@dataclass(frozen=True)
class CallScript:
    greeting: str
    turns: tuple[Turn, ...]


def load_script(path: Path) -> CallScript:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ScriptError(f"{path}: cannot read the script: {e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScriptError(f"{path}: not valid JSON: {e}") from e
    try:
        return parse_script(data)
    except ScriptError as e:
        raise ScriptError(f"{path}: {e}") from e


def parse_script(data: object) -> CallScript:
    obj = _object(data, "script", _SCRIPT_KEYS, required=("greeting", "turns"))
    greeting = _line(obj["greeting"], "greeting")
    raw_turns = obj["turns"]
    if not isinstance(raw_turns, list):
        raise ScriptError(f"turns: must be a list of turns, got {_kind(raw_turns)}")
    if not raw_turns:
        raise ScriptError("turns: must hold at least one turn, got an empty list")
    turns = tuple(_turn(t, f"turns[{i}]") for i, t in enumerate(raw_turns))
    if turns[-1].barge_in_after_s is not None:
        raise ScriptError(
            f"turns[{len(turns) - 1}].barge_in_after_s: not allowed on the last turn "
            "(it times the caller's next turn, and there is none)"
        )
    return CallScript(greeting=greeting, turns=turns)


def _turn(data: object, where: str) -> Turn:
    obj = _object(data, where, _TURN_KEYS, required=("caller", "reply"))
    raw_caller = obj["caller"]
    if isinstance(raw_caller, list):
        if not raw_caller:
            raise ScriptError(f"{where}.caller: must hold at least one part, got an empty list")
        caller = tuple(_line(p, f"{where}.caller[{i}]") for i, p in enumerate(raw_caller))
    elif isinstance(raw_caller, str):
        caller = (_line(raw_caller, f"{where}.caller"),)
    else:
        raise ScriptError(
            f"{where}.caller: must be a string or a list of strings, got {_kind(raw_caller)}"
        )
    barge = obj.get("barge_in_after_s")
    backchannel = obj.get("backchannel_after_s")
    if barge is not None and backchannel is not None:
        raise ScriptError(
            f"{where}.backchannel_after_s: not allowed with barge_in_after_s on the same turn "
            "(the reply would be cut either way)"
        )
    return Turn(
        caller=caller,
        reply=_line(obj["reply"], f"{where}.reply"),
        gap_s=_seconds(obj.get("gap_s", DEFAULT_GAP_S), f"{where}.gap_s"),
        pause_before_s=_seconds(
            obj.get("pause_before_s", DEFAULT_PAUSE_BEFORE_S), f"{where}.pause_before_s"
        ),
        # null reads as "no barge-in", like leaving the key out
        barge_in_after_s=None if barge is None else _seconds(barge, f"{where}.barge_in_after_s"),
        backchannel_after_s=None
        if backchannel is None
        else _seconds(backchannel, f"{where}.backchannel_after_s"),
    )


def _object(
    data: object, where: str, allowed: tuple[str, ...], *, required: tuple[str, ...]
) -> Mapping[str, object]:
    if not isinstance(data, dict):
        raise ScriptError(f"{where}: must be a JSON object, got {_kind(data)}")
    for key in data:
        if key not in allowed:
            field = key if where == "script" else f"{where}.{key}"
            raise ScriptError(f"{field}: unknown key (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in data:
            field = key if where == "script" else f"{where}.{key}"
            raise ScriptError(f"{field}: missing")
    return data


def _line(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ScriptError(f"{where}: must be a string, got {_kind(value)}")
    if not value.strip():
        raise ScriptError(f"{where}: must not be empty")
    return value.strip()


def _seconds(value: object, where: str) -> float:
    # bool is an int subclass: `true` must not read as one second
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ScriptError(f"{where}: must be a number >= 0, got {json.dumps(value)}")
    return float(value)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", str: "a string", list: "a list", dict: "an object"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    if isinstance(value, int | float):
        return f"the number {value}"
    return type(value).__name__
