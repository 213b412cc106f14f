"""Benchmark files for `verl-avsd eval`: the rows of a verl dataset file, checked, and who scores them.

One job: turn a benchmark file (rows as `verl-avsd prep` writes them) into `EvalRow`s, each with
the scorer its data_source routes to (`SCORERS`: math-verify for `math/*`, the sandboxed hidden
tests for `code/*`, the toy reward for `avsd_toy/arith`). A bad row is a BadInputError naming the
file, row and field, before any generation runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from verl_avsd import rewards
from verl_avsd.data_prep.errors import BadInputError
from verl_avsd.data_prep.records import InputFile
from verl_avsd.sandbox.judge import parse_tests
from verl_avsd.toy import task as toy_task

# -- scoring: one small table, routed by data_source ---------------------------------------------


def _toy_score(data_source, solution_str, ground_truth, extra_info=None) -> dict:
    score = toy_task.compute_score(data_source, solution_str, ground_truth, extra_info)
    return {"score": score, "acc": score, "pass_rate": score}


# (data_source, or a prefix ending in "/"; kind of benchmark; verl-style compute_score -> dict with acc, pass_rate)
SCORERS: tuple[tuple[str, str, Callable[..., dict]], ...] = (
    ("math/", "math", rewards.compute_score),
    ("code/", "code", rewards.compute_score),
    (toy_task.DATA_SOURCE, "toy", _toy_score),
)
KNOWN_DATA_SOURCES = ", ".join(name + "<name>" if name.endswith("/") else name for name, _, _ in SCORERS)


def scorer_of(data_source: str) -> tuple[str, Callable[..., dict]] | None:
    """(kind, compute_score) for this data_source, or None when no scorer knows it."""
    for name, kind, score in SCORERS:
        if data_source == name or (name.endswith("/") and data_source.startswith(name)):
            return kind, score
    return None


# -- benchmark rows -------------------------------------------------------------------------------


@dataclass
class EvalRow:
    """One problem of a benchmark file, checked: what the student reads and what scores it."""

    file: str
    row: int  # 0-based row number in the file
    messages: list[dict]  # the row's `prompt`: the student's chat messages
    data_source: str
    kind: str  # "math", "code" or "toy" (SCORERS)
    ground_truth: str
    extra_info: dict


EVAL_COLUMNS = ("prompt", "data_source", "reward_model", "extra_info")  # all a benchmark row needs


def read_benchmark(path: str, limit: int | None = None) -> list[EvalRow]:
    """The first `limit` rows of a verl dataset file (parquet, or JSON/JSONL with the same fields);
    a bad row is a BadInputError naming the file, row and field."""
    rows = []
    for record in InputFile(path, columns=list(EVAL_COLUMNS)).records():
        if limit is not None and len(rows) >= limit:
            break
        if record.unreadable is not None:
            raise record.unreadable
        rows.append(_eval_row(path, record.row, record.data))
    if not rows:
        raise BadInputError(path, "has no rows")
    return rows


def _eval_row(path: str, i: int, record: dict) -> EvalRow:
    def bad(field_name: str, problem: str) -> BadInputError:
        return BadInputError(path, problem, row=i, field=field_name)

    messages = record.get("prompt")
    if messages is None:
        present = ", ".join(sorted(key for key, value in record.items() if value is not None))
        raise bad("prompt", f"missing (the row has: {present})")
    if not isinstance(messages, list) or not messages:
        raise bad("prompt", f"expected a non-empty list of chat messages, got {type(messages).__name__}")
    for m, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad(f"prompt[{m}]", "expected a chat message {role, content}")
        if not isinstance(message.get("content"), str):
            raise bad(f"prompt[{m}].content", f"expected text, got {type(message.get('content')).__name__}")
    reward_model = record.get("reward_model")
    ground_truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    if ground_truth is None:
        raise bad("reward_model.ground_truth", "missing: no answer to score against")
    data_source = record.get("data_source")
    if not isinstance(data_source, str) or not data_source:
        raise bad("data_source", f"missing; known data sources: {KNOWN_DATA_SOURCES}")
    found = scorer_of(data_source)
    if found is None:
        raise bad("data_source", f"unknown data_source {data_source!r}; known data sources: {KNOWN_DATA_SOURCES}")
    kind = found[0]
    if kind == "code":  # malformed hidden tests fail here, before hours of generation
        parse_tests(ground_truth, where=f"{path}: row {i}: field 'reward_model.ground_truth'")
    extra_info = record.get("extra_info")
    extra_info = extra_info if isinstance(extra_info, dict) else {}
    return EvalRow(path, i, messages, data_source, kind, str(ground_truth), extra_info)


def benchmark_name(path: str) -> str:
    return Path(path).name.split(".")[0]
