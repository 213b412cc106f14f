r"""Readers for math dataset schemas: each turns one input `Record` into a `MathItem`.

Schemas (checked against the datasets' cards):
- `openthoughts`: the `metadata` config of open-thoughts/OpenThoughts-114k (`problem`,
  `deepseek_reasoning`, `deepseek_solution`, `ground_truth_solution`, `domain`, `source`, ...).
  The views come from `ground_truth_solution` (or `deepseek_solution` with
  `--solution-source deepseek`); the answer is the last box of `ground_truth_solution`, else
  of the chosen solution.
- `dapo`: DAPO-Math-17k rows already in verl form (`prompt` = chat messages, `reward_model`
  = {ground_truth, style}, `data_source`, `extra_info.index`). No worked solution: only the
  `answer` view. DAPO's own instruction wrapper ("Solve the following math problem step by
  step ... Remember to put your answer on its own line after "Answer:".") is removed so the
  problem gets this project's prompt like every other row.
- `generic`: any rows with `--problem-key` and at least one of `--solution-key`/`--answer-key`.
- evaluation sets (AIME 2024/2025, HMMT 2025 style): a problem and an answer column, found
  under common names (problem/question, answer) or given with `--eval-problem-key` /
  `--eval-answer-key`; verl-form files (prompt + reward_model) are read like `dapo`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from verl_avsd.data_prep.boxed import find_boxes, last_boxed_answer
from verl_avsd.data_prep.contract import text_id
from verl_avsd.data_prep.records import Record

MATH_FORMATS = ("openthoughts", "dapo", "generic")
EVAL_PROBLEM_KEYS = ("problem", "question", "Problem", "Question")
EVAL_ANSWER_KEYS = ("answer", "Answer", "final_answer", "expected_answer")
OPENTHOUGHTS_COLUMNS = ["problem", "ground_truth_solution", "deepseek_solution", "domain", "source"]
DAPO_COLUMNS = ["prompt", "reward_model"]

_DAPO_PREFIX = re.compile(r"^\s*Solve the following math problem step by step\..*?\n\s*\n", re.DOTALL)
_DAPO_SUFFIX = re.compile(r"\n\s*\n\s*Remember to put your answer on its own line after \"Answer:\"\.?\s*$")


@dataclass
class MathItem:
    """One problem as read: `solution` is "" when the dataset has none; `answer` is "" when it
    must come from the solution's last box."""

    problem: str
    solution: str
    answer: str
    source: str
    domain: str
    problem_id: str
    id_field: str | None = None  # the field the id came from (None: the problem's hash), for errors


def answer_text(record: Record, field: str, value=None) -> str:
    """An answer column as text: numbers are accepted (AIME answers often are), `$...$` and a
    surrounding `\\boxed{}` are removed. NaN counts as null (no answer); an infinite number is an error."""
    value = record.value(field) if value is None else value
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # exact, however long
    elif isinstance(value, float):
        number = record.as_number(value, field)
        value = None if number is None else str(int(number)) if number.is_integer() else str(number)
    text = record.as_text(value, field).strip()
    text = re.sub(r"^\$+|\$+$", "", text).strip()
    boxes = find_boxes(text)
    if len(boxes) == 1 and boxes[0].closed and boxes[0].start == 0 and boxes[0].end == len(text):
        text = boxes[0].content.strip()
    return text


def read_openthoughts(record: Record, solution_source: str = "ground_truth") -> MathItem:
    problem = record.text("problem")
    reference = record.text("ground_truth_solution")
    deepseek = record.text("deepseek_solution")
    solution = reference if solution_source == "ground_truth" else deepseek
    answer, _ = last_boxed_answer(reference)
    return MathItem(
        problem=problem,
        solution=solution,
        answer=answer or "",
        source=record.text("source"),
        domain=record.text("domain"),
        problem_id=text_id(problem),
    )


def _verl_form_problem(record: Record) -> str:
    """The problem inside a verl-form row's first user message, without DAPO's wrapper."""
    prompt = record.value("prompt")
    if not isinstance(prompt, list | tuple) or not prompt:
        raise record.error(f"expected a non-empty list of chat messages, got {type(prompt).__name__}", "prompt")
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or "content" not in message:
            raise record.error("expected chat messages with 'role' and 'content'", f"prompt[{i}]")
    users = [m for m in prompt if m.get("role", "user") == "user"]
    if not users:
        raise record.error("no message with role 'user'", "prompt")
    index = list(prompt).index(users[0])
    content = record.as_text(users[0]["content"], f"prompt[{index}].content")
    content = _DAPO_SUFFIX.sub("", _DAPO_PREFIX.sub("", content, count=1), count=1)
    return content.strip()


def _verl_form_answer(record: Record) -> str:
    reward_model = record.value("reward_model")
    if not isinstance(reward_model, dict) or "ground_truth" not in reward_model:
        raise record.error("expected a struct with 'ground_truth'", "reward_model")
    return answer_text(record, "reward_model.ground_truth", reward_model["ground_truth"] or "")


def read_dapo(record: Record) -> MathItem:
    problem = _verl_form_problem(record)
    extra_info = record.data.get("extra_info")
    index = extra_info.get("index") if isinstance(extra_info, dict) else None
    index = record.identifier("extra_info.index", index)
    return MathItem(
        problem=problem,
        solution="",
        answer=_verl_form_answer(record),
        source=record.text("data_source", required=False) or "dapo",
        domain="math",
        problem_id=index or text_id(problem),
        id_field="extra_info.index" if index else None,
    )


def read_generic(
    record: Record,
    problem_key: str,
    solution_key: str | None,
    answer_key: str | None,
    source_key: str | None = None,
    domain_key: str | None = None,
    id_key: str | None = None,
) -> MathItem:
    problem = record.text(problem_key)
    problem_id = record.identifier(id_key) if id_key else None
    return MathItem(
        problem=problem,
        solution=record.text(solution_key) if solution_key else "",
        answer=answer_text(record, answer_key) if answer_key else "",
        source=record.text(source_key) if source_key else "",
        domain=record.text(domain_key) if domain_key else "",
        problem_id=problem_id or text_id(problem),
        id_field=id_key if problem_id else None,
    )


def _first_present(record: Record, candidates: tuple[str, ...], what: str, given: str | None) -> str:
    if given:
        return given
    for key in candidates:
        if key in record.data:
            return key
    raise record.error(f"no {what} column (looked for {', '.join(candidates)}; name it with --eval-{what}-key)")


def read_eval(record: Record, problem_key: str | None = None, answer_key: str | None = None) -> MathItem:
    """An evaluation row (problem + answer, no views)."""
    if problem_key is None and "prompt" in record.data and "reward_model" in record.data:
        problem, answer = _verl_form_problem(record), _verl_form_answer(record)
    else:
        problem_field = _first_present(record, EVAL_PROBLEM_KEYS, "problem", problem_key)
        answer_field = _first_present(record, EVAL_ANSWER_KEYS, "answer", answer_key)
        problem, answer = record.text(problem_field), answer_text(record, answer_field)
    id_field = next((key for key in ("id", "problem_idx") if key in record.data), None)
    identifier = record.identifier(id_field) if id_field else None
    return MathItem(
        problem=problem,
        solution="",
        answer=answer,
        source="",
        domain="math",
        problem_id=identifier or text_id(problem),
        id_field=id_field if identifier else None,
    )
