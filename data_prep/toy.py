"""`verl-avsd prep toy`: the toy arithmetic task (verl_avsd.toy.task) in the same output format.

The problems, views and reward come from `verl_avsd.toy.task`, the one definition of the toy
task that the tiny model was warmed up on; this command only lays them out like every other
`prep` command (contract schema, train/validation/manifest). Deterministic in `--seed`.
Its `data_source` is the toy task's own (`avsd_toy/arith`), which the toy reward checks.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from verl_avsd.data_prep.contract import MATH_ABILITY, chat_prompt, make_row, text_id
from verl_avsd.data_prep.errors import escape_surrogates
from verl_avsd.data_prep.math_views import MATH_VIEW_NAMES
from verl_avsd.data_prep.option_checks import at_least, at_most
from verl_avsd.data_prep.output import (
    check_output_folder,
    output_names,
    previous_outputs,
    remove_stale_outputs,
    write_manifest,
    write_rows,
)
from verl_avsd.data_prep.summary import view_counts
from verl_avsd.toy import task as toy_task

MAX_TOY_COUNT = 10_000_000


@dataclass
class ToyOptions:
    out_dir: str
    n_train: int = 2048
    n_val: int = 256
    seed: int = 0
    num_steps: int = toy_task.DEFAULT_NUM_STEPS
    max_operand: int = toy_task.DEFAULT_MAX_OPERAND


def toy_rows(n: int, seed: int, split: str, num_steps: int, max_operand: int) -> list[dict]:
    """Rows of one toy split ('train' or 'val' in the toy task's naming)."""
    problems = toy_task.generate_problems(n, seed, split, num_steps, max_operand)
    return [
        make_row(
            data_source=toy_task.DATA_SOURCE,
            ability=MATH_ABILITY,
            prompt=chat_prompt(problem.prompt),
            ground_truth=str(problem.answer),
            problem=problem.prompt,
            problem_id=text_id(problem.prompt),
            source="toy",
            views=problem.views(),
        )
        for problem in problems
    ]


def prepare_toy(options: ToyOptions, argv: list[str] | None = None) -> dict:
    # both splits must have rows (an empty parquet file only fails later, in the trainer)
    at_least("--n-train", options.n_train, 1)
    at_least("--n-val", options.n_val, 1)
    at_least("--num-steps", options.num_steps, 2)  # the toy task's own minimums
    at_least("--max-operand", options.max_operand, 2)
    counts = (("--n-train", options.n_train), ("--n-val", options.n_val), ("--num-steps", options.num_steps))
    for option, value in counts:
        at_most(option, value, MAX_TOY_COUNT)  # a careless 10**12 would run until memory is gone
    check_output_folder(options.out_dir, output_names([]), [])
    stale = previous_outputs(options.out_dir)
    train = toy_rows(options.n_train, options.seed, "train", options.num_steps, options.max_operand)
    validation = toy_rows(options.n_val, options.seed, "val", options.num_steps, options.max_operand)
    outputs = [
        write_rows(train, os.path.join(options.out_dir, "train.parquet"), "train"),
        write_rows(validation, os.path.join(options.out_dir, "validation.parquet"), "validation"),
    ]
    manifest = {
        "tool": "verl-avsd prep",
        "task": "toy",
        "command": argv,
        "options": asdict(options),
        "inputs": [],
        "outputs": outputs,
        "views": {"names": list(MATH_VIEW_NAMES), "rows_with_view": view_counts(train + validation)},
        "summary": {
            "train": {"read": len(train), "kept": len(train)},
            "validation": {"read": len(validation), "kept": len(validation)},
        },
    }
    removed = remove_stale_outputs(options.out_dir, stale, {entry["path"] for entry in outputs}, [])
    write_manifest(options.out_dir, manifest)
    print(escape_surrogates(f"verl-avsd prep toy -> {options.out_dir}"))
    for name in removed:
        print(f"removed {name} (an earlier run's output this run does not write)")
    for entry in outputs:
        print(f"wrote {entry['path']}: {entry['rows']} rows")
    return manifest
