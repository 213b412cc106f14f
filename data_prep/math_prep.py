r"""`verl-avsd prep math`: math datasets to verl parquet with the full/partial/answer views.

For each training row, in this order:
1. read it with the schema's reader (a bad row is an error, or a `bad_row` drop);
2. filter by `--domain` / `--source` (OpenThoughts defaults to `--domain math`);
3. drop rows with an empty problem (`empty_problem`), an empty worked solution when the schema
   has one (`empty_solution`), or no usable final answer (`no_boxed_answer`,
   `unbalanced_boxed`, `empty_boxed_answer`, `empty_answer`);
4. build the views and the student prompt (which never holds a view);
5. filter repeats (`duplicate_problem`), evaluation problems (`eval_overlap_exact`,
   `eval_overlap_whitespace`) and rows over the token limits (`problem_too_long`,
   `view_too_long:<view>`);
6. drop rows whose prompt already holds a view's text (`view_in_prompt`, e.g. a proof whose
   boxed answer is the statement).
A problem id shared by two different problems is a bad row (the first keeps it).
Evaluation sets (`--eval NAME=FILE`) become `eval_NAME.parquet` rows without views.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from verl_avsd.data_prep.boxed import last_boxed_answer
from verl_avsd.data_prep.contract import MATH_ABILITY, chat_prompt, make_row
from verl_avsd.data_prep.filters import TrainingFilters
from verl_avsd.data_prep.math_readers import (
    DAPO_COLUMNS,
    OPENTHOUGHTS_COLUMNS,
    MathItem,
    read_dapo,
    read_eval,
    read_generic,
    read_openthoughts,
)
from verl_avsd.data_prep.math_views import MATH_VIEW_NAMES, PARTIAL_VIEW_RULES, math_views
from verl_avsd.data_prep.option_checks import check_common_options, check_separate_columns
from verl_avsd.data_prep.pipeline import PrepRun, dataset_name, leaked_views, with_unique_ids

DEFAULT_MATH_PROMPT = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."


@dataclass
class MathOptions:
    inputs: list[str]
    out_dir: str
    format: str = "openthoughts"
    name: str | None = None  # data_source is math/<name>; defaults to the format (generic: the file name)
    problem_key: str = "problem"
    solution_key: str | None = None
    answer_key: str | None = None
    source_key: str | None = None
    domain_key: str | None = None
    id_key: str | None = None
    solution_source: str = "ground_truth"  # openthoughts: ground_truth | deepseek
    partial_view: str = "ours"  # ours | authors (math_views.PARTIAL_VIEW_RULES)
    domains: list[str] | None = None
    sources: list[str] | None = None
    evals: list[tuple[str, str]] = field(default_factory=list)
    eval_problem_key: str | None = None
    eval_answer_key: str | None = None
    tokenizer: str | None = None
    max_problem_tokens: int | None = None
    max_view_tokens: int | None = None
    dedupe: bool = True
    decontaminate: bool = True
    val_size: float = 0.05
    seed: int = 0
    limit: int | None = None
    prompt_template: str = DEFAULT_MATH_PROMPT
    system_prompt: str | None = None
    skip_bad_rows: bool = False
    progress: bool = True


def _check_options(options: MathOptions) -> None:
    check_common_options(options, ("problem",))
    if options.format == "generic" and not (options.solution_key or options.answer_key):
        raise ValueError("--format generic needs --solution-key and/or --answer-key")
    if options.format == "generic":
        privileged = [("--solution-key", options.solution_key), ("--answer-key", options.answer_key)]
        check_separate_columns(("--problem-key", options.problem_key), privileged)
    if options.solution_source not in ("ground_truth", "deepseek"):
        raise ValueError("--solution-source must be ground_truth or deepseek")
    if options.partial_view not in PARTIAL_VIEW_RULES:
        raise ValueError(f"--partial-view must be one of {', '.join(PARTIAL_VIEW_RULES)}, got {options.partial_view!r}")
    if options.partial_view == "authors" and not _has_solutions(options):
        raise ValueError(
            f"--partial-view authors builds the partial view from a worked solution, and --format {options.format} "
            "gives none (every row would keep only the answer view)"
            + ("; name the solution column with --solution-key" if options.format == "generic" else "")
        )


def _has_solutions(options: MathOptions) -> bool:
    """Whether the format's rows carry a worked solution (the full and partial views come from it)."""
    return options.format == "openthoughts" or bool(options.format == "generic" and options.solution_key)


