"""The execution-feedback view: what the student's program does on the public tests, in words.

After rollout, the trainer calls `run_feedback(responses, public_tests, ...)` for the
code rollouts of a batch. Each response's program (its last fenced code block) runs in the
sandbox on its row's public tests (`extra_info.public_tests`), in order, stopping at the first
failure, and the outcome becomes the `feedback` view text that the teacher reads like any
other view:

- compile error: the first lines of the compiler output;
- first failing test: its input, the expected and the actual output (wrong answer), or the
  error output (crash), or a time/memory/output limit notice;
- otherwise "All N public tests pass."

None (view mask false) where there is nothing honest to show: the response has no program,
the row has no public tests, the program's language cannot run here, or the sandbox could not
run this one program (while its probe still runs). Never an empty string passed off as a view.
A sandbox that is missing or broke raises SandboxUnavailable (after a retry and a failed probe):
the run stops rather than train without the views.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from verl_avsd.data_prep.errors import row_name
from verl_avsd.sandbox import Limits, Sandbox, Status, get_sandbox
from verl_avsd.sandbox.judge import (
    WRONG_ANSWER,
    JudgeReport,
    TestSet,
    extract_program,
    judge,
    limits_of_row,
    parse_tests,
)

logger = logging.getLogger(__name__)

MAX_LINES = 20  # per quoted block (input, expected, actual, error output)
MAX_CHARS = 800
COMPILER_LINES = 10
NO_VIEW_STATUSES = ("no_program", "no_tests", "unsupported_language", "sandbox_error")
FEEDBACK_STATUSES = (
    "ok",
    WRONG_ANSWER,
    "compile_error",
    "runtime_error",
    "timeout",
    "memory_limit",
    "output_limit",
    *NO_VIEW_STATUSES,
)


@dataclass(frozen=True)
class Feedback:
    text: str | None  # the view text; None means no feedback view for this rollout
    status: str  # "ok" (all pass), the first failure's status, or one of NO_VIEW_STATUSES


def run_feedback(
    responses: Sequence[str],
    public_tests: Sequence[Any],
    *,
    time_limit_s: float | Sequence[float | None] | None = None,
    memory_mb: float | Sequence[float | None] | None = None,
    languages: Sequence[str | None] | None = None,
    sandbox: Sandbox | None = None,
    row_names: Sequence[str] | None = None,
) -> list[Feedback]:
    """Feedback for each response: its view text (`.text`, None for no view) and status.

    responses: decoded rollout texts. public_tests: per response, the row's public tests (the
    contract's JSON string, a dict, or None for a row without any). time_limit_s / memory_mb:
    one value for all or one per response (None: the default). languages: per response, the
    language of an untagged code block (the row's `extra_info.language`; default python).
    row_names: per response, how errors name its row (default "batch sample i").
    Raises MalformedTests for public tests or limits that cannot be read.
    """
    n = len(responses)
    if len(public_tests) != n:
        raise ValueError(f"run_feedback: {n} responses but {len(public_tests)} public test sets")
    names = list(row_names) if row_names is not None else [f"batch sample {i}" for i in range(n)]
    times, memories, langs = (
        _per_row(time_limit_s, n, "time_limit_s"),
        _per_row(memory_mb, n, "memory_mb"),
        _per_row(languages, n, "languages"),
    )
    # Read every row before running anything, so bad data fails fast and names its row.
    jobs = []
    for i in range(n):
        tests = (
            None if public_tests[i] is None else parse_tests(public_tests[i], where=f"{names[i]}: field extra_info.public_tests")
        )
        limits = limits_of_row(times[i], memories[i], where=names[i])
        jobs.append((responses[i], tests, limits, langs[i] or "python"))
    sandbox = sandbox or get_sandbox()
    with ThreadPoolExecutor(max_workers=sandbox.max_concurrent) as pool:
        feedbacks = list(pool.map(lambda job: _feedback_for(*job, sandbox=sandbox), jobs))
    sandbox_errors = sum(f.status == Status.SANDBOX_ERROR.value for f in feedbacks)
    if sandbox_errors:
        logger.warning("feedback view: the sandbox failed on %d of %d rollouts (no feedback view for them)", sandbox_errors, n)
    return feedbacks


def feedback_metrics(feedbacks: Sequence[Feedback]) -> dict[str, float]:
    """Shares of rollouts per outcome, for the trainer's logger (`feedback/<status>_rate`)."""
    if not feedbacks:
        return {}
    counts = Counter(f.status.split(":")[0] for f in feedbacks)
    # Every known outcome is always logged (0.0 when absent), so the curves have no gaps.
    statuses = sorted({*FEEDBACK_STATUSES, *counts})
    metrics = {f"feedback/{status}_rate": counts[status] / len(feedbacks) for status in statuses}
    metrics["feedback/view_rate"] = sum(f.text is not None for f in feedbacks) / len(feedbacks)
    return metrics


def _feedback_for(response: str, tests: TestSet | None, limits: Limits, language: str, *, sandbox: Sandbox) -> Feedback:
    program = extract_program(response, default_language=language)
    if program is None:
        return Feedback(None, "no_program")
    if tests is None or not len(tests):
        return Feedback(None, "no_tests")
    report = judge(program, tests, sandbox=sandbox, limits=limits, stop_on_first_failure=True)
    if report.status.startswith("unsupported_language") or report.status == Status.SANDBOX_ERROR.value:
        return Feedback(None, report.status)
    return Feedback(feedback_text(report, tests, limits), report.status)


def feedback_text(report: JudgeReport, tests: TestSet, limits: Limits) -> str:
    """The view text for a judged program (the project's default wording)."""
    failure = report.first_failure
    if failure is None:
        return f"All {report.num_tests} public tests pass."
    result = failure.result
    if failure.status == Status.COMPILE_ERROR.value:
        return "The program does not compile. Compiler output:\n" + _block(result.stderr, COMPILER_LINES, keep="head")
    where = f"Public test {failure.index + 1} of {report.num_tests}"
    test_input = "Input:\n" + _block(tests.inputs[failure.index])
    if failure.status == WRONG_ANSWER:
        return (
            f"{where} fails.\n{test_input}\nExpected output:\n{_block(tests.outputs[failure.index])}\n"
            f"Actual output:\n{_block(result.stdout)}"
        )
    if failure.status == Status.TIMEOUT.value:
        return f"{where}: the program exceeds the time limit ({limits.time_limit_s:g} s).\n{test_input}"
    if failure.status == Status.MEMORY_LIMIT.value:
        return f"{where}: the program exceeds the memory limit ({limits.memory_mb} MB).\n{test_input}"
    if failure.status == Status.OUTPUT_LIMIT.value:
        return f"{where}: the program prints more than {limits.max_output_bytes} bytes of output.\n{test_input}"
    return f"{where}: the program crashes ({result.detail}).\n{test_input}\nError output:\n" + _block(result.stderr, keep="tail")


def _block(text: str, max_lines: int = MAX_LINES, keep: str = "head") -> str:
    """`text` clipped to `max_lines` lines / MAX_CHARS characters, saying what was cut."""
    lines = text.rstrip("\n").split("\n")
    if text.strip() == "":
        return "(empty)"
    cut = len(lines) > max_lines
    lines = lines[:max_lines] if keep == "head" else lines[-max_lines:]
    clipped = "\n".join(lines)
    if len(clipped) > MAX_CHARS:
        clipped, cut = (clipped[:MAX_CHARS] if keep == "head" else clipped[-MAX_CHARS:]), True
    if not cut:
        return clipped
    return clipped + "\n... (truncated)" if keep == "head" else "(truncated) ...\n" + clipped


def _per_row(value, n: int, name: str) -> list:
    if value is None or isinstance(value, int | float | str):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"run_feedback: {name} has {len(values)} entries for {n} responses")
    return values


def feedback_for_rollouts(response_texts: list[str], extra_infos: list[dict], cfg) -> tuple[list[str], dict]:
    """The `feedback` view text of each rollout, from its row's extra_info ("" = none: no program,
    or a row without public tests), and the feedback metrics. Runs the programs in the sandbox;
    the trainer (actor placement) and the rollout-side teacher both call it."""
    infos = [e if isinstance(e, dict) else {} for e in extra_infos]
    feedbacks = run_feedback(
        response_texts,
        [e.get("public_tests") for e in infos],
        time_limit_s=[e.get("time_limit_s") for e in infos],
        memory_mb=[e.get("memory_mb") for e in infos],
        languages=[e.get("language") for e in infos],
        row_names=[row_name(e, b) for b, e in enumerate(infos)],
        sandbox=get_sandbox(
            cfg.sandbox_isolation, max_concurrent=cfg.sandbox_max_concurrent, sandbox_fusion_url=cfg.sandbox_fusion_url
        ),
    )
    return [f.text or "" for f in feedbacks], feedback_metrics(feedbacks)


__all__ = ["Feedback", "feedback_metrics", "feedback_for_rollouts", "feedback_text", "run_feedback"]
