r"""Readers for code dataset schemas: problems, reference solutions and evaluation rows.

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

Reference solutions (a second file, joined by problem id):
- `cots`: open-r1/codeforces-cots (`id`, `generation` = a model's answer; the program is its
  last fenced code block after any `</think>`; rows with `finish_reason` other than `stop` are
  skipped). Not verified: never preferred over an accepted submission.
- `submissions`: open-r1/codeforces-submissions (`problem_id` or `contestId`+`problem_index`,
  `source`, `programmingLanguage`, `verdict`); accepted iff verdict is `OK`.
- `code_contests`: deepmind/code_contests (`cf_contest_id`, `cf_index`, `name`, `solutions` =
  {language: [ids], solution: [code]}); all are correct solutions.
- `generic`: `--solution-id-key`, `--solution-code-key`, optional `--solution-language-key`,
  `--solution-accepted-key`.
Problem ids are compared after normalising Codeforces ids: `1873A`, `1873_A`, `1873/a` all
become `1873/A`.

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
import re
import zlib
from dataclasses import dataclass, field

from verl_avsd.data_prep.code_hint import CPP, JAVA, PYTHON, guess_language
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
SOLUTION_FORMATS = ("auto", "cots", "submissions", "code_contests", "generic")
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


@dataclass
class Solution:
    problem_id: str
    code: str
    language: str
    accepted: bool | None  # True: judged correct; None: not verified (judged-wrong ones are skipped)
    order: int = field(default=0)  # position in its file, to break ties deterministically


def normalize_problem_id(problem_id: str) -> str:
    text = str(problem_id).strip()
    match = re.fullmatch(r"(\d+)\s*[/_\-]?\s*([A-Za-z]\d?)", text)
    return f"{match.group(1)}/{match.group(2).upper()}" if match else text


def normalize_language(name: str) -> str:
    """python, cpp, java, or the lowercased name for anything else."""
    lowered = name.strip().lower()
    if lowered in ("py", "python", "python3", "py3", "pypy", "pypy3") or "python" in lowered or "pypy" in lowered:
        return PYTHON
    if lowered in ("cpp", "c++", "cc", "cxx") or "c++" in lowered or "g++" in lowered:
        return CPP
    if "java" in lowered and "script" not in lowered:
        return JAVA
    return lowered


# --- tests ----------------------------------------------------------------------------------


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
            (record.as_text(i, f"{field_name}.inputs[{k}]"), record.as_text(o, f"{field_name}.outputs[{k}]"))
            for k, (i, o) in enumerate(zip(inputs, outputs, strict=True))
        ]
    if isinstance(value, list | tuple):
        tests = []
        for k, test in enumerate(value):
            if not isinstance(test, dict) or "input" not in test or "output" not in test:
                raise record.error("expected a test with 'input' and 'output'", f"{field_name}[{k}]")
            tests.append(
                (
                    record.as_text(test["input"], f"{field_name}[{k}].input"),
                    record.as_text(test["output"], f"{field_name}[{k}].output"),
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


# --- reference solutions --------------------------------------------------------------------

_CODE_BLOCK = re.compile(r"```([\w+#.-]*)[ \t]*\n(.*?)```", re.DOTALL)


def last_code_block(text: str) -> tuple[str, str] | None:
    """(language tag, code) of the last fenced block after any `</think>`, or None."""
    answer = text.rsplit("</think>", 1)[-1]
    blocks = _CODE_BLOCK.findall(answer)
    if not blocks:
        return None
    tag, code = blocks[-1]
    return tag, code.strip("\n")


def detect_solutions_format(keys: set[str]) -> str:
    if "generation" in keys:
        return "cots"
    if "verdict" in keys and "source" in keys:
        return "submissions"
    if "solutions" in keys and ("cf_contest_id" in keys or "name" in keys):
        return "code_contests"
    return "generic"


def read_cots_solution(record: Record) -> tuple[list[Solution], str | None]:
    """(solutions, None), or ([], drop reason) for an unfinished generation or one without code."""
    if record.text("finish_reason", required=False) not in ("", "stop"):
        return [], "unfinished_generation"
    block = last_code_block(record.text("generation"))
    if block is None:
        return [], "no_code_block"
    tag, code = block
    language = normalize_language(tag) if tag else guess_language(code)
    return [Solution(normalize_problem_id(record.text("id")), code, language, None)], None


def read_submission(record: Record) -> tuple[list[Solution], str | None]:
    if "problem_id" in record.data and record.data["problem_id"] not in (None, ""):
        problem_id = record.text("problem_id")
    else:
        problem_id = f"{record.text('contestId')}/{record.text('problem_index')}"
    if record.text("verdict") != "OK":
        return [], "not_accepted"
    code = record.text("source")
    language = normalize_language(record.text("programmingLanguage", required=False)) or guess_language(code)
    return [Solution(normalize_problem_id(problem_id), code, language, accepted=True)], None


_CODE_CONTESTS_LANGUAGES = {1: "python2", 2: CPP, 3: PYTHON, 4: JAVA}


def read_code_contests_solutions(record: Record) -> tuple[list[Solution], str | None]:
    contest = record.identifier("cf_contest_id") if "cf_contest_id" in record.data else None
    index = record.text("cf_index", required=False)
    problem_id = f"{contest}/{index}" if contest and contest != "0" and index else record.text("name")
    solutions = record.value("solutions")
    if not isinstance(solutions, dict) or not isinstance(solutions.get("solution"), list | tuple):
        raise record.error("expected {'language': [...], 'solution': [...]}", "solutions")
    languages = solutions.get("language") or [0] * len(solutions["solution"])
    if (
        not isinstance(languages, list | tuple)
        or len(languages) != len(solutions["solution"])
        or any(isinstance(language, bool) or not isinstance(language, int) for language in languages)
    ):
        raise record.error("expected as many integer language codes as solutions", "solutions.language")
    found = [
        Solution(
            normalize_problem_id(problem_id),
            record.as_text(code, f"solutions.solution[{k}]"),
            _CODE_CONTESTS_LANGUAGES.get(language, "unknown"),
            accepted=True,
        )
        for k, (code, language) in enumerate(zip(solutions["solution"], languages, strict=False))
    ]
    return (found, None) if found else ([], "no_solutions")


def read_generic_solution(
    record: Record, id_key: str, code_key: str, language_key: str | None, accepted_key: str | None
) -> tuple[list[Solution], str | None]:
    accepted = None
    if accepted_key:
        value = record.value(accepted_key)
        accepted = value in (True, 1) or (
            isinstance(value, str) and value.strip().lower() in ("ok", "accepted", "true", "1")
        )
        if not accepted:
            return [], "not_accepted"
    code = record.text(code_key)
    if not code.strip():
        return [], "empty_code"
    language = (normalize_language(record.text(language_key)) if language_key else "") or guess_language(code)
    problem_id = record.identifier(id_key)
    if problem_id is None:
        raise record.error("no problem id (null or empty): the solution cannot be joined to a problem", id_key)
    return [Solution(normalize_problem_id(problem_id), code, language, accepted)], None


def better_solution(candidate: Solution, current: Solution | None, language: str) -> bool:
    """Reference choice: accepted before unverified (judged-wrong ones are never read), then the
    student's language, then the earliest in the file."""
    if not candidate.code.strip():
        return False
    if current is None:
        return True

    def rank(solution: Solution) -> tuple:
        return (solution.accepted is not True, solution.language != language, solution.order)

    return rank(candidate) < rank(current)
