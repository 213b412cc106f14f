r"""Readers for code dataset schemas: problems and evaluation rows.

Problems (checked against the datasets' cards):
- `codeforces`: open-r1/codeforces (`id`, `title`, `description`, `input_format`,
  `output_format`, `interaction_format`, `note`, `examples` [{input, output}], `official_tests`
  [{input, output}], `time_limit` (s), `memory_limit` (MB), `input_mode`, `generated_checker`,
  `editorial`, `rating`, `tags`, ...). Public tests = the statement's `examples`; hidden tests =
  `official_tests`. Interactive problems, problems read from files and problems whose answers
  need a checker (several valid outputs) cannot be scored by comparing output, so they are
  dropped and counted (`interactive_problem`, `file_io_problem`, `needs_checker`).
- `generic`: `--problem-key`, `--tests-key` (hidden tests), optional `--public-tests-key`,
  `--id-key`, `--reference-key`, `--time-limit-key`, `--memory-key`. Tests may be a JSON string
  or object `{"inputs": [...], "outputs": [...]}` or a list of `{input, output}`.

Reference solutions: see `code_solutions.py`.

Evaluation: `livecodebench` (livecodebench/code_generation_lite: `question_title`,
`question_content`, `platform`, `question_id`, `starter_code`, `public_test_cases` (JSON),
`private_test_cases` (JSON, or base64 of zlib of a pickled JSON string), `metadata` (JSON with
`func_name` for call-based problems)). Hidden tests = public + private (as LiveCodeBench
scores); the pickle is read with an unpickler that refuses every class, so only a plain string
can come out of it.
"""

from __future__ import annotations

import base64
import io
import pickle
import zlib
from dataclasses import dataclass

from verl_avsd.data_prep.code_solutions import Solution, normalize_problem_id
from verl_avsd.data_prep.contract import text_id
from verl_avsd.data_prep.json_text import JsonProblem, parse_json
from verl_avsd.data_prep.option_checks import run_limit_problem
from verl_avsd.data_prep.records import Record

CODEFORCES_COLUMNS = [
    "id",
    "description",
    "input_format",
    "output_format",
    "examples",
    "official_tests",
    "time_limit",
    "memory_limit",
]
CODEFORCES_OPTIONAL_COLUMNS = ["title", "note", "interaction_format", "generated_checker", "input_mode"]
LIVECODEBENCH_COLUMNS = ["question_title", "question_content", "public_test_cases", "private_test_cases"]
MAX_DECOMPRESSED_TESTS_BYTES = 1 << 30  # a LiveCodeBench test column; more is a zip bomb, not tests

Tests = list[tuple[str, str]]


@dataclass
class CodeProblem:
    problem_id: str
    problem: str  # the statement as shown to the student (title, text, formats, examples, note)
    description: str  # the statement's main text alone (for decontamination)
    public_tests: Tests
    hidden_tests: Tests
    time_limit_s: float | None
    memory_mb: float | None
    source: str
    unusable: str | None = None  # a drop reason when the problem cannot be scored by output
    fn_name: str | None = None
    starter_code: str = ""
    reference: Solution | None = None
    id_field: str | None = None  # the field the id came from (None: the statement's hash), for errors


# --- tests ----------------------------------------------------------------------------------


def _test_text(record: Record, value, field_name: str) -> str:
    """A test's input or output; null is an error (as "" it would expect an empty output, silently)."""
    if value is None:
        raise record.error("a test input or output is null", field_name)
    return record.as_text(value, field_name)


def read_tests(record: Record, field_name: str, value=None) -> Tests:
    """Tests as (input, output) pairs from [{input, output}], {"inputs", "outputs"} or a JSON string of either."""
    value = record.value(field_name) if value is None else value
    if value is None:
        return []
    if isinstance(value, str):
        if not value.strip():
            return []
        try:
            value = parse_json(value)
        except JsonProblem as exc:
            raise record.error(f"tests are {exc.reason}", field_name) from None
    if isinstance(value, dict):
        inputs, outputs = value.get("inputs", value.get("input")), value.get("outputs", value.get("output"))
        if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
            raise record.error("expected {'inputs': [...], 'outputs': [...]} of equal length", field_name)
        return [
            (_test_text(record, i, f"{field_name}.inputs[{k}]"), _test_text(record, o, f"{field_name}.outputs[{k}]"))
            for k, (i, o) in enumerate(zip(inputs, outputs, strict=True))
        ]
    if isinstance(value, list | tuple):
        tests = []
        for k, test in enumerate(value):
            if not isinstance(test, dict) or "input" not in test or "output" not in test:
                raise record.error("expected a test with 'input' and 'output'", f"{field_name}[{k}]")
            tests.append(
                (
                    _test_text(record, test["input"], f"{field_name}[{k}].input"),
                    _test_text(record, test["output"], f"{field_name}[{k}].output"),
                )
            )
        return tests
    raise record.error(f"expected a list of tests, got {type(value).__name__}", field_name)


def run_limit(record: Record, field_name: str | None, kind: str) -> float | None:
    """A time limit (kind 'time', seconds) or memory limit ('memory', MB) column; null or NaN gives None
    (the default applies); a value the sandbox cannot use is an error (see option_checks)."""
    if field_name is None:
        return None
    value = record.number(field_name)
    problem = None if value is None else run_limit_problem(kind, value)
    if problem is not None:
        raise record.error(problem, field_name)
    return value


# --- problems -------------------------------------------------------------------------------


def _examples_text(tests: Tests) -> str:
    blocks = []
    for k, (test_input, test_output) in enumerate(tests, start=1):
        blocks.append(f"Example {k}\nInput:\n{test_input.rstrip()}\nOutput:\n{test_output.rstrip()}")
    return "\n\n".join(blocks)


