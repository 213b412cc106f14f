"""Laying out the output folder: train/validation/eval parquet files and `manifest.json`.

Files: `train.parquet`, `validation.parquet` (a seeded random subset of the prepared rows) and
`eval_<name>.parquet` per evaluation set. Rows keep their input order inside each file;
`extra_info.index` is the row's position in its file and `extra_info.split` its split.
Every row is checked against the contract before it is written.

Safety of the folder (`check_output_folder`, run before any input is read):
- `--out` must be a folder this user can write (not a file, not under a file);
- no output may land on an input file: prepping `data/train.parquet --out data`, an output
  name that is a symlink or hard link to an input, or `--out` a symlink to the input's folder
  all stop the run before anything is read or written.
Every file is written to a temporary name and renamed into place, so a crash never leaves a
truncated parquet file or manifest, and a symlink at an output name is replaced, never
written through. Outputs of an earlier run into the same folder that this run does not write
(`validation.parquet` after `--val-size 0`, an eval set no longer given) are removed, so the
folder always matches its manifest.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import secrets
import tempfile
from collections.abc import Callable
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from verl_avsd.data_prep.contract import ROW_SCHEMA, contract_problems
from verl_avsd.data_prep.errors import printable
from verl_avsd.data_prep.records import file_sha256

MANIFEST_NAME = "manifest.json"
TRAIN_NAME, VALIDATION_NAME = "train.parquet", "validation.parquet"
# names this tool writes; only these are ever removed as stale (a manifest cannot name others)
_OUTPUT_NAME = re.compile(r"(train|validation|eval_[A-Za-z0-9_-]+)\.parquet")


class OutputFolderError(ValueError):
    """`--out` cannot be used: the message names the folder and what is wrong."""


def output_names(eval_names: list[str]) -> list[str]:
    return [TRAIN_NAME, VALIDATION_NAME, *(f"eval_{name}.parquet" for name in eval_names), MANIFEST_NAME]


def check_output_folder(out_dir: str, names: list[str], input_paths: list[str]) -> None:
    """Create `out_dir` and check it can take `names` without touching an input (see the module doc)."""
    if not out_dir or not out_dir.strip():
        raise OutputFolderError("--out: the output folder is an empty path")
    shown = printable(out_dir)
    folder = os.path.abspath(out_dir)
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise OutputFolderError(f"--out {shown}: is a file, not a folder")
    existing = folder
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputFolderError(f"--out {shown}: {printable(existing)} is a file, so it cannot hold a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".verl-avsd-prep-probe-")
        os.close(handle)
        os.remove(probe)
    except OSError as exc:
        raise OutputFolderError(f"--out {shown}: cannot write there ({exc.strerror or exc})") from None
    for name in names:
        target = os.path.join(folder, name)
        if os.path.isdir(target):
            raise OutputFolderError(f"--out {shown}: {name} is a folder; data prep writes a file there")
        for path in input_paths:
            if _same_file(target, path):
                raise OutputFolderError(
                    f"--out {shown}: writing {name} would overwrite the input file {printable(path)}; choose another --out"
                )


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    """`write(handle)` to a new temporary file, then rename it to `path`: readers see the old file or the
    whole new one. The temporary file is created exclusively under a random name, so nothing planted
    at that name (a symlink to another file) is ever written through."""
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        if os.path.lexists(temporary):
            os.remove(temporary)
        raise


def validation_count(val_size: float, total: int) -> int:
    """Rows to hold out: val_size < 1 is a fraction (at least 1 row when there are 2+), else a count."""
    if not (val_size >= 0 and math.isfinite(val_size)):
        raise ValueError(f"--val-size must be a finite number >= 0, got {val_size}")
    if val_size >= 1 and val_size != int(val_size):
        raise ValueError(f"--val-size above 1 must be a whole number of rows, got {val_size}")
    if total < 2 or val_size == 0:
        return 0
    if val_size < 1:
        return min(total - 1, max(1, round(val_size * total)))
    return min(total - 1, int(val_size))


def split_train_validation(rows: list[dict], val_size: float, seed: int) -> tuple[list[dict], list[dict]]:
    held_out = set(random.Random(seed).sample(range(len(rows)), validation_count(val_size, len(rows))))
    train = [row for i, row in enumerate(rows) if i not in held_out]
    validation = [row for i, row in enumerate(rows) if i in held_out]
    return train, validation


def write_rows(rows: list[dict], path: str, split: str) -> dict:
    """Write rows as one parquet file in the contract schema; returns its manifest entry."""
    for index, row in enumerate(rows):
        row["extra_info"]["index"] = index
        row["extra_info"]["split"] = split
        problems = contract_problems(row)
        if problems:  # a bug in data prep, not in the user's input
            raise AssertionError(f"{path}: row {index} breaks the row contract: {'; '.join(problems)}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
    write_atomically(path, lambda handle: pq.write_table(table, handle))
    return {"path": os.path.basename(path), "split": split, "rows": len(rows), "sha256": file_sha256(path)}


def previous_outputs(out_dir: str) -> set[str]:
    """Output file names an earlier run's manifest lists (only names this tool writes), plus train/validation."""
    names = {TRAIN_NAME, VALIDATION_NAME}
    try:
        with open(os.path.join(out_dir, MANIFEST_NAME), encoding="utf-8", errors="replace") as handle:
            manifest = json.load(handle)
        names |= {entry.get("path") for entry in manifest.get("outputs", []) if isinstance(entry, dict)}
    except (OSError, ValueError, AttributeError, TypeError):  # no manifest, or not one of ours
        pass
    return {name for name in names if isinstance(name, str) and _OUTPUT_NAME.fullmatch(name)}


def _same_file(path: str, other: str) -> bool:
    return os.path.realpath(path) == os.path.realpath(other) or (
        os.path.exists(path) and os.path.exists(other) and os.path.samefile(path, other)
    )


def remove_stale_outputs(out_dir: str, stale_candidates: set[str], written: set[str], inputs: list[str]) -> list[str]:
    """Remove earlier outputs this run did not rewrite, except files this run read; returns their names."""
    removed = []
    for name in sorted(stale_candidates - written):
        path = os.path.join(out_dir, name)
        if (os.path.islink(path) or os.path.isfile(path)) and not any(_same_file(path, other) for other in inputs):
            os.remove(path)
            removed.append(name)
    return removed


def write_manifest(out_dir: str, manifest: dict) -> str:
    """Write manifest.json atomically. Text that is not valid UTF-8 (a non-UTF-8 file name kept as
    lone surrogates) is written as `\\udcXX` JSON escapes, which JSON readers accept."""
    path = os.path.join(out_dir, MANIFEST_NAME)
    data = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8", errors="backslashreplace")

    write_atomically(path, lambda handle: handle.write(data))
    return path


def describe_input(path: str, role: str, rows: int) -> dict:
    return {"path": os.path.abspath(path), "role": role, "rows": rows, "sha256": file_sha256(path)}