def _reader(options: MathOptions):
    """(read function, parquet columns to load, required columns) for the chosen format."""
    if options.format == "openthoughts":
        return (lambda r: read_openthoughts(r, options.solution_source)), OPENTHOUGHTS_COLUMNS, OPENTHOUGHTS_COLUMNS
    if options.format == "dapo":
        return read_dapo, DAPO_COLUMNS + ["data_source", "extra_info"], DAPO_COLUMNS
    if options.format == "generic":
        keys = [options.problem_key, options.solution_key, options.answer_key]
        keys += [options.source_key, options.domain_key, options.id_key]
        required = [key for key in keys if key]

        def read(record):
            return read_generic(
                record,
                options.problem_key,
                options.solution_key,
                options.answer_key,
                options.source_key,
                options.domain_key,
                options.id_key,
            )

        return read, required, required
    raise ValueError(f"unknown math format {options.format!r} (use openthoughts, dapo or generic)")


def _final_answer(item: MathItem) -> tuple[str | None, str | None]:
    """(answer, None) or (None, drop reason): the answer column first, else the solution's last box."""
    if item.answer.strip():
        return item.answer.strip(), None
    if item.solution.strip():
        return last_boxed_answer(item.solution)
    return None, "empty_answer"


def _prepare_evals(run: PrepRun, options: MathOptions) -> tuple[dict[str, list[dict]], list[str]]:
    """Rows of every evaluation set, and all their problems (for decontamination)."""
    eval_rows: dict[str, list[dict]] = {}
    eval_problems: list[str] = []

    for name, path in options.evals:
        read = with_unique_ids(lambda r: read_eval(r, options.eval_problem_key, options.eval_answer_key))
        tally = run.tally(f"eval:{name}")
        rows = eval_rows.setdefault(name, [])
        for item in run.items(path, f"eval:{name}", tally, read):
            if not item.problem.strip():
                tally.drop("empty_problem")
                continue
            if not item.answer.strip():
                tally.drop("empty_answer")
                continue
            eval_problems.append(item.problem)
            prompt = chat_prompt(options.prompt_template.format(problem=item.problem), options.system_prompt)
            rows.append(
                make_row(
                    data_source=f"math/{name}",
                    ability=MATH_ABILITY,
                    prompt=prompt,
                    ground_truth=item.answer,
                    problem=item.problem,
                    problem_id=item.problem_id,
                    source=name,
                    views=[],
                )
            )
            tally.kept += 1
    return eval_rows, eval_problems


def prepare_math(options: MathOptions, argv: list[str] | None = None) -> dict:
    """Run the math pipeline; returns the manifest (also written to OUT/manifest.json)."""
    _check_options(options)
    if options.format == "openthoughts" and options.domains is None:
        options.domains = ["math"]  # the paper trains on OpenThoughts' math subset
    read, columns, required = _reader(options)
    read = with_unique_ids(read)
    run = PrepRun.for_options("math", options)
    run.check_output_folder(options.inputs + [path for _, path in options.evals])
    filters = TrainingFilters(options)
    eval_rows, eval_problems = _prepare_evals(run, options)
    filters.decontaminate_against(eval_problems)
    domains = {d.lower() for d in options.domains} if options.domains else None
    sources = set(options.sources) if options.sources else None
    name = dataset_name(options.name, options.format, options.inputs)
    expects_solution = _has_solutions(options)

    tally = run.tally("train")
    rows: list[dict] = []
    for path in options.inputs:
        for item in run.items(path, "train", tally, read, columns=columns, required_columns=(required, options.format)):
            if domains is not None and item.domain.lower() not in domains:
                tally.filter("domain")
                continue
            if sources is not None and item.source not in sources:
                tally.filter("source")
                continue
            if not item.problem.strip():
                tally.drop("empty_problem")
                continue
            if expects_solution and not item.solution.strip():
                tally.drop("empty_solution")
                continue
            answer, reason = _final_answer(item)
            if answer is None:
                tally.drop(reason)
                continue
            views = math_views(item.solution, answer, options.partial_view)
            user_text = options.prompt_template.format(problem=item.problem)
            prompt = chat_prompt(user_text, options.system_prompt)
            filtered = filters.reason(item.problem, (item.problem,), user_text, views)
            if filtered is not None:
                tally.filter(filtered)
                continue
            leaked = leaked_views(prompt, views)
            if leaked is not None:
                tally.drop(leaked)
                continue
            rows.append(
                make_row(
                    data_source=f"math/{name}",
                    ability=MATH_ABILITY,
                    prompt=prompt,
                    ground_truth=answer,
                    problem=item.problem,
                    problem_id=item.problem_id,
                    source=item.source or name,
                    views=views,
                )
            )
            tally.kept += 1
    return run.finish(rows, eval_rows, view_names=MATH_VIEW_NAMES, val_size=options.val_size, seed=options.seed, argv=argv)
