"""What a run resumed from a checkpoint keeps of the run that was killed: every step exactly once.

A run killed (kill -9, OOM, node loss) after its step-K checkpoint may have logged and dumped
steps K+1.. before it died. The resumed run starts at step K+1 again, so:

- verl's file logger (`trainer.logger=[...,file]`, `verl.utils.tracking.FileLogger`) opens its
  file with "wb": resuming erased steps 1..K of the metrics. `ResumableFileLogger` keeps the lines
  of steps <= K (their values are the ones the checkpointed weights came from) and drops those of
  steps > K, which the resumed run logs again; then it appends.
- `AvsdTrainer._dump_rollouts` appends to rollouts_step{N}.jsonl (a step may dump several
  mini-batches): the interrupted step's rows were written twice. `drop_dumps_after` removes the
  dumps of steps > K before the resumed run writes them again.

A fresh run (K = 0) keeps nothing, as verl's own logger does. The trainer installs both
(`AvsdTrainer.fit`); nothing in verl is changed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from verl.utils.tracking import FileLogger

from verl_avsd.rollout_dumps import drop_dumps_after

# drop_dumps_after lives with the dump format (rollout_dumps.py); this is its documented name too
__all__ = ["ResumableFileLogger", "drop_dumps_after", "keep_metric_lines", "metrics_file_path"]


def metrics_file_path(project_name: str, experiment_name: str) -> str:
    """Where verl's FileLogger writes: $VERL_FILE_LOGGER_PATH, else
    $VERL_FILE_LOGGER_ROOT (default .)/PROJECT/EXPERIMENT.jsonl (verl/utils/tracking.py)."""
    path = os.getenv("VERL_FILE_LOGGER_PATH")
    if path is None:
        directory = os.path.join(os.path.expanduser(os.getenv("VERL_FILE_LOGGER_ROOT", ".")), project_name)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{experiment_name}.jsonl")
    return path


def _line_step(line: bytes):
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def keep_metric_lines(path: str | Path, through_step: int) -> tuple[int, int]:
    """Rewrite the metrics file with only its lines of steps <= `through_step` (atomically: a kill
    during the rewrite leaves the old file). A line without a readable step (the half-written last
    line of a killed run) is dropped. Returns (lines kept, lines dropped)."""
    path = Path(path)
    if not path.is_file():
        return 0, 0
    kept, dropped = [], 0
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        step = _line_step(line)
        if step is not None and step <= through_step:
            kept.append(line + b"\n")
        else:
            dropped += 1
    temporary = path.with_name(path.name + ".resume-tmp")
    temporary.write_bytes(b"".join(kept))
    os.replace(temporary, path)
    return len(kept), dropped


class ResumableFileLogger(FileLogger):
    """verl's FileLogger (same path, same line format), but a resumed run keeps the metrics of the
    steps it resumed past instead of truncating the file."""

    def __init__(self, project_name: str, experiment_name: str, resumed_step: int):
        # not super().__init__: it opens the file with "wb"
        self.project_name = project_name
        self.experiment_name = experiment_name
        self.filepath = metrics_file_path(project_name, experiment_name)
        kept, dropped = keep_metric_lines(self.filepath, resumed_step)
        if resumed_step > 0:
            print(
                f"[avsd] resumed at step {resumed_step}: {self.filepath} keeps {kept} metric lines of steps <= "
                f"{resumed_step}, drops {dropped} of later steps (logged again by this run)",
                file=sys.stderr,
            )
        self.fp = open(self.filepath, "ab", buffering=0)
