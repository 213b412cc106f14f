"""Parsing JSON text from input files without letting a bad value escape as a traceback.

`parse_json` turns every way JSON text can be unusable into `JsonProblem` with a readable
reason, so the caller can name the file, row and field:
- syntax errors (`json.JSONDecodeError`);
- nesting too deep for Python's parser (`RecursionError`, e.g. 100 000 `[`);
- integers too long to convert (`ValueError`: over 4300 digits);
- a key repeated in one object: `json` would silently keep the last value, so a row
  `{"problem": "A", ..., "problem": "B"}` would be read as B without a word.
`NaN`, `Infinity` and `-Infinity` are accepted by the parser (real dumps contain them); the
typed accessors in `records.py` decide what they mean for each field.
"""

from __future__ import annotations

import json
from typing import Any


class JsonProblem(ValueError):
    """Why a JSON text cannot be used; `key` is set for a repeated key; `syntax` for a text that
    is not JSON at all (as opposed to JSON that cannot be used)."""

    def __init__(self, reason: str, key: str | None = None, *, syntax: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.key = key
        self.syntax = syntax


class _RepeatedKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return result


def parse_json(text: str) -> Any:
    """The value of a JSON text; raises `JsonProblem` for anything unusable (see the module doc)."""
    try:
        return json.loads(text, object_pairs_hook=_object_without_repeats)
    except json.JSONDecodeError as exc:
        raise JsonProblem(f"not valid JSON: {exc.msg} at character {exc.pos}", syntax=True) from None
    except _RepeatedKey as exc:
        reason = f"key {exc.key!r} appears twice in one JSON object (which value is meant?)"
        raise JsonProblem(reason, exc.key) from None
    except RecursionError:
        raise JsonProblem("JSON nested too deeply to read") from None
    except ValueError as exc:  # integers over sys.get_int_max_str_digits() digits
        raise JsonProblem(f"not usable JSON: {exc}") from None
