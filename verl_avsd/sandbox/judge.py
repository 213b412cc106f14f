"""Judging a response's program against tests: find the program, run it, compare outputs.

Shared by the code reward (hidden tests) and the feedback view (public tests). Tests come as
the data contract's JSON (`data_prep/contract.py`): `{"inputs": [...], "outputs": [...]}` of
stdin/stdout strings, plus `"fn_name"` for call-based problems, whose inputs hold one JSON
value per line (the arguments) and whose outputs hold the JSON return value.
"""

from __future__ import annotations

import json
import numbers
import re
from dataclasses import dataclass
from typing import Any

from verl_avsd.sandbox.result import Limits, RunResult, Status
from verl_avsd.sandbox.runner import Sandbox

# A fenced block: ```tag\n code ```. Only closed blocks count: a response cut off by the
# length limit inside its code block has no complete program.
FENCED_BLOCK = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)
LANGUAGE_OF_TAG = {
    "": None,  # untagged: the problem's language
    "python": "python", "python3": "python", "py": "python", "py3": "python",
    "cpp": "cpp", "c++": "cpp", "cc": "cpp", "cxx": "cpp",
}  # fmt: skip
WRONG_ANSWER = "wrong_answer"
DEFAULT_TIME_LIMIT_S = 2.0  # for rows whose time_limit_s / memory_mb are null
DEFAULT_MEMORY_MB = 256


class MalformedTests(ValueError):
    """A test set that cannot be used; the message names the row and field."""


@dataclass(frozen=True)
class Program:
    code: str
    language: str


@dataclass(frozen=True)
class TestSet:
    __test__ = False  # not a pytest test class, despite the name

    inputs: list[str]
    outputs: list[str]
    fn_name: str | None = None

    def __len__(self) -> int:
        return len(self.inputs)


def extract_program(response: str, default_language: str = "python") -> Program | None:
    """The last fenced code block of a program language (or untagged); None when there is none.

    Blocks tagged with something else (```text, ```output, ```json ...) are sample I/O, not
    the program, and are skipped.
    """
    for match in reversed(list(FENCED_BLOCK.finditer(response))):
        tag = match.group(1).strip().lower()
        if tag not in LANGUAGE_OF_TAG:
            continue
        code = match.group(2)
        if code.strip():
            return Program(code, LANGUAGE_OF_TAG[tag] or default_language)
    return None


