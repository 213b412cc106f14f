"""Checks of a `prep` command's options, run before any input is read; each error names the option.

Why each exists (all were found by feeding the CLI careless or hostile values):
- `--prompt-template` is a `str.format` template: an unknown placeholder (`{x}`, `{0}`), an
  attribute or index (`{problem.__class__}`), a bad format spec or a lone brace would fail with
  a bare KeyError deep in the run, or put Python internals into every prompt.
- `--val-size inf`/`nan`, `--limit -1` (reads nothing), `--max-hidden-tests 0` (keeps all) or
  `-1` (drops the last test), `--max-*-tokens 0` (no limit) all ran and wrote surprising files.
- Run limits: the sandbox needs a positive, finite time and at least 16 MB to start an
  interpreter; a limit of 1e30 s overflows its timers (a correct program then scores 0), and a
  memory limit of 268435456 "MB" is a byte count given in the wrong unit.
- `--language` must be one the sandbox can run (`verl_avsd/sandbox`: python, cpp).
- Text options must be valid Unicode: a non-UTF-8 byte in argv cannot be written to parquet.
- Column options must name different columns where one is shown to the student and the other
  is privileged: `--public-tests-key` equal to `--tests-key` would hand the hidden tests to the
  per-rollout feedback view; a solution or answer column equal to the problem column puts the
  view into the prompt.
"""

from __future__ import annotations

import math
import re
import string

CODE_LANGUAGES = ("python", "cpp")  # what verl_avsd/sandbox runs (judge.LANGUAGE_OF_TAG)
MAX_TIME_LIMIT_S = 600.0  # contest limits are seconds; far above any real one, far below timer overflow
MIN_MEMORY_MB, MAX_MEMORY_MB = 16.0, 65536.0  # sandbox minimum to start an interpreter; 64 GiB
EVAL_NAME = re.compile(r"[A-Za-z0-9_-]+")
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text_option(option: str, value: str | None) -> None:
    if value is not None and _SURROGATE.search(value):
        raise ValueError(f"{option}: not valid UTF-8 text (a byte that is not UTF-8 was given)")


def check_prompt_template(template: str, fields: tuple[str, ...], option: str = "--prompt-template") -> None:
    """`template` may only use `{field}` placeholders from `fields`, and must use `{problem}`."""
    check_text_option(option, template)
    known = ", ".join("{" + field + "}" for field in fields)
    try:
        names = [name for _, name, spec, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:  # a lone { or }
        raise ValueError(f"{option}: {exc} (write {{{{ and }}}} for literal braces)") from None
    for name in names:
        if name not in fields:
            raise ValueError(f"{option}: unknown placeholder {{{name}}} (known: {known}; write {{{{ and }}}} for literal braces)")
    if "problem" not in names:
        raise ValueError(f"{option} must contain {{problem}}")
    try:
        template.format(**{field: "text" for field in fields})
    except (ValueError, KeyError, IndexError) as exc:  # a format spec such as {problem:d}
        raise ValueError(f"{option}: cannot be filled in ({exc})") from None


def at_least(option: str, value: int | float | None, minimum: int) -> None:
    if value is not None and not value >= minimum:
        raise ValueError(f"{option} must be at least {minimum}, got {value}")


def at_most(option: str, value: int | float | None, maximum: int) -> None:
    if value is not None and not value <= maximum:
        raise ValueError(f"{option} must be at most {maximum}, got {value}")


def run_limit_problem(kind: str, value: float) -> str | None:
    """Why `value` cannot be a time limit (kind 'time', seconds) or memory limit ('memory', MB), or None."""
    if kind == "time":
        if not (0 < value <= MAX_TIME_LIMIT_S):
            hint = " (given in milliseconds?)" if value > MAX_TIME_LIMIT_S else ""
            return f"time limit must be in (0, {MAX_TIME_LIMIT_S:g}] seconds, got {value:g}{hint}"
        return None
    if not (MIN_MEMORY_MB <= value <= MAX_MEMORY_MB):
        hint = " (given in bytes or KB?)" if value > MAX_MEMORY_MB else ""
        return f"memory limit must be in [{MIN_MEMORY_MB:g}, {MAX_MEMORY_MB:g}] MB, got {value:g}{hint}"
    return None


def check_common_options(options, template_fields: tuple[str, ...]) -> None:
    """The options every dataset command shares (see `cli._add_common`)."""
    check_prompt_template(options.prompt_template, template_fields)
    check_text_option("--system-prompt", options.system_prompt)
    check_text_option("--name", options.name)
    if options.name is not None and not options.name.strip():
        raise ValueError("--name is empty (leave it out to name the dataset after its format)")
    if not (math.isfinite(options.val_size) and options.val_size >= 0):
        raise ValueError(f"--val-size must be a finite number >= 0, got {options.val_size}")
    if options.val_size >= 1 and options.val_size != int(options.val_size):
        raise ValueError(f"--val-size above 1 must be a whole number of rows, got {options.val_size}")
    at_least("--limit", options.limit, 1)
    at_least("--max-problem-tokens", options.max_problem_tokens, 1)
    at_least("--max-view-tokens", options.max_view_tokens, 1)
    seen: set[str] = set()
    for name, _ in options.evals:
        if not EVAL_NAME.fullmatch(name):
            raise ValueError(f"--eval {name}: the name must be letters, digits, '-' or '_'")
        if name in seen:
            raise ValueError(f"--eval {name} is given twice (each eval set needs its own name)")
        seen.add(name)


def check_code_options(options) -> None:
    if options.format == "generic":
        shown = [("--problem-key", options.problem_key), ("--public-tests-key", options.public_tests_key)]
        for student in shown:
            check_separate_columns(student, [("--tests-key", options.tests_key), ("--reference-key", options.reference_key)])
    if options.language not in CODE_LANGUAGES:
        raise ValueError(f"--language {options.language!r}: the sandbox runs only {', '.join(CODE_LANGUAGES)}")
    at_least("--max-hidden-tests", options.max_hidden_tests, 1)
    for option, kind, value in (
        ("--default-time-limit", "time", options.default_time_limit_s),
        ("--default-memory-mb", "memory", options.default_memory_mb),
    ):
        problem = run_limit_problem(kind, value)
        if problem is not None:
            raise ValueError(f"{option}: {problem}")


def check_separate_columns(student: tuple[str, str | None], privileged: list[tuple[str, str | None]]) -> None:
    """The student-visible column (option, key) is none of the privileged ones (option, key)."""
    student_option, student_key = student
    for option, key in privileged:
        if key is not None and key == student_key:
            raise ValueError(f"{option} {key!r} is also {student_option}: the student would see it")
