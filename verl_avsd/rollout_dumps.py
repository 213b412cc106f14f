"""The rollout-dump format in one place: `algorithm.avsd.dump_rollouts_dir/rollouts_step{N}.jsonl`,
one JSON object per rollout with its token-level signals.

Writer: `append_dump_rows` (the trainer, `AvsdTrainer._dump_rollouts`, builds the rows).
Resume: `drop_dumps_after` (a resumed run dumps the steps after its checkpoint again).
Readers: `dump_dir`, `dumped_steps`, `read_dump`, `check_dump_row`, `dump_tensors` (the report's
credit view and the toy study).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch

from verl_avsd.run_files import ReportError, Run, config_value

DUMP_FILE = re.compile(r"rollouts_step(\d+)\.jsonl")
DUMP_FIELDS = ("views", "reward", "response_ids", "response_mask", "student_logp", "view_logq", "view_mask")


def append_dump_rows(dump_dir: str | Path, step: int, rows: list[dict]) -> None:
    """Append rows to DUMP_DIR/rollouts_step{step}.jsonl (a step may dump several mini-batches)."""
    os.makedirs(dump_dir, exist_ok=True)
    with open(os.path.join(dump_dir, f"rollouts_step{step}.jsonl"), "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def drop_dumps_after(dump_dir: str | Path, step: int) -> list[int]:
    """Remove rollouts_step{N}.jsonl for N > step (the resumed run dumps those steps again).
    Returns the steps removed."""
    dump_dir = Path(dump_dir)
    removed = []
    if dump_dir.is_dir():
        for path in dump_dir.iterdir():
            match = DUMP_FILE.fullmatch(path.name)
            if match and int(match.group(1)) > step:
                path.unlink()
                removed.append(int(match.group(1)))
    return sorted(removed)


def dump_dir(run: Run) -> Path | None:
    """RUN_DIR/rollouts, else the run's algorithm.avsd.dump_rollouts_dir; None if neither exists."""
    configured = config_value(run.config, "algorithm.avsd.dump_rollouts_dir")
    for candidate in [run.run_dir / "rollouts"] + ([run.run_dir / configured] if configured else []):
        if candidate.is_dir() and any(candidate.glob("rollouts_step*.jsonl")):
            return candidate  # a relative dump_rollouts_dir is relative to the run (verl's cwd)
    return None


def dumped_steps(directory: Path) -> dict[int, Path]:
    """{step: rollouts_step{step}.jsonl} in step order."""
    files = {}
    for path in directory.glob("rollouts_step*.jsonl"):
        match = re.fullmatch(r"rollouts_step(\d+)\.jsonl", path.name)
        if match:
            files[int(match.group(1))] = path
    return dict(sorted(files.items()))


def read_dump(path: Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ReportError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
    return rows


def check_dump_row(row: dict, where: str) -> None:
    """The fields the credit view reads, with consistent lengths: M views, T positions."""
    missing = [f for f in DUMP_FIELDS if f not in row]
    if missing:
        raise ReportError(f"{where}: missing field(s) {missing} (AvsdTrainer._dump_rollouts writes {list(DUMP_FIELDS)})")
    T, M = len(row["response_mask"]), len(row["views"])
    if len(row["student_logp"]) != T:
        raise ReportError(f"{where}: field 'student_logp' has {len(row['student_logp'])} values, response_mask has {T}")
    if len(row["view_mask"]) != M or len(row["view_logq"]) != M:
        raise ReportError(
            f"{where}: fields 'view_logq' ({len(row['view_logq'])} rows) and 'view_mask' "
            f"({len(row['view_mask'])}) must have one entry per view in 'views' ({M})"
        )
    for m, values in enumerate(row["view_logq"]):
        if len(values) != T:
            raise ReportError(f"{where}: field 'view_logq' row {m} ({row['views'][m]}) has {len(values)} values, not {T}")
    last_position = max((t for t, on in enumerate(row["response_mask"]) if on), default=-1)
    if last_position >= len(row["response_ids"]):
        raise ReportError(
            f"{where}: field 'response_ids' has {len(row['response_ids'])} ids, "
            f"but response_mask reaches position {last_position}"
        )


def dump_tensors(rows: list[dict], dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """The estimator inputs of dumped rollouts (`AvsdTrainer._dump_rollouts` rows), right-padded to
    the longest: student_logp [B, T], view_logq [B, M, T] (a dumped None, non-finite, is NaN),
    view_mask [B, M], response_mask [B, T]; keyword arguments of `token_advantages`."""
    T = max(len(r["response_mask"]) for r in rows)

    def pad(values, fill=0.0):
        return list(values) + [fill] * (T - len(values))

    return dict(
        student_logp=torch.tensor([pad(r["student_logp"]) for r in rows], dtype=dtype),
        view_logq=torch.tensor(
            [[pad([math.nan if x is None else x for x in v]) for v in r["view_logq"]] for r in rows], dtype=dtype
        ),
        view_mask=torch.tensor([r["view_mask"] for r in rows], dtype=torch.bool),
        response_mask=torch.tensor([pad(r["response_mask"], 0) for r in rows], dtype=torch.bool),
    )