def parse_tests(value: Any, *, where: str) -> TestSet:
    """Read a test set (JSON string or dict). `where` names the row and field for errors."""
    if isinstance(value, bytes | str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedTests(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise MalformedTests(f"{where}: expected a JSON object with 'inputs' and 'outputs', got {type(value).__name__}")
    for key in ("inputs", "outputs"):
        if key not in value:
            raise MalformedTests(f"{where}: missing {key!r} (has: {', '.join(sorted(value)) or 'nothing'})")
        if not isinstance(value[key], list):
            raise MalformedTests(f"{where}: {key!r} must be a list, got {type(value[key]).__name__}")
        for i, item in enumerate(value[key]):
            if not isinstance(item, str):
                raise MalformedTests(f"{where}: {key}[{i}] must be a string, got {type(item).__name__} ({str(item)[:40]!r})")
    inputs, outputs = value["inputs"], value["outputs"]
    if len(inputs) != len(outputs):
        raise MalformedTests(f"{where}: {len(inputs)} inputs but {len(outputs)} outputs")
    fn_name = value.get("fn_name")
    if fn_name is not None and (not isinstance(fn_name, str) or not fn_name.isidentifier()):
        raise MalformedTests(f"{where}: fn_name must be a Python identifier, got {fn_name!r}")
    return TestSet(list(inputs), list(outputs), fn_name or None)


def limits_of_row(time_limit_s, memory_mb, *, where: str) -> Limits:
    """Run limits from a row's `extra_info.time_limit_s` / `memory_mb`; null means the default."""
    values = {}
    for field, value, default in (
        ("time_limit_s", time_limit_s, DEFAULT_TIME_LIMIT_S),
        ("memory_mb", memory_mb, DEFAULT_MEMORY_MB),
    ):
        value = default if value is None else value
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            raise MalformedTests(f"{where}: field extra_info.{field}: expected a positive number, got {value!r}")
        values[field] = value
    try:
        return Limits(time_limit_s=float(values["time_limit_s"]), memory_mb=int(values["memory_mb"]))
    except ValueError as exc:
        raise MalformedTests(f"{where}: {exc}") from None


def normalize_output(text: str) -> str:
    """Output as judges compare it: any line ending, no trailing spaces, no trailing blank lines."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).rstrip("\n")


def outputs_match(actual: str, expected: str, *, call_based: bool = False) -> bool:
    if call_based:  # compare JSON values, so 1.0 == 1 and spacing inside lists does not matter
        try:
            return json.loads(actual) == json.loads(expected)
        except json.JSONDecodeError:
            pass
    return normalize_output(actual) == normalize_output(expected)


def call_based_program(code: str, fn_name: str) -> str:
    """`code` plus a harness that reads one JSON argument per input line, calls `fn_name`
    (a method of `Solution` when the code defines that class, LeetCode style) and prints the
    JSON result."""
    harness = f"""

import json as _avsd_json, sys as _avsd_sys
_avsd_args = [_avsd_json.loads(_l) for _l in _avsd_sys.stdin.read().splitlines() if _l.strip()]
_avsd_fn = Solution().{fn_name} if "Solution" in globals() else {fn_name}
print(_avsd_json.dumps(_avsd_fn(*_avsd_args)))
"""
    return code + harness


@dataclass(frozen=True)
class TestOutcome:
    index: int
    passed: bool
    status: str  # "ok", "wrong_answer" or the run's Status value
    result: RunResult | None  # None when the program could not be run at all


@dataclass(frozen=True)
class JudgeReport:
    num_tests: int
    outcomes: list[TestOutcome]  # in test order; shorter than num_tests after an early stop
    status: str  # "ok" when every test passed, else the first failure's status

    @property
    def num_passed(self) -> int:
        return sum(outcome.passed for outcome in self.outcomes)

    @property
    def pass_rate(self) -> float:
        return self.num_passed / self.num_tests if self.num_tests else 0.0

    @property
    def all_passed(self) -> bool:
        return self.num_tests > 0 and self.num_passed == self.num_tests

    @property
    def first_failure(self) -> TestOutcome | None:
        return next((outcome for outcome in self.outcomes if not outcome.passed), None)


def judge(
    program: Program, tests: TestSet, *, sandbox: Sandbox, limits: Limits, stop_on_first_failure: bool = False
) -> JudgeReport:
    """Run `program` on every test (in order) and compare its stdout with the expected output."""
    if not len(tests):
        return JudgeReport(0, [], "no_tests")
    if program.language not in sandbox.languages or (tests.fn_name and program.language != "python"):
        why = f"unsupported_language:{program.language}" + ("(call-based)" if tests.fn_name else "")
        return JudgeReport(len(tests), [TestOutcome(0, False, why, None)], why)
    code = call_based_program(program.code, tests.fn_name) if tests.fn_name else program.code
    outcomes: list[TestOutcome] = []

    def record(index: int, result: RunResult) -> bool:
        if result.status is Status.OK:
            passed = outputs_match(result.stdout, tests.outputs[index], call_based=tests.fn_name is not None)
            status = "ok" if passed else WRONG_ANSWER
        else:
            passed, status = False, result.status.value
        outcomes.append(TestOutcome(index, passed, status, result))
        return passed or not stop_on_first_failure

    sandbox.run_tests(code, tests.inputs, language=program.language, limits=limits, keep_going=record)
    failure = next((outcome for outcome in outcomes if not outcome.passed), None)
    return JudgeReport(len(tests), outcomes, "ok" if failure is None else failure.status)
