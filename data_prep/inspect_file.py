"""`verl-avsd prep inspect FILE`: a column summary of a prepared parquet file and a few rows with their views.

The summary streams the file (any size); it counts data sources, abilities, splits, views per
name, and rows that break the row contract (with the first few reasons).
"""

from __future__ import annotations

import os
from collections import Counter

import pyarrow.parquet as pq

from verl_avsd.data_prep.contract import contract_problems
from verl_avsd.data_prep.errors import BadInputError

MAX_LISTED_PROBLEMS = 5


def _clip(text: str, max_chars: int) -> str:
    text = str(text)
    return text if len(text) <= max_chars else text[:max_chars] + f" ... [{len(text) - max_chars} more chars]"


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in str(text).splitlines() or [""])


def _struct(value) -> dict:
    """`value` if it is a struct, else {} (a file written by another tool may hold anything)."""
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    return value if isinstance(value, list) else []


def format_row(row: dict, number: int, max_chars: int) -> str:
    extra_info = _struct(row.get("extra_info"))
    lines = [f"--- row {number} ---"]
    lines.append(
        f"data_source: {row.get('data_source')}   ability: {row.get('ability')}   problem_id: {extra_info.get('problem_id')}"
    )
    if not isinstance(row.get("prompt"), list):
        lines.append("prompt (not a list of messages): " + _clip(row.get("prompt"), max_chars))
    for message in _list(row.get("prompt")):
        message = message if isinstance(message, dict) else {"role": "?", "content": message}
        lines.append(f"prompt [{message.get('role')}]:")
        lines.append(_indent(_clip(message.get("content", ""), max_chars)))
    ground_truth = _struct(row.get("reward_model")).get("ground_truth", row.get("reward_model"))
    lines.append("ground_truth: " + _clip(ground_truth, max_chars))
    if row.get("extra_info") is not None and not isinstance(row.get("extra_info"), dict):
        lines.append("extra_info (not a struct): " + _clip(row.get("extra_info"), max_chars))
    for key in ("public_tests", "time_limit_s", "memory_mb", "language"):
        if extra_info.get(key) is not None:
            lines.append(f"{key}: {_clip(extra_info[key], max_chars)}")
    views = _list(extra_info.get("views"))
    if not views:
        lines.append("views: none")
    for view in views:
        view = view if isinstance(view, dict) else {"name": "?", "text": str(view)}
        text = view.get("text") if isinstance(view.get("text"), str) else str(view.get("text"))
        lines.append(f"view {view.get('name')} ({len(text)} chars):")
        lines.append(_indent(_clip(text, max_chars)))
    return "\n".join(lines)


def _key(value):
    """A value to count by (lists and structs are unhashable)."""
    return value if value is None or isinstance(value, str | int | float) else str(value)


def _batches(parquet: pq.ParquetFile, path: str):
    """The file's record batches; a corrupt page is a BadInputError naming the file."""
    batches = parquet.iter_batches(batch_size=1024)
    first_row = 0
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:  # noqa: BLE001  pyarrow raises OSError, ArrowInvalid, ... for corrupt data
            raise BadInputError(path, f"cannot read rows from row {first_row} on (corrupt file?): {exc}") from None
        if batch is None:
            return
        yield batch
        first_row += batch.num_rows


def inspect_file(path: str, rows_to_show: int = 3, max_chars: int = 400) -> str:
    """The text `prep inspect` prints."""
    if rows_to_show < 0:
        raise ValueError(f"--rows must be at least 0, got {rows_to_show}")
    if max_chars < 1:
        raise ValueError(f"--max-chars must be at least 1, got {max_chars}")
    if os.path.isdir(path):
        raise BadInputError(path, "is a folder, not a file")
    if not os.path.isfile(path):
        raise BadInputError(path, "no such file")
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001  pyarrow raises several types for a non-parquet file
        raise BadInputError(path, f"cannot read as parquet: {exc}") from None
    schema = parquet.schema_arrow
    lines = [f"{path}: {parquet.metadata.num_rows} rows, {len(schema)} columns"]
    lines += [f"  {field.name}: {field.type}" for field in schema]

    counts = {"data_source": Counter(), "ability": Counter(), "split": Counter(), "view": Counter()}
    problem_rows: list[str] = []
    rows_with_problems = 0
    shown: list[str] = []
    row_number = 0
    for batch in _batches(parquet, path):
        for row in batch.to_pylist():
            extra_info = _struct(row.get("extra_info"))
            counts["data_source"][_key(row.get("data_source"))] += 1
            counts["ability"][_key(row.get("ability"))] += 1
            counts["split"][_key(extra_info.get("split"))] += 1
            counts["view"].update(_key(_struct(view).get("name")) for view in _list(extra_info.get("views")))
            problems = contract_problems(row)
            if problems:
                rows_with_problems += 1
                if len(problem_rows) < MAX_LISTED_PROBLEMS:
                    problem_rows.append(f"  row {row_number}: " + "; ".join(problems))
            if len(shown) < rows_to_show:
                shown.append(format_row(row, row_number, max_chars))
            row_number += 1

    for name, title in (
        ("data_source", "data sources"),
        ("ability", "abilities"),
        ("split", "splits"),
        ("view", "views"),
    ):
        summary = ", ".join(f"{key} {count}" for key, count in counts[name].most_common())
        lines.append(f"{title}: {summary or 'none'}")
    lines.append(f"rows breaking the row contract: {rows_with_problems}")
    lines += problem_rows
    return "\n".join(lines + shown)
