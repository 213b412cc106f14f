"""Row filters users expect: duplicates, evaluation overlap, and length in tokens.

- Duplicates: two training problems are the same when their texts are equal after
  normalising whitespace (runs of whitespace become one space, ends stripped); the first one
  read is kept.
- Evaluation overlap (decontamination): a training problem is removed when it equals an
  evaluation problem exactly, or after normalising whitespace; the two kinds are counted apart.
- Length: the number of tokens of a text under a local Hugging Face tokenizer (no special
  tokens added). The problem is measured as the student's user message (instructions
  included); each view is measured on its own text.
"""

from __future__ import annotations

import os
import re

EVAL_OVERLAP_EXACT = "eval_overlap_exact"
EVAL_OVERLAP_WHITESPACE = "eval_overlap_whitespace"


def normalize_whitespace(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


class Deduplicator:
    """Remembers problems already kept; `seen_before(problem)` is True for a repeat."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def seen_before(self, problem: str) -> bool:
        key = normalize_whitespace(problem)
        if key in self._seen:
            return True
        self._seen.add(key)
        return False


class EvalOverlap:
    """The problems of the evaluation sets, to find training problems that repeat one."""

    def __init__(self, eval_problems: list[str]):
        self._exact = set(eval_problems)
        self._normalized = {normalize_whitespace(problem) for problem in eval_problems}

    def __len__(self) -> int:
        return len(self._exact)

    def match(self, problem: str) -> str | None:
        """EVAL_OVERLAP_EXACT, EVAL_OVERLAP_WHITESPACE, or None when the problem is not an eval one."""
        if problem in self._exact:
            return EVAL_OVERLAP_EXACT
        if normalize_whitespace(problem) in self._normalized:
            return EVAL_OVERLAP_WHITESPACE
        return None


class TokenCounter:
    """Counts tokens with a tokenizer loaded from a local folder (never from a hub)."""

    def __init__(self, tokenizer_path: str):
        if not os.path.isdir(tokenizer_path):
            raise FileNotFoundError(f"--tokenizer {tokenizer_path}: not a local tokenizer folder")
        from transformers import AutoTokenizer  # imported here: only the length filters need it

        self.path = tokenizer_path
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
        except Exception as exc:  # noqa: BLE001  transformers raises OSError, ValueError, ImportError, ...
            message = f"--tokenizer {tokenizer_path}: cannot load a tokenizer from this folder ({exc})"
            raise ValueError(message) from None

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class LengthFilter:
    """Which length limit (if any) a row breaks: `problem_too_long` or `view_too_long:<name>`."""

    def __init__(self, counter: TokenCounter | None, max_problem_tokens: int | None, max_view_tokens: int | None):
        if counter is None and (max_problem_tokens or max_view_tokens):
            raise ValueError("--max-problem-tokens/--max-view-tokens need --tokenizer PATH (a local tokenizer folder)")
        self.counter = counter
        self.max_problem_tokens = max_problem_tokens
        self.max_view_tokens = max_view_tokens

    def reason(self, prompt_text: str, views: list[dict]) -> str | None:
        if self.counter is None:
            return None
        if self.max_problem_tokens and self.counter.count(prompt_text) > self.max_problem_tokens:
            return "problem_too_long"
        if self.max_view_tokens:
            for view in views:
                if self.counter.count(view["text"]) > self.max_view_tokens:
                    return f"view_too_long:{view['name']}"
        return None


class TrainingFilters:
    """The filters of a training row, in the order they apply: repeats, evaluation overlap, length.

    Built from a dataset command's options (`tokenizer`, `max_problem_tokens`, `max_view_tokens`,
    `dedupe`, `decontaminate`) before any input is read, so bad length options fail first; the
    evaluation problems are given once the evaluation sets are read (`decontaminate_against`).
    """

    def __init__(self, options):
        counter = TokenCounter(options.tokenizer) if options.tokenizer else None
        self.length_filter = LengthFilter(counter, options.max_problem_tokens, options.max_view_tokens)
        self.deduplicator = Deduplicator() if options.dedupe else None
        self.decontaminate = options.decontaminate
        self.overlap: EvalOverlap | None = None

    def decontaminate_against(self, eval_problems: list[str]) -> None:
        self.overlap = EvalOverlap(eval_problems) if self.decontaminate else None

    def reason(self, dedupe_text: str, eval_texts: tuple[str, ...], prompt_text: str, views: list[dict]) -> str | None:
        """Why the row is filtered (`duplicate_problem`, an eval overlap kind, a length reason), or None.

        `dedupe_text` is remembered as seen when it is new; `eval_texts` are matched in order.
        """
        if self.deduplicator is not None and self.deduplicator.seen_before(dedupe_text):
            return "duplicate_problem"
        if self.overlap is not None:
            for text in eval_texts:
                kind = self.overlap.match(text)
                if kind is not None:
                    return kind
        return self.length_filter.reason(prompt_text, views)
