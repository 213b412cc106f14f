"""Bad input: a non-zero exit and a message naming the file, row and field; or counted drops with --skip-bad-rows."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_avsd.data_prep.cli import main

FIXTURES = os.path.join(os.path.dirname(__file__), "data", "prep")
BAD_MATH = os.path.join(FIXTURES, "openthoughts_bad_rows.jsonl")
BAD_CODE = os.path.join(FIXTURES, "codeforces_bad_rows.jsonl")


def fixture_lines(path):
    with open(path, "rb") as handle:
        return handle.read().splitlines()


def file_with_lines(tmp_path, name, lines):
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def train_summary_skipping_bad_rows(out, *args):
    """`prep ARGS --out OUT --quiet --skip-bad-rows --val-size 0`, which must succeed; the train tally."""
    assert main([*args, "--out", out, "--quiet", "--skip-bad-rows", "--val-size", "0"]) == 0
    with open(os.path.join(out, "manifest.json")) as handle:
        return json.load(handle)["summary"]["train"]


def run_failing(argv, capsys):
    code = main(argv)
    error = capsys.readouterr().err
    assert code == 2, error
    return error


# (line of openthoughts_bad_rows.jsonl, what the message must say after "row 1 (line 2): ")
BAD_MATH_LINES = [
    (1, "field 'ground_truth_solution': missing (the row has: deepseek_reasoning, deepseek_solution, domain,"),
    (2, "field 'problem': expected text, got list"),
    (3, "field 'deepseek_solution': text is not valid UTF-8 (byte 0xff at character 12)"),
    (4, "not valid JSON: Expecting value at character 58"),
]


@pytest.mark.parametrize("line, message", BAD_MATH_LINES)
def test_each_bad_math_row_stops_the_run_naming_row_and_field(tmp_path, capsys, line, message):
    good, bad = fixture_lines(BAD_MATH)[0], fixture_lines(BAD_MATH)[line]
    path = file_with_lines(tmp_path, "rows.jsonl", [good, bad])
    error = run_failing(["math", path, "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert f"{path}: row 1 (line 2): {message}" in error
    assert not os.path.exists(tmp_path / "o" / "manifest.json")


def test_skip_bad_rows_counts_them_and_lists_the_first(tmp_path, capsys):
    out = str(tmp_path / "o")
    train = train_summary_skipping_bad_rows(out, "math", BAD_MATH)
    printed = capsys.readouterr().out
    assert train["read"] == 6 and train["kept"] == 2 and train["dropped"] == {"bad_row": 4}
    assert [message.split(": ")[1] for message in train["bad_rows_first"]] == [
        "row 1 (line 2)",
        "row 2 (line 3)",
        "row 3 (line 4)",
        "row 4 (line 5)",
    ]
    assert "first bad rows:" in printed and "field 'problem': expected text, got list" in printed


def test_non_utf8_text_in_parquet_names_row_and_field(tmp_path, capsys):
    rows = [json.loads(line) for line in fixture_lines(BAD_MATH)[:1]] * 3
    table = pa.Table.from_pylist(rows)
    solutions = pa.array([b"fine \\boxed{2}", b"also fine", b"broken \xff\xfe text"], type=pa.binary())
    table = table.set_column(table.schema.get_field_index("deepseek_solution"), "deepseek_solution", solutions)
    path = str(tmp_path / "bad.parquet")
    pq.write_table(table, path)
    error = run_failing(["math", path, "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert f"{path}: row 2: field 'deepseek_solution': text is not valid UTF-8 (byte 0xff at byte offset 7)" in error

    # the same bytes in a string column (pyarrow fails on the whole column) are found too
    as_string = pa.Array.from_buffers(pa.string(), 3, solutions.buffers())
    table = table.set_column(table.schema.get_field_index("deepseek_solution"), "deepseek_solution", as_string)
    pq.write_table(table, path)
    error = run_failing(["math", path, "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert f"{path}: row 2: field 'deepseek_solution': text is not valid UTF-8" in error


def test_parquet_missing_a_column_fails_before_reading_rows(tmp_path, capsys):
    rows = [json.loads(line) for line in fixture_lines(BAD_MATH)[:1]]
    del rows[0]["domain"]
    path = str(tmp_path / "no_domain.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    error = run_failing(["math", path, "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert f"{path}: missing column(s) domain for the openthoughts format (columns present:" in error


def test_dapo_prompt_of_the_wrong_type(tmp_path, capsys):
    row = {
        "data_source": "math_dapo",
        "prompt": "Solve 1 + 1.",
        "ability": "MATH",
        "reward_model": {"ground_truth": "2", "style": "rule"},
        "extra_info": {"index": "x"},
    }
    path = file_with_lines(tmp_path, "dapo.jsonl", [json.dumps(row).encode()])
    error = run_failing(["math", path, "--format", "dapo", "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert f"{path}: row 0 (line 1): field 'prompt': expected a non-empty list of chat messages, got str" in error


def test_eval_file_without_an_answer_column(tmp_path, capsys):
    path = file_with_lines(tmp_path, "eval.jsonl", [json.dumps({"problem": "1 + 1?", "solution": "2"}).encode()])
    error = run_failing(
        [
            "math",
            f"{FIXTURES}/generic_math.jsonl",
            "--format",
            "generic",
            "--problem-key",
            "question",
            "--answer-key",
            "final",
            "--eval",
            f"mine={path}",
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capsys,
    )
    assert f"{path}: row 0 (line 1): no answer column (looked for answer, Answer, final_answer, expected_answer;" in error


# (line of codeforces_bad_rows.jsonl, message after "row N (line N+1): ")
BAD_CODE_LINES = [
    (1, "field 'official_tests': tests are not valid JSON"),
    (2, "field 'examples[0]': expected a test with 'input' and 'output'"),
    (3, "field 'time_limit': expected a number, got str ('2 seconds')"),
]


@pytest.mark.parametrize("line, message", BAD_CODE_LINES)
def test_each_bad_code_row_stops_the_run_naming_row_and_field(tmp_path, capsys, line, message):
    path = file_with_lines(tmp_path, "rows.jsonl", [fixture_lines(BAD_CODE)[0], fixture_lines(BAD_CODE)[line]])
    error = run_failing(["code", path, "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert f"{path}: row 1 (line 2): {message}" in error


def test_bad_code_rows_can_be_skipped(tmp_path):
    solutions = f"{FIXTURES}/codeforces_bad_rows_submissions.jsonl"
    train = train_summary_skipping_bad_rows(str(tmp_path / "o"), "code", BAD_CODE, "--solutions", solutions)
    assert train["read"] == 5 and train["kept"] == 2 and train["dropped"] == {"bad_row": 3}


def test_undecodable_livecodebench_tests(tmp_path, capsys):
    path = f"{FIXTURES}/livecodebench_bad.jsonl"
    error = run_failing(
        [
            "code",
            f"{FIXTURES}/codeforces_problems.jsonl",
            "--eval",
            f"lcb={path}",
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capsys,
    )
    assert f"{path}: row 0 (line 1): field 'private_test_cases': cannot decode test cases" in error


AIME_GENERIC = [f"{FIXTURES}/aime2024.jsonl", "--format", "generic", "--answer-key", "answer"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["math", "/no/such/file.jsonl"], "/no/such/file.jsonl: no such file"),
        (["math", __file__], "unsupported file type"),
        (["math", f"{FIXTURES}/generic_math.jsonl", "--format", "generic"], "--format generic needs --solution-key"),
        (["math", *AIME_GENERIC, "--max-problem-tokens", "10"], "need --tokenizer PATH"),
        (["math", *AIME_GENERIC, "--prompt-template", "no placeholder"], "must contain {problem}"),
        (
            ["math", *AIME_GENERIC, "--tokenizer", "/no/such/folder", "--max-problem-tokens", "5"],
            "not a local tokenizer folder",
        ),
        (["math", *AIME_GENERIC, "--val-size", "2.5"], "whole number of rows"),
        (["code", f"{FIXTURES}/codeforces_problems.jsonl", "--prompt-template", "x"], "must contain {problem}"),
    ],
)
def test_bad_options_and_files_exit_2(tmp_path, capsys, argv, message):
    error = run_failing([*argv, "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert message in error


def test_usage_errors_exit_2(capsys):
    assert main(["math"]) == 2
    assert main(["code", "x.jsonl", "--eval", "noequals", "--out", "o"]) == 2
    assert main(["nonsense"]) == 2
    assert main(["--help"]) == 0
    capsys.readouterr()
