r"""The three math views of a worked solution: `full`, `partial` and `answer`.

- `full`: the whole worked solution, unchanged (stripped).
- `answer`: only the final answer (from an answer column, else the last `\boxed{}`).
- `partial`: the first half of the solution's reasoning steps, with the final answer removed.

Segmentation rule for `partial` (the README repeats it):
1. Split the solution into steps at the coarsest level that yields at least 2 reasoning steps:
   paragraphs (blank-line separated), else non-empty lines, else sentences (split after
   `.`, `!` or `?` followed by whitespace).
2. A step "reveals the answer" if it contains a box (`\boxed`/`\fbox`), or if the final answer
   has at least 3 non-space characters and appears in the step (whitespace ignored). Shorter
   answers such as `2` occur by chance in any text, so they are not searched for.
3. The reasoning steps are the steps before the first step that reveals the answer.
4. `partial` is the first n // 2 of the n reasoning steps, joined as they were separated. With
   fewer than 2 reasoning steps there is no half to give, and the row has no `partial` view
   (the trainer masks a missing view).
So a partial view never contains a box, and never contains a final answer of 3+ characters.

`--partial-view authors` builds `partial` by the AVSD authors' rule instead (authors_partial.py):
ceil(n/2) segments with the last box removed, a character prefix when there is one segment, and
a notice that the view is incomplete, so every row with a solution keeps all three views.
"""

from __future__ import annotations

import re

from verl_avsd.data_prep.authors_partial import authors_partial_view
from verl_avsd.data_prep.boxed import contains_box

MATH_VIEW_NAMES = ("full", "partial", "answer")
# How `partial` is built: "ours" (above; the row has no partial view when it cannot be made) or
# "authors" (the AVSD authors' released code; always made from a non-empty solution).
PARTIAL_VIEW_RULES = ("ours", "authors")
MIN_SEARCHED_ANSWER_CHARS = 3

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")

# (how to split, how to join back) from coarse to fine
_LEVELS = (
    (lambda text: _PARAGRAPH_BREAK.split(text), "\n\n"),
    (lambda text: text.split("\n"), "\n"),
    (lambda text: _SENTENCE_BREAK.split(text), " "),
)


def _without_space(text: str) -> str:
    return re.sub(r"\s+", "", text)


def reveals_answer(step: str, answer: str) -> bool:
    """True when a step shows a box, or the final answer itself (answers of 3+ characters)."""
    if contains_box(step):
        return True
    compact_answer = _without_space(answer)
    return len(compact_answer) >= MIN_SEARCHED_ANSWER_CHARS and compact_answer in _without_space(step)


def reasoning_steps(solution: str, answer: str) -> tuple[list[str], str]:
    """The reasoning steps (before the answer is revealed) and the separator to join them."""
    text = solution.replace("\r\n", "\n").strip()
    steps: list[str] = []
    joiner = "\n\n"
    for split, joiner in _LEVELS:
        pieces = [piece.strip() for piece in split(text) if piece.strip()]
        steps = []
        for piece in pieces:
            if reveals_answer(piece, answer):
                break
            steps.append(piece)
        if len(steps) >= 2:
            return steps, joiner
    return steps, joiner


def partial_view(solution: str, answer: str) -> str | None:
    """First half of the reasoning steps, or None when there are fewer than 2 of them."""
    steps, joiner = reasoning_steps(solution, answer)
    if len(steps) < 2:
        return None
    return joiner.join(steps[: len(steps) // 2])


def math_views(solution: str | None, answer: str, partial_rule: str = "ours") -> list[dict]:
    """Views in the contract order (full, partial, answer); views that cannot be built are absent.
    `partial_rule` is one of PARTIAL_VIEW_RULES."""
    if partial_rule not in PARTIAL_VIEW_RULES:
        raise ValueError(f"--partial-view must be one of {', '.join(PARTIAL_VIEW_RULES)}, got {partial_rule!r}")
    views = []
    if solution and solution.strip():
        views.append({"name": "full", "text": solution.strip()})
        partial = authors_partial_view(solution) if partial_rule == "authors" else partial_view(solution, answer)
        if partial is not None:
            views.append({"name": "partial", "text": partial})
    views.append({"name": "answer", "text": answer})
    return views
