"""The one error type data prep raises for bad input, and the message format it uses.

Every problem with an input file is reported as `FILE: row N: field 'F': what is wrong`, so a
user can open the file at that row and fix it. `row_name` is the one way the project names a row,
in a file data prep reads and in a training or eval batch alike. The CLI prints the message and exits non-zero.
Messages are made printable (`printable`): a file name, key or value may hold bytes that are
not UTF-8 (kept by `surrogateescape` as lone surrogates), which no terminal or UTF-8 file can
show; they are written as `\\udcff` escapes instead of crashing the print or the manifest.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


def escape_surrogates(text: str) -> str:
    """`text` with lone surrogates as `\\udcXX` escapes, so it can be printed or written as UTF-8."""
    return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", str(text))


def printable(text: str) -> str:
    """`text` with lone surrogates escaped and line breaks as '; ' (one line per message)."""
    return _LINE_BREAKS.sub("; ", escape_surrogates(text).strip())


def row_name(
    extra_info=None,
    batch_position: int | None = None,
    *,
    data_source: str | None = None,
    row: int | None = None,
    line: int | None = None,
) -> str:
    """How every message names a row, from what is known of it.

    A row of a file data prep reads: `row N (line L)` (0-based row, 1-based JSONL line; the
    file name and field around it are `BadInputError`'s). A row in a training or eval batch, from
    what `verl-avsd prep` stored in its extra_info (`index`: its row in its file; `split`;
    `problem_id`): `DATA_SOURCE SPLIT row INDEX (problem ID) [batch position B]`, each part only
    when known; `batch position B` alone for a row with no index, `row ?` when nothing is known.
    `row_name({"index": 7, "split": "train"}, 3) == "train row 7 [batch position 3]"`.
    """
    info = extra_info if isinstance(extra_info, dict) else {}
    if row is None:
        row = info.get("index")
    parts = [str(part) for part in (data_source, info.get("split")) if part]
    if row is not None or batch_position is None:
        parts.append(f"row {'?' if row is None else row}" + (f" (line {line})" if line is not None else ""))
    if info.get("problem_id"):
        parts.append(f"(problem {info['problem_id']})")
    if batch_position is not None:
        parts.append(f"[batch position {batch_position}]" if parts else f"batch position {batch_position}")
    return " ".join(parts)


class BadInputError(ValueError):
    """An input file, row or field that data prep cannot use.

    `row` is the 0-based record index in the file (for JSONL, `line` is the 1-based line
    number as well); `field` is the column name. Either may be None when the problem is with
    the whole file (unreadable, a missing column) or the whole row (not a JSON object).
    """

    def __init__(
        self,
        file: str,
        problem: str,
        *,
        row: int | None = None,
        field: str | None = None,
        line: int | None = None,
    ):
        self.file = str(file)
        self.problem = problem
        self.row = row
        self.field = field
        self.line = line
        super().__init__(self.format())

    def format(self) -> str:
        where = [self.file]
        if self.row is not None:
            where.append(row_name(row=self.row, line=self.line))
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return printable(": ".join(where) + ": " + self.problem)
