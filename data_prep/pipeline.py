"""What every `prep` command shares: reading input files with a progress bar, turning bad rows
into errors (or counted drops with `--skip-bad-rows`), and writing the output folder with its
manifest and printed summary.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import TypeVar

from tqdm import tqdm

from verl_avsd.data_prep.contract import views_in_prompt
from verl_avsd.data_prep.errors import BadInputError, escape_surrogates, printable
from verl_avsd.data_prep.filters import normalize_whitespace
from verl_avsd.data_prep.output import (
    TRAIN_NAME,
    VALIDATION_NAME,
    check_output_folder,
    describe_input,
    output_names,
    previous_outputs,
    remove_stale_outputs,
    split_train_validation,
    write_manifest,
    write_rows,
)
from verl_avsd.data_prep.records import InputFile, Record, require_columns
from verl_avsd.data_prep.summary import Tally, view_counts

BAD_ROW = "bad_row"
VIEW_IN_PROMPT = "view_in_prompt"
Item = TypeVar("Item")


def dataset_name(name: str | None, format: str, inputs: list[str]) -> str:
    """`--name`, else the format; for `generic` the first input's file name without extensions."""
    if name:
        return name
    if format == "generic":
        return printable(os.path.basename(inputs[0]).split(".")[0])  # a non-UTF-8 file name cannot go to parquet
    return format


class ProblemIds:
    """Each problem id names one problem in a stream of rows (training rows, or one eval set).

    A second row with the same id and a different problem (after whitespace normalisation) is
    bad input: joins by id (code reference solutions) would give it the first one's data, and
    per-problem results could not be told apart. The same id with the same problem is a repeat,
    which the duplicate filter handles. Only a hash of each problem is kept.
    """

    def __init__(self) -> None:
        self._first: dict[str, tuple[bytes, str, int]] = {}

    def check(self, record: Record, field: str | None, problem_id: str, problem: str) -> None:
        if not problem.strip():
            return  # dropped as empty_problem anyway
        digest = hashlib.sha1(normalize_whitespace(problem).encode("utf-8", "surrogateescape")).digest()
        first_digest, first_file, first_row = self._first.setdefault(problem_id, (digest, record.file, record.row))
        if first_digest != digest:
            where = f"row {first_row}" if first_file == record.file else f"{first_file} row {first_row}"
            raise record.error(f"problem id {problem_id!r} is already the id of a different problem ({where})", field)


def with_unique_ids(read):
    """`read` (record -> problem with id_field, problem_id, problem), then a check that the problem's
    id is not another problem's in this stream (a bad row if it is): one `ProblemIds` per call."""
    ids = ProblemIds()

    def read_checked(record):
        problem = read(record)
        ids.check(record, problem.id_field, problem.problem_id, problem.problem)
        return problem

    return read_checked


def leaked_views(prompt: list[dict], views: list[dict]) -> str | None:
    """`view_in_prompt` when the student's messages already hold a view's text (the row is dropped), else None."""
    return VIEW_IN_PROMPT if views_in_prompt(prompt, views) else None


def _package_version() -> str | None:
    try:
        return importlib.metadata.version("verl-avsd")
    except importlib.metadata.PackageNotFoundError:
        return None


