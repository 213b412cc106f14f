"""`verl-avsd prep code`: code problems + reference solutions to verl parquet with code views.

1. Evaluation sets (`--eval NAME=FILE`, LiveCodeBench rows) become `eval_NAME.parquet`.
2. Reference solutions (`--solutions FILE`, joined by problem id) are streamed and only the best
   one per problem is kept (accepted > unverified, then the student's language, then file order).
3. Each problem row: read it; drop it when its statement is empty (`empty_problem`), it cannot be
   scored by output (`interactive_problem`, `file_io_problem`, `needs_checker`), it has no
   hidden tests (`no_hidden_tests`) or no reference (`no_reference_solution`, unless
   `--keep-without-reference`); build the `reference` and `hint` views; filter repeats (same
   main statement text, e.g. a problem shared by a Div. 1 and a Div. 2 round), evaluation
   problems (full statement or main text) and rows over the token limits, like math; drop rows
   whose prompt already holds a view (`view_in_prompt`).
A problem id shared by two different problems is a bad row (the first keeps it): the reference
solutions are joined by id, so both would otherwise get the first one's program.
Time and memory limits must be ones the sandbox can run (see option_checks); null or NaN gives
`--default-time-limit` / `--default-memory-mb`.
Hidden tests go to `reward_model.ground_truth` only; the statement's examples go to
`extra_info.public_tests`, the only tests the per-rollout `feedback` view may run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from verl_avsd.data_prep.code_hint import describe_code
from verl_avsd.data_prep.code_readers import (
    CODEFORCES_COLUMNS,
    CODEFORCES_OPTIONAL_COLUMNS,
    LIVECODEBENCH_COLUMNS,
    CodeProblem,
    read_codeforces,
    read_generic_problem,
    read_livecodebench,
)
from verl_avsd.data_prep.code_solutions import (
    SOLUTION_FORMATS,
    Solution,
    better_solution,
    detect_solutions_format,
    read_code_contests_solutions,
    read_cots_solution,
    read_generic_solution,
    read_submission,
)
from verl_avsd.data_prep.contract import CODE_ABILITY, chat_prompt, make_row, tests_json
from verl_avsd.data_prep.filters import TrainingFilters
from verl_avsd.data_prep.option_checks import check_code_options, check_common_options
from verl_avsd.data_prep.pipeline import PrepRun, dataset_name, leaked_views, with_unique_ids

CODE_VIEW_NAMES = ("reference", "hint", "feedback")
LANGUAGE_NAMES = {"python": "Python 3", "cpp": "C++17", "java": "Java"}
DEFAULT_CODE_PROMPT = (
    "{problem}\n\nWrite a {language_name} program that reads the input from standard input and writes the "
    "answer to standard output. Put the whole program in one ```{language} code block."
)
PROMPT_FIELDS = ("problem", "language", "language_name")  # what --prompt-template may use
DEFAULT_STARTER_PROMPT = (
    "{problem}\n\nComplete the following starter code. Put the whole solution in one ```{language} code block."
    "\n\n```{language}\n{starter_code}\n```"
)


@dataclass
class CodeOptions:
    problems: list[str]
    out_dir: str
    format: str = "codeforces"
    name: str | None = None  # data_source is code/<name>
    solutions: list[str] = field(default_factory=list)
    solutions_format: str = "auto"
    solution_id_key: str = "problem_id"
    solution_code_key: str = "code"
    solution_language_key: str | None = None
    solution_accepted_key: str | None = None
    problem_key: str = "problem"
    tests_key: str = "tests"
    public_tests_key: str | None = None
    id_key: str | None = None
    reference_key: str | None = None
    time_limit_key: str | None = None
    memory_key: str | None = None
    language: str = "python"
    keep_without_reference: bool = False
    max_hidden_tests: int | None = None
    default_time_limit_s: float = 2.0
    default_memory_mb: float = 256.0
    evals: list[tuple[str, str]] = field(default_factory=list)
    tokenizer: str | None = None
    max_problem_tokens: int | None = None
    max_view_tokens: int | None = None
    dedupe: bool = True
    decontaminate: bool = True
    val_size: float = 0.05
    seed: int = 0
    limit: int | None = None
    prompt_template: str = DEFAULT_CODE_PROMPT
    starter_prompt_template: str = DEFAULT_STARTER_PROMPT
    system_prompt: str | None = None
    skip_bad_rows: bool = False
    progress: bool = True


def _student_prompt(options: CodeOptions, problem: CodeProblem) -> str:
    values = {
        "problem": problem.problem,
        "language": options.language,
        "language_name": LANGUAGE_NAMES.get(options.language, options.language),
        "starter_code": problem.starter_code.strip("\n"),
    }
    template = options.starter_prompt_template if problem.starter_code.strip() else options.prompt_template
    return template.format(**values)


def _tests_fields(options: CodeOptions, problem: CodeProblem) -> dict:
    hidden = problem.hidden_tests[: options.max_hidden_tests] if options.max_hidden_tests else problem.hidden_tests
    return {
        "ground_truth": tests_json([t[0] for t in hidden], [t[1] for t in hidden], problem.fn_name),
        "public_tests": tests_json([t[0] for t in problem.public_tests], [t[1] for t in problem.public_tests], problem.fn_name),
        "time_limit_s": options.default_time_limit_s if problem.time_limit_s is None else problem.time_limit_s,
        "memory_mb": options.default_memory_mb if problem.memory_mb is None else problem.memory_mb,
        "language": options.language,
    }


def _unscorable(problem: CodeProblem) -> str | None:
    """The drop reason of a problem that cannot be scored by output (no statement, no hidden tests), or None.

    Only the training readers set `unusable`; LiveCodeBench eval problems never carry one.
    """
    if not problem.description:
        return "empty_problem"
    if problem.unusable is not None:
        return problem.unusable
    if not problem.hidden_tests:
        return "no_hidden_tests"
    return None


def _prepare_evals(run: PrepRun, options: CodeOptions) -> tuple[dict[str, list[dict]], list[str]]:
    eval_rows: dict[str, list[dict]] = {}
    eval_problems: list[str] = []
    for name, path in options.evals:
        tally = run.tally(f"eval:{name}")
        rows = eval_rows.setdefault(name, [])
        required = (LIVECODEBENCH_COLUMNS, "livecodebench")
        read = with_unique_ids(read_livecodebench)
        for problem in run.items(path, f"eval:{name}", tally, read, required_columns=required):
            reason = _unscorable(problem)
            if reason is not None:
                tally.drop(reason)
                continue
            eval_problems += [problem.problem, problem.description]
            fields = _tests_fields(options, problem)
            rows.append(
                make_row(
                    data_source=f"code/{name}",
                    ability=CODE_ABILITY,
                    prompt=chat_prompt(_student_prompt(options, problem), options.system_prompt),
                    ground_truth=fields.pop("ground_truth"),
                    problem=problem.problem,
                    problem_id=problem.problem_id,
                    source=problem.source,
                    views=[],
                    **fields,
                )
            )
            tally.kept += 1
    return eval_rows, eval_problems


def _solution_reader(options: CodeOptions, keys: set[str]):
    chosen = options.solutions_format if options.solutions_format != "auto" else detect_solutions_format(keys)
    readers = {
        "cots": read_cots_solution,
        "submissions": read_submission,
        "code_contests": read_code_contests_solutions,
        "generic": lambda record: read_generic_solution(
            record,
            options.solution_id_key,
            options.solution_code_key,
            options.solution_language_key,
            options.solution_accepted_key,
        ),
    }
    if chosen not in readers:
        raise ValueError(f"unknown --solutions-format {chosen!r} (use one of {', '.join(SOLUTION_FORMATS)})")
    return readers[chosen]


def _best_solutions(run: PrepRun, options: CodeOptions) -> dict[str, Solution]:
    """The chosen reference per problem id, streamed over every solutions file."""
    best: dict[str, Solution] = {}
    tally = run.tally("solutions")
    order = 0
    for path in options.solutions:
        reader = None
        for record in run.records(path, "solutions", tally):
            if reader is None and record.unreadable is None:  # the format is read off the first row's fields
                reader = _solution_reader(options, set(record.data))
            result = run.guarded(record, tally, reader or (lambda r: ([], None)))
            if result is None:
                continue
            solutions, reason = result
            if reason is not None:
                tally.drop(reason)
                continue
            tally.kept += 1
            for solution in solutions:
                solution.order = order
                order += 1
                if better_solution(solution, best.get(solution.problem_id), options.language):
                    best[solution.problem_id] = solution
    return best


def _problem_reader(options: CodeOptions):
    """(read function, parquet columns to load, required columns) for the problem format."""
    if options.format == "codeforces":
        return read_codeforces, CODEFORCES_COLUMNS + CODEFORCES_OPTIONAL_COLUMNS, CODEFORCES_COLUMNS
    if options.format == "generic":
        keys = [options.problem_key, options.tests_key, options.public_tests_key, options.id_key]
        keys += [options.reference_key, options.time_limit_key, options.memory_key]
        required = [key for key in keys if key]

        def read(record):
            return read_generic_problem(
                record,
                problem_key=options.problem_key,
                tests_key=options.tests_key,
                public_tests_key=options.public_tests_key,
                id_key=options.id_key,
                reference_key=options.reference_key,
                time_limit_key=options.time_limit_key,
                memory_key=options.memory_key,
                language=options.language,
            )

        return read, required, required
    raise ValueError(f"unknown code format {options.format!r} (use codeforces or generic)")


def code_views(reference: Solution | None) -> list[dict]:
    """The stored code views (reference, hint); `feedback` is built per rollout by the trainer."""
    if reference is None:
        return []
    code = reference.code.strip()
    fence = "```"
    while fence in code:  # a program holding ``` (in a string) would end a 3-backtick block early
        fence += "`"
    return [
        {"name": "reference", "text": f"{fence}{reference.language}\n{code}\n{fence}"},
        {"name": "hint", "text": describe_code(reference.code, reference.language)},
    ]


def prepare_code(options: CodeOptions, argv: list[str] | None = None) -> dict:
    """Run the code pipeline; returns the manifest (also written to OUT/manifest.json)."""
    check_common_options(options, PROMPT_FIELDS)
    check_code_options(options)
    read, columns, required = _problem_reader(options)
    read = with_unique_ids(read)
    run = PrepRun.for_options("code", options)
    run.check_output_folder(options.problems + options.solutions + [path for _, path in options.evals])
    filters = TrainingFilters(options)
    eval_rows, eval_problems = _prepare_evals(run, options)
    references = _best_solutions(run, options)
    filters.decontaminate_against(eval_problems)
    name = dataset_name(options.name, options.format, options.problems)

    tally = run.tally("train")
    rows: list[dict] = []
    for path in options.problems:
        problems = run.items(path, "train", tally, read, columns=columns, required_columns=(required, options.format))
        for problem in problems:
            reason = _unscorable(problem)
            if reason is not None:
                tally.drop(reason)
                continue
            reference = problem.reference or references.get(problem.problem_id)
            if reference is None and not options.keep_without_reference:
                tally.drop("no_reference_solution")
                continue
            views = code_views(reference)
            user_text = _student_prompt(options, problem)
            prompt = chat_prompt(user_text, options.system_prompt)
            # a repeat is the same main text, e.g. a problem shared by a Div. 1 and a Div. 2 round
            filtered = filters.reason(problem.description, (problem.problem, problem.description), user_text, views)
            if filtered is not None:
                tally.filter(filtered)
                continue
            leaked = leaked_views(prompt, views)
            if leaked is not None:
                tally.drop(leaked)
                continue
            fields = _tests_fields(options, problem)
            rows.append(
                make_row(
                    data_source=f"code/{name}",
                    ability=CODE_ABILITY,
                    prompt=prompt,
                    ground_truth=fields.pop("ground_truth"),
                    problem=problem.problem,
                    problem_id=problem.problem_id,
                    source=problem.source or name,
                    views=views,
                    **fields,
                )
            )
            tally.kept += 1
    return run.finish(rows, eval_rows, view_names=CODE_VIEW_NAMES, val_size=options.val_size, seed=options.seed, argv=argv)
