"""Epistemic verbalization of rollouts: how often responses say "wait", "hmm", "perhaps", ...

Self-distillation is reported to suppress these markers of uncertainty and self-checking, and
with them long reasoning. The trainer logs, every step and for every estimator (GRPO too, so
runs compare):

    epistemic/markers_per_1k_tokens          markers per 1000 response tokens, all rollouts
    epistemic/markers_per_1k_tokens_correct  the same over rollouts with reward >= wrong_below
    epistemic/markers_per_1k_tokens_wrong    ... and over rollouts with reward < wrong_below
    epistemic/response_length_mean           response tokens per rollout

A rate pools its rollouts (total markers / total tokens * 1000), so long responses weigh by their
length; it is NaN (not logged as a number) when no rollout falls in its group, never 0.

Matching (`algorithm.avsd.epistemic_markers`, a list of words and phrases): case-insensitive,
whole words only (no letter, digit or underscore right before or after a match, so "wait" is not
found in "await" or "waiting"), a space in a phrase matches any run of whitespace, an apostrophe
matches ' or its typographic form. Scanning left to right, the longest marker that matches at a
position is counted once and the scan continues after it, so "let me double-check" is one marker
even when "double-check" is one too, and a text's count never depends on the list's order.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

METRIC_PREFIX = "epistemic/"


def normal_form(marker: str) -> str:
    """How markers compare: lower case, single spaces, a plain apostrophe."""
    return " ".join(marker.replace("\u2019", "'").split()).lower()


def _phrase_pattern(marker: str) -> str:
    """The regex of one marker: literal text, flexible whitespace and apostrophes."""
    words = [re.escape(w).replace("'", "['\u2019]") for w in normal_form(marker).split()]
    return r"\s+".join(words)


class EpistemicMarkers:
    """A compiled marker list. `count(text)` is the number of markers in a text."""

    def __init__(self, markers: Sequence[str]):
        self.markers = [m.strip() for m in markers]
        if not self.markers or any(not m for m in self.markers):
            raise ValueError(f"epistemic markers must be a non-empty list of non-empty strings, got {list(markers)!r:.120}")
        # longest first: at one position, the regex alternation takes the first that matches
        self._canonical = {normal_form(m): m for m in reversed(self.markers)}  # the first spelling wins
        ordered = sorted(self._canonical, key=lambda m: (-len(m), m))
        alternation = "|".join(_phrase_pattern(m) for m in ordered)
        self._regex = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)

    def count(self, text: str) -> int:
        return sum(1 for _ in self._regex.finditer(text))

    def counts(self, text: str) -> Counter:
        """{marker: occurrences} (as the list spells it), for looking at which markers a text uses."""
        found = Counter()
        for match in self._regex.finditer(text):
            found[self._canonical[normal_form(match.group(0))]] += 1
        return found


def epistemic_metrics(
    texts: Sequence[str],  # [B] decoded responses
    response_tokens: Sequence[int],  # [B] response tokens of each (response_mask sum)
    rewards: Sequence[float],  # [B] sequence reward
    markers: EpistemicMarkers | Sequence[str],
    wrong_below: float,
) -> dict[str, float]:
    """The `epistemic/*` metrics of a batch of rollouts (the real ones: leave padding rows out)."""
    if not len(texts) == len(response_tokens) == len(rewards):
        raise ValueError(f"epistemic_metrics: {len(texts)} texts, {len(response_tokens)} lengths, {len(rewards)} rewards")
    markers = markers if isinstance(markers, EpistemicMarkers) else EpistemicMarkers(markers)
    found = [markers.count(t) for t in texts]
    tokens = [int(n) for n in response_tokens]

    def per_1k(rows: list[int]) -> float:
        total = sum(tokens[i] for i in rows)
        return 1000.0 * sum(found[i] for i in rows) / total if total else math.nan

    everyone = list(range(len(texts)))
    correct = [i for i in everyone if rewards[i] >= wrong_below]
    wrong = [i for i in everyone if not rewards[i] >= wrong_below]  # a NaN reward counts as wrong
    return {
        f"{METRIC_PREFIX}markers_per_1k_tokens": per_1k(everyone),
        f"{METRIC_PREFIX}markers_per_1k_tokens_correct": per_1k(correct),
        f"{METRIC_PREFIX}markers_per_1k_tokens_wrong": per_1k(wrong),
        f"{METRIC_PREFIX}response_length_mean": sum(tokens) / len(tokens) if tokens else math.nan,
    }
