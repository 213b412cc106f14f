r"""The AVSD authors' `partial` view, for `verl-avsd prep math --partial-view authors`.

Off by default: this project's `partial` (math_views.py) is the first n // 2 reasoning steps
before the answer shows, and a row with fewer than 2 such steps has no `partial` view (the
trainer masks it). The authors' released code (duykhuongnguyen/AVSD) departs from that, so that
every row with a worked solution keeps all M = 3 views:

1. Remove the LAST closed `\boxed{...}` of the solution (only that one, and only that spelling;
   an answer written out before it, or an earlier box, stays; braces are counted, escaped or
   not), then strip. Nothing left: the view is the notice alone.
2. Split the rest into segments at the first level that gives at least 2: paragraphs (a blank
   line, `\n\s*\n`), else lines that open a step (a bullet `-`, `*`, `•` or a number `1.` / `1)`
   after optional indentation; text before the first such line is a segment too), else
   sentences (after `.`, `!` or `?` followed by whitespace). Segments are stripped; empty ones
   are dropped.
3. With n >= 2 segments keep the first ceil(n / 2), never all n (so at most n - 1), joined as
   split (blank line, newline, space).
4. With one segment (a single sentence), keep a character prefix instead: the first
   ceil(len / 2) characters, at most len - 1, trailing whitespace removed (at least 1 character).
5. Append a blank line and the notice `PARTIAL_NOTICE`, so the teacher knows the view stops early.

Step 1 differs from ours on purpose in their code: the partial view may state the final answer
(e.g. "so x = 5" before the box), which ours never does (math_views.reveals_answer).
"""

from __future__ import annotations

import math
import re

# The authors' notice, verbatim (duykhuongnguyen/AVSD@3233099, src/avsd/math/privileged_views.py).
PARTIAL_NOTICE = "[The reference above is incomplete and may omit later steps or the final answer.]"
KEEP_FRACTION = 0.5  # their --partial_solution_ratio in both released math scripts

_BOX = "\\boxed{"  # only this spelling, as in their code (not \\fbox, `\\boxed {` or `\\boxed 5`)
_BLANK_LINE = re.compile(r"\n\s*\n+")
_STEP_OPENING = re.compile(r"\s*(?:[-*•]|\d+[.)])")  # matched at the start of a line
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _box_end(text: str, start: int) -> int | None:
    """End of the `\\boxed{...}` at `start` (every brace counts, as in their code), or None if unclosed."""
    depth = 0
    for i in range(start + len(_BOX), len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth < 0:
            return i + 1
    return None


def without_last_box(solution: str) -> str:
    """The solution, stripped, with its last closed `\\boxed{...}` cut out (an unclosed one is
    passed over for the one before it)."""
    start = solution.rfind(_BOX)
    while start != -1:
        end = _box_end(solution, start)
        if end is not None:
            return (solution[:start] + solution[end:]).strip()
        start = solution.rfind(_BOX, 0, start)
    return solution.strip()


def _step_segments(text: str) -> list[str]:
    """Segments that each start at a line opening a step (a bullet or a number)."""
    segments: list[list[str]] = [[]]
    for line in text.split("\n"):
        if _STEP_OPENING.match(line) and segments[-1]:
            segments.append([])
        segments[-1].append(line)
    return ["\n".join(lines) for lines in segments]


# (how to split, how to join back), coarse to fine
_LEVELS = (
    (_BLANK_LINE.split, "\n\n"),
    (_step_segments, "\n"),
    (_SENTENCE_END.split, " "),
)


def authors_segments(text: str) -> tuple[list[str], str]:
    """(segments, joiner) at the first level with at least 2 segments; ([text], "") if none has."""
    for split, joiner in _LEVELS:
        segments = [piece.strip() for piece in split(text) if piece.strip()]
        if len(segments) >= 2:
            return segments, joiner
    return [text], ""


def authors_partial_view(solution: str) -> str:
    """The authors' partial view of a worked solution (never None: see the module docstring)."""
    text = without_last_box(solution)
    if not text:
        return PARTIAL_NOTICE
    segments, joiner = authors_segments(text)
    n = len(segments)
    if n >= 2:
        kept = joiner.join(segments[: min(math.ceil(KEEP_FRACTION * n), n - 1)])
    else:  # one segment: a character prefix, so the row still has a partial view
        cut = max(1, math.ceil(KEEP_FRACTION * len(text)))
        if len(text) > 1:
            cut = min(cut, len(text) - 1)
        kept = text[:cut].rstrip() or text[:1]
    return f"{kept}\n\n{PARTIAL_NOTICE}"