class PrepRun:
    """One `verl-avsd prep <task>` run: its inputs, tallies and output folder."""

    def __init__(
        self,
        task: str,
        out_dir: str,
        options: dict,
        *,
        skip_bad_rows: bool = False,
        progress: bool = True,
        limit: int | None = None,
    ):
        self.task = task
        self.out_dir = out_dir
        self.options = options
        self.skip_bad_rows = skip_bad_rows
        self.progress = progress
        self.limit = limit
        self.inputs: list[dict] = []
        self.tallies: dict[str, Tally] = {}
        self.eval_names: list[str] = [name for name, _ in options.get("evals") or []]
        self.input_paths: list[str] = []

    def check_output_folder(self, input_paths: list[str]) -> None:
        """Before any input is read: `--out` is a writable folder and no output lands on an input."""
        check_output_folder(self.out_dir, output_names(self.eval_names), input_paths)
        self.input_paths = list(input_paths)

    @classmethod
    def for_options(cls, task: str, options) -> PrepRun:
        """The run of a dataset command's options dataclass (all of it is recorded in the manifest)."""
        return cls(
            task,
            options.out_dir,
            asdict(options),
            skip_bad_rows=options.skip_bad_rows,
            progress=options.progress,
            limit=options.limit,
        )

    def tally(self, name: str) -> Tally:
        if name not in self.tallies:
            self.tallies[name] = Tally(name)
        return self.tallies[name]

    def records(
        self,
        path: str,
        role: str,
        tally: Tally | None,
        *,
        columns: list[str] | None = None,
        required_columns: tuple[list[str], str] | None = None,
    ) -> Iterator[Record]:
        """The records of one input file, counted in `tally` (if given) as they are read.

        `columns` limits the parquet columns read; `required_columns` = (names, format name)
        fails fast when a parquet file lacks one. `--limit` caps the rows read per file.
        """
        input_file = InputFile(path, columns)
        if input_file.num_rows == 0:
            raise BadInputError(path, "has no rows (an empty file?)")
        if required_columns is not None:
            require_columns(input_file, *required_columns)
        self.inputs.append(describe_input(path, role, input_file.num_rows))
        total = input_file.num_rows if self.limit is None else min(self.limit, input_file.num_rows)
        bar = tqdm(
            total=total,
            desc=f"{role} {os.path.basename(path)}",
            unit="row",
            disable=not self.progress,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        with bar:
            for record in input_file.records():
                if self.limit is not None and record.row >= self.limit:
                    break
                if tally is not None:
                    tally.read += 1
                bar.update(1)
                yield record

    def items(
        self,
        path: str,
        role: str,
        tally: Tally,
        read: Callable[[Record], Item],
        *,
        columns: list[str] | None = None,
        required_columns: tuple[list[str], str] | None = None,
    ) -> Iterator[Item]:
        """`read` of each record of one input file (see `records`), bad rows `guarded`."""
        for record in self.records(path, role, tally, columns=columns, required_columns=required_columns):
            item = self.guarded(record, tally, read)
            if item is not None:
                yield item

    def guarded(self, record: Record, tally: Tally, read: Callable[[Record], Item]) -> Item | None:
        """`read(record)`, or None after counting the row as `bad_row` when bad rows are skipped."""
        try:
            if record.unreadable is not None:
                raise record.unreadable
            return read(record)
        except BadInputError as error:
            if not self.skip_bad_rows:
                raise
            tally.drop(BAD_ROW, error.format())
            return None

    def finish(
        self,
        rows: list[dict],
        eval_rows: dict[str, list[dict]],
        *,
        view_names: tuple[str, ...],
        val_size: float,
        seed: int,
        argv: list[str] | None,
    ) -> dict:
        """Write train/validation/eval parquet and the manifest; print the summary; return the manifest.

        An eval set with no rows left gets no file (the summary says why); outputs of an earlier
        run that this one does not write are removed, so the folder matches the manifest.
        """
        os.makedirs(self.out_dir, exist_ok=True)
        stale = previous_outputs(self.out_dir)
        outputs = []
        if rows:
            train, validation = split_train_validation(rows, val_size, seed)
            outputs.append(write_rows(train, os.path.join(self.out_dir, TRAIN_NAME), "train"))
            if validation:
                outputs.append(write_rows(validation, os.path.join(self.out_dir, VALIDATION_NAME), "validation"))
        for name, rows_of_set in eval_rows.items():
            if rows_of_set:
                outputs.append(write_rows(rows_of_set, os.path.join(self.out_dir, f"eval_{name}.parquet"), "eval"))
        for tally in self.tallies.values():
            tally.check()
        removed = remove_stale_outputs(self.out_dir, stale, {entry["path"] for entry in outputs}, self.input_paths)
        manifest = {
            "tool": "verl-avsd prep",
            "version": _package_version(),
            "task": self.task,
            "command": argv,
            "options": self.options,
            "inputs": self.inputs,
            "outputs": outputs,
            "views": {"names": list(view_names), "rows_with_view": view_counts(rows)},
            "summary": {name: tally.as_dict() for name, tally in self.tallies.items()},
        }
        write_manifest(self.out_dir, manifest)
        summary = self.format_summary(outputs, manifest["views"]["rows_with_view"], len(rows))
        summary += "".join(f"\nremoved {name} (an earlier run's output this run does not write)" for name in removed)
        print(escape_surrogates(summary))
        return manifest

    def format_summary(self, outputs: list[dict], views: dict[str, int], prepared: int) -> str:
        lines = [f"verl-avsd prep {self.task} -> {self.out_dir}"]
        lines += [tally.format() for tally in self.tallies.values()]
        if prepared:
            lines.append("views (rows having each): " + ", ".join(f"{name} {count}/{prepared}" for name, count in views.items()))
        lines += [f"wrote {entry['path']}: {entry['rows']} rows" for entry in outputs]
        lines.append(f"wrote {os.path.join(self.out_dir, 'manifest.json')}")
        return "\n".join(lines)