def read_codeforces(record: Record) -> CodeProblem:
    title = record.text("title", required=False)
    description = record.text("description")
    input_format = record.text("input_format")
    output_format = record.text("output_format")
    note = record.text("note", required=False)
    examples = read_tests(record, "examples")
    parts = [title, description]
    if input_format.strip():
        parts.append("Input\n" + input_format.strip())
    if output_format.strip():
        parts.append("Output\n" + output_format.strip())
    if examples:
        parts.append(_examples_text(examples))
    if note.strip():
        parts.append("Note\n" + note.strip())
    unusable = None
    if record.text("interaction_format", required=False).strip():
        unusable = "interactive_problem"
    elif record.text("input_mode", required=False).strip() not in ("", "stdio"):
        unusable = "file_io_problem"
    elif record.text("generated_checker", required=False).strip():
        unusable = "needs_checker"
    return CodeProblem(
        problem_id=normalize_problem_id(record.text("id")),
        problem="\n\n".join(part.strip() for part in parts if part.strip()),
        description=description.strip(),
        public_tests=examples,
        hidden_tests=read_tests(record, "official_tests"),
        time_limit_s=run_limit(record, "time_limit", "time"),
        memory_mb=run_limit(record, "memory_limit", "memory"),
        source="codeforces",
        unusable=unusable,
        id_field="id",
    )


def read_generic_problem(
    record: Record,
    *,
    problem_key: str,
    tests_key: str,
    public_tests_key: str | None,
    id_key: str | None,
    reference_key: str | None,
    time_limit_key: str | None,
    memory_key: str | None,
    language: str,
) -> CodeProblem:
    problem = record.text(problem_key)
    problem_id = record.identifier(id_key) if id_key else None
    reference = record.text(reference_key) if reference_key else ""
    return CodeProblem(
        problem_id=normalize_problem_id(problem_id) if problem_id else text_id(problem),
        problem=problem.strip(),
        description=problem.strip(),
        public_tests=read_tests(record, public_tests_key) if public_tests_key else [],
        hidden_tests=read_tests(record, tests_key),
        time_limit_s=run_limit(record, time_limit_key, "time"),
        memory_mb=run_limit(record, memory_key, "memory"),
        source="",
        reference=Solution("", reference, language, None) if reference.strip() else None,
        id_field=id_key if problem_id else None,
    )


# --- LiveCodeBench --------------------------------------------------------------------------


class _TextOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain values only: any class or function reference is refused."""

    def find_class(self, module, name):  # noqa: ANN001
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from test data")


def _inflate(compressed: bytes) -> bytes:
    """zlib data, refusing more than MAX_DECOMPRESSED_TESTS_BYTES (a few KB can inflate to many GB)."""
    inflater = zlib.decompressobj()
    data = inflater.decompress(compressed, MAX_DECOMPRESSED_TESTS_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError(f"test cases decompress to more than {MAX_DECOMPRESSED_TESTS_BYTES} bytes")
    return data


def decode_livecodebench_tests(encoded: str) -> list:
    """LiveCodeBench test cases: plain JSON, or base64(zlib(pickle(JSON string)))."""
    try:
        return parse_json(encoded)
    except JsonProblem as exc:
        if not exc.syntax:
            raise
    unpacked = _TextOnlyUnpickler(io.BytesIO(_inflate(base64.b64decode(encoded.encode("ascii"))))).load()
    if not isinstance(unpacked, str):
        raise ValueError(f"expected a pickled JSON string, got {type(unpacked).__name__}")
    return parse_json(unpacked)


def _livecodebench_tests(record: Record, field_name: str) -> tuple[Tests, str | None]:
    """(tests, testtype) of one LiveCodeBench test column."""
    encoded = record.text(field_name)
    if not encoded.strip():
        return [], None
    try:
        cases = decode_livecodebench_tests(encoded)
    except Exception as exc:  # noqa: BLE001  base64, zlib, pickle and json each raise their own type
        raise record.error(f"cannot decode test cases ({type(exc).__name__}: {exc})", field_name) from None
    tests = read_tests(record, field_name, cases)
    types = {case.get("testtype") for case in cases if isinstance(case, dict) and isinstance(case.get("testtype"), str)}
    return tests, ("functional" if "functional" in types else "stdin")


def read_livecodebench(record: Record) -> CodeProblem:
    title = record.text("question_title")
    content = record.text("question_content")
    public, public_type = _livecodebench_tests(record, "public_test_cases")
    private, private_type = _livecodebench_tests(record, "private_test_cases")
    fn_name = None
    if "functional" in (public_type, private_type):
        metadata_text = record.text("metadata", required=False) or "{}"
        try:
            metadata = parse_json(metadata_text)
        except JsonProblem as exc:
            raise record.error(exc.reason, "metadata") from None
        fn_name = metadata.get("func_name") if isinstance(metadata, dict) else None
        if not fn_name:
            raise record.error("call-based tests need metadata.func_name", "metadata")
        if not isinstance(fn_name, str) or not fn_name.isidentifier():
            raise record.error(f"func_name must be a Python identifier, got {fn_name!r}", "metadata")
    question_id = record.text("question_id", required=False)
    return CodeProblem(
        problem_id=question_id or title,
        id_field="question_id" if question_id else "question_title",
        problem=f"{title.strip()}\n\n{content.strip()}" if title.strip() else content.strip(),
        description=content.strip(),
        public_tests=public,
        hidden_tests=public + private,
        time_limit_s=None,
        memory_mb=None,
        source=record.text("platform", required=False) or "livecodebench",
        fn_name=fn_name,
        starter_code=record.text("starter_code", required=False),
    )
