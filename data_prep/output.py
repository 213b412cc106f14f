"""Laying out the output folder: train/validation/eval parquet files and `manifest.json`.

Files: `train.parquet`, `validation.parquet` (a seeded random subset of the prepared rows) and
`eval_<name>.parquet` per evaluation set. Rows keep their input order inside each file;
`extra_info.index` is the row's position in its file and `extra_info.split` its split.
Every row is checked against the contract before it is written.
"""

from __future__ import annotations

import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq

from verl_avsd.data_prep.contract import ROW_SCHEMA, contract_problems
from verl_avsd.data_prep.records import file_sha256

MANIFEST_NAME = "manifest.json"


def validation_count(val_size: float, total: int) -> int:
    """Rows to hold out: val_size < 1 is a fraction (at least 1 row when there are 2+), else a count."""
    if val_size < 0:
        raise ValueError(f"--val-size must be >= 0, got {val_size}")
    if total < 2 or val_size == 0:
        return 0
    if val_size < 1:
        return min(total - 1, max(1, round(val_size * total)))
    if val_size != int(val_size):
        raise ValueError(f"--val-size above 1 must be a whole number of rows, got {val_size}")
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
    pq.write_table(table, path)
    return {"path": os.path.basename(path), "split": split, "rows": len(rows), "sha256": file_sha256(path)}


def write_manifest(out_dir: str, manifest: dict) -> str:
    path = os.path.join(out_dir, MANIFEST_NAME)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    return path


def describe_input(path: str, role: str, rows: int) -> dict:
    return {"path": os.path.abspath(path), "role": role, "rows": rows, "sha256": file_sha256(path)}
