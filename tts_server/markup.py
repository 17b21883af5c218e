"""Strip SSML and other XML-like markup from a request's text: its words are spoken, its tags
never are.

An LLM asked for speech sometimes writes SSML (``<speak>Hello <break time="1s"/></speak>``).
Piper would read the tag names and attributes aloud, so tags, comments and declarations go,
their text content stays, and character entities (``&amp;``) become their characters.  A tag
must look like one: a name right after ``<`` and only ``name="value"`` attributes, so
``a < b and c > d`` or ``<3`` are left as they are.
"""

from __future__ import annotations

import html
import re
from typing import Final

_ATTRIBUTE: Final = r"""\s+[A-Za-z_:][\w:.-]*\s*=\s*(?:"[^"<>]*"|'[^'<>]*'|[^\s"'<>=`/]+)"""
_MARKUP: Final = re.compile(
    r"<!--.*?(?:-->|$)"  # a comment (an unclosed one runs to the end)
    r"|<!\[CDATA\[|\]\]>"  # CDATA brackets: the text inside is kept
    r"|<[?!][A-Za-z][^<>]*>"  # <?xml ...?>, <!DOCTYPE ...>
    rf"|</?[A-Za-z][\w:.-]*(?:{_ATTRIBUTE})*\s*/?>",  # a start, end or empty tag
    re.DOTALL,
)
_ENTITY: Final = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_SPACE_BEFORE_PUNCTUATION: Final = re.compile(r"[ \t]+(?=[,.;:!?])")


def strip_markup(text: str) -> str:
    """``text`` without markup; text without any is returned unchanged."""
    if "<" in text or "]]>" in text:
        stripped = _MARKUP.sub(" ", text)
        if stripped != text:
            # "<emphasis>great</emphasis>!" must not become "great !"
            text = _SPACE_BEFORE_PUNCTUATION.sub("", stripped)
    if "&" in text:
        text = _ENTITY.sub(lambda m: html.unescape(m.group()), text)
    return text
