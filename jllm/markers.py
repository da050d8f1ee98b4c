"""Markers in text that streams in: the earliest of several in a text, and how much of a text's end may still begin
one (held back until the next delta tells). The reasoning formats and gpt-oss's harmony messages read with them.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations


def first_marker(text: str, markers: tuple[str, ...]) -> tuple[int, str] | None:
    """The earliest of ``markers`` in ``text``: (where, which)."""
    hits = [(at, m) for m in markers if (at := text.find(m)) >= 0]
    return min(hits) if hits else None


def held_back(text: str, markers: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` may begin one of ``markers`` (held back until they tell)."""
    for size in range(min(len(text), max(len(m) for m in markers) - 1), 0, -1):
        if any(m.startswith(text[-size:]) for m in markers):
            return size
    return 0
