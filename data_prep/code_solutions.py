r"""Readers for reference-solution files of code problems: each row becomes `Solution`s joined by problem id.

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
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from verl_avsd.data_prep.code_hint import CPP, JAVA, PYTHON, guess_language
from verl_avsd.data_prep.records import Record

SOLUTION_FORMATS = ("auto", "cots", "submissions", "code_contests", "generic")


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


# --- reading solution rows ------------------------------------------------------------------

_NOT_PROGRAM_TAGS = {"text", "txt", "plaintext", "plain", "output", "input", "console", "json", "markdown", "md"}
_CODE_BLOCK = re.compile(r"```([\w+#.-]*)[ \t]*\n(.*?)```", re.DOTALL)


def last_code_block(text: str) -> tuple[str, str] | None:
    """(language tag, code) of the last program block after any `</think>`, or None.

    Blocks tagged as sample data (```text, ```output, ...) are skipped: a generation that shows
    the expected output after its program must not make that output the reference.
    """
    answer = text.rsplit("</think>", 1)[-1]
    for tag, code in reversed(_CODE_BLOCK.findall(answer)):
        if tag.strip().lower() not in _NOT_PROGRAM_TAGS:
            return tag, code.strip("\n")
    return None


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
        accepted = value in (True, 1) or (isinstance(value, str) and value.strip().lower() in ("ok", "accepted", "true", "1"))
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
