r"""Finding `\boxed{...}` answers in worked solutions.

Rules (the README repeats them):
- A box is `\boxed{...}` or `\fbox{...}` (optionally with spaces before the brace), or the
  brace-less form `\boxed 5`, whose argument runs to the next whitespace or `$`.
- The argument's braces must balance. Escaped braces `\{` and `\}` are text, not grouping, and a
  backslash always takes the next character with it (so `\\{` is a line break and then a group).
- The final answer is the content of the LAST box in the text, stripped. If that last box
  never closes, the answer is not found (reason `unbalanced_boxed`) rather than falling back to
  an earlier box, which would be a different (intermediate) result.
- `\boxed{}` with nothing inside gives reason `empty_boxed_answer`; no box at all gives
  `no_boxed_answer`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# `\boxed` or `\fbox` not followed by another letter (so `\boxedanswer` is some other macro).
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")

NO_BOXED_ANSWER = "no_boxed_answer"
UNBALANCED_BOXED = "unbalanced_boxed"
EMPTY_BOXED_ANSWER = "empty_boxed_answer"


@dataclass(frozen=True)
class Box:
    """One box in a text: `text[start:end]` is the whole `\\boxed{...}`; `content` is inside it.

    `closed` is False for a box whose braces never balance (then `end` is len(text)).
    """

    start: int
    end: int
    content: str
    closed: bool


def _closing_brace(text: str, open_at: int) -> int | None:
    """Index of the brace that closes the one at `open_at`, or None if it never closes."""
    depth = 0
    i = open_at
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # a backslash escapes whatever follows: \{ \} \\ are not grouping braces
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def find_boxes(text: str) -> list[Box]:
    """All boxes in `text`, in order. A box nested inside another is not listed separately."""
    boxes: list[Box] = []
    search_from = 0
    while True:
        match = _BOX_COMMAND.search(text, search_from)
        if match is None:
            return boxes
        after = match.end()
        while after < len(text) and text[after] in " \t":
            after += 1
        if after < len(text) and text[after] == "{":
            close = _closing_brace(text, after)
            if close is None:
                boxes.append(Box(match.start(), len(text), text[after + 1 :], closed=False))
                return boxes
            boxes.append(Box(match.start(), close + 1, text[after + 1 : close], closed=True))
            search_from = close + 1
        elif after > match.end() and after < len(text):
            # brace-less form `\boxed 5`: the argument runs to whitespace or `$`
            stop = re.compile(r"[\s$]").search(text, after)
            end = stop.start() if stop else len(text)
            boxes.append(Box(match.start(), end, text[after:end], closed=True))
            search_from = end
        else:
            search_from = match.end()  # `\boxed` with no argument: not an answer


def last_boxed_answer(text: str) -> tuple[str | None, str | None]:
    """(answer, None) from the last box, or (None, reason) when no usable answer exists."""
    boxes = find_boxes(text)
    if not boxes:
        return None, NO_BOXED_ANSWER
    last = boxes[-1]
    if not last.closed:
        return None, UNBALANCED_BOXED
    answer = last.content.strip()
    if not answer:
        return None, EMPTY_BOXED_ANSWER
    return answer, None


def contains_box(text: str) -> bool:
    return _BOX_COMMAND.search(text) is not None
