"""The reference syntax of task-graph arguments, parsed without touching any flow or registry.

A string argument is one of:

- a reference, when it starts with ``$`` and a name: ``$n`` is the parameter ``n``;
  ``$steps.items`` is the output of step ``items``; either may be followed by a path of
  ``[0]`` (an element, a possibly negative integer), ``.key`` or ``["any key"]`` (a key), e.g.
  ``$steps.items.meta[1].name``. The reference must be the whole string.
- a literal, where ``$$`` stands for one ``$``. A lone ``$`` not followed by a name (``5$``,
  ``^a+$``) is kept as it is, so regular expressions and prices need no escaping.

Interpolation (``"prefix-$n"``) is rejected rather than supported: a step's output is only
known while the graph runs, and a string silently keeping ``$n`` would hide typos. The error
says to write ``$$`` for a literal dollar sign.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["STEPS", "Reference", "ReferenceSyntaxError", "parse_string"]

STEPS = "steps"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STEP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_KEY = re.compile(r"[A-Za-z0-9_-]+")
_INDEX = re.compile(r"\[(-?[0-9]+)\]")
_QUOTED = re.compile(r"""\[(?:"([^"]*)"|'([^']*)')\]""")


class ReferenceSyntaxError(ValueError):
    """A string looks like a reference but is not a well-formed one; the message says why."""


@dataclass(frozen=True)
class Reference:
    """``$name`` (a parameter) or ``$steps.name`` (a step's output), plus an item path."""

    kind: Literal["parameter", "step"]
    name: str
    path: tuple[str | int, ...]
    text: str


def parse_string(text: str) -> str | Reference:
    """A literal string (``$$`` unescaped) or the Reference the string spells."""
    if text.startswith("$") and _NAME.match(text, 1):
        return _parse_reference(text)
    embedded = _embedded_reference(text)
    if embedded is not None:
        raise ReferenceSyntaxError(
            f"{text!r} has a reference inside other text ({embedded!r}); a reference must be "
            'the whole string (interpolation is not supported); write "$$" for a literal "$"'
        )
    return text.replace("$$", "$")


def _embedded_reference(text: str) -> str | None:
    """The first unescaped ``$name`` that does not start the string, if any."""
    position = 0
    while True:
        found = text.find("$", position)
        if found < 0:
            return None
        if text.startswith("$$", found):
            position = found + 2
            continue
        name = _NAME.match(text, found + 1)
        if name is not None:
            return text[found : name.end()]
        position = found + 1


def _parse_reference(text: str) -> Reference:
    head = _NAME.match(text, 1)
    assert head is not None
    position = head.end()
    kind: Literal["parameter", "step"] = "parameter"
    name = head.group()
    if name == STEPS:
        step = _STEP_NAME.match(text, position + 1) if text.startswith(".", position) else None
        if step is None:
            raise ReferenceSyntaxError(
                f"{text!r}: '$steps' must be followed by a step name, as in '$steps.<step>'"
            )
        kind, name, position = "step", step.group(), step.end()
    path: list[str | int] = []
    while position < len(text):
        if text.startswith(".", position) and (key := _KEY.match(text, position + 1)):
            path.append(key.group())
            position = key.end()
        elif index := _INDEX.match(text, position):
            path.append(int(index.group(1)))
            position = index.end()
        elif quoted := _QUOTED.match(text, position):
            path.append(quoted.group(1) if quoted.group(1) is not None else quoted.group(2))
            position = quoted.end()
        else:
            raise ReferenceSyntaxError(
                f"{text!r}: unexpected {text[position:]!r} at character {position + 1}; "
                'a reference continues only with .key, [index] or ["key"] '
                '(a reference must be the whole string; write "$$" for a literal "$")'
            )
    return Reference(kind, name, tuple(path), text)
