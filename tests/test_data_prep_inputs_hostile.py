"""Hostile and careless input files: each gives an error naming file/row/field, or a counted drop.

Found by an attack run over every input field (issue 13): before the fixes these were
tracebacks (RecursionError, OverflowError, TypeError, OSError) or rows written silently wrong
(NaN answers as "nan", a limit of 1e30 s, two problems sharing one reference solution).
"""

import base64
import gzip
import itertools
import json
import os
import pickle
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_avsd.data_prep import code_readers
from verl_avsd.data_prep.cli import main

FIXTURES = os.path.join(os.path.dirname(__file__), "data", "prep")


def fixture_row(name, index=0):
    with open(os.path.join(FIXTURES, name)) as handle:
        return json.loads(handle.readlines()[index])


OPENTHOUGHTS = fixture_row("openthoughts_metadata.jsonl")
CODEFORCES = fixture_row("codeforces_problems.jsonl")  # id 1900/A
SUBMISSION = {
    "source": "print(sum(map(int, open(0).read().split()[1:])))",
    "problem_id": "1900/A",
    "programmingLanguage": "Python 3",
    "verdict": "OK",
}
GENERIC_MATH = ["--format", "generic", "--problem-key", "q", "--answer-key", "a"]


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else "\n".join(json.dumps(row) for row in data).encode() + b"\n")
    return str(path)


RUNS = itertools.count()


def prep(tmp_path, *args):
    """Run `prep ARGS --out <a new folder> --quiet --val-size 0`: (exit status, out folder, train tally or None)."""
    out = str(tmp_path / f"out{next(RUNS)}")
    code = main([*args, "--out", out, "--quiet", "--val-size", "0"])
    manifest = os.path.join(out, "manifest.json")
    train = json.load(open(manifest))["summary"]["train"] if code == 0 else None
    return code, out, train


def fails(tmp_path, capsys, *args):
    capsys.readouterr()
    code, out, _ = prep(tmp_path, *args)
    error = capsys.readouterr().err
    assert code == 2, error
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    return error


def rows_of(out, name="train.parquet"):
    return pq.read_table(os.path.join(out, name)).to_pylist()


def code_run(tmp_path, problems, *args):
    solutions = write(tmp_path, "solutions.jsonl", [SUBMISSION])
    return write(tmp_path, "problems.jsonl", problems), "--solutions", solutions, *args


# --- JSON that Python's parser chokes on ---------------------------------------------------------

NESTED = b'{"problem": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def test_deeply_nested_json_is_a_bad_row_not_a_recursion_error(tmp_path, capsys):
    path = write(tmp_path, "rows.jsonl", json.dumps(OPENTHOUGHTS).encode() + b"\n" + NESTED + b"\n")
    error = fails(tmp_path, capsys, "math", path)
    assert f"{path}: row 1 (line 2): JSON nested too deeply to read" in error
    code, _, train = prep(tmp_path, "math", path, "--skip-bad-rows")
    assert code == 0 and train["kept"] == 1 and train["dropped"] == {"bad_row": 1}


def test_deeply_nested_json_array_file_and_tests_text(tmp_path, capsys):
    path = write(tmp_path, "rows.json", b"[" + NESTED + b"]")
    assert f"{path}: JSON nested too deeply to read" in fails(tmp_path, capsys, "math", path)
    nested_tests = dict(CODEFORCES, official_tests="[" * 100_000 + "]" * 100_000)
    args = code_run(tmp_path, [nested_tests])
    assert "row 0 (line 1): field 'official_tests': tests are JSON nested too deeply" in fails(tmp_path, capsys, "code", *args)


def test_repeated_key_is_an_error_not_a_silent_choice(tmp_path, capsys):
    line = b'{"problem": "What is 1+1?", ' + json.dumps(OPENTHOUGHTS)[1:].encode()
    path = write(tmp_path, "rows.jsonl", line + b"\n")
    error = fails(tmp_path, capsys, "math", path)
    assert f"{path}: row 0 (line 1): field 'problem': key 'problem' appears twice in one JSON object" in error


def test_over_long_numbers(tmp_path, capsys):
    path = write(tmp_path, "rows.jsonl", b'{"q": "x?", "a": ' + b"9" * 5000 + b"}\n")
    error = fails(tmp_path, capsys, "math", path, *GENERIC_MATH)
    assert f"{path}: row 0 (line 1): not usable JSON: Exceeds the limit" in error
    # a 400-digit integer answer is exact text, not a float overflow
    path = write(tmp_path, "big.jsonl", b'{"q": "How big?", "a": ' + b"9" * 400 + b"}\n")
    code, out, _ = prep(tmp_path, "math", path, *GENERIC_MATH)
    assert code == 0 and rows_of(out)[0]["reward_model"]["ground_truth"] == "9" * 400
    line = json.dumps(CODEFORCES).replace('"time_limit": 1.0', '"time_limit": ' + "9" * 400)
    args = code_run(tmp_path, [json.loads(line)])
    assert "field 'time_limit': number too large (400 digits)" in fails(tmp_path, capsys, "code", *args)


# --- encodings and file kinds ------------------------------------------------------------------


def test_utf8_byte_order_mark_is_skipped(tmp_path):
    for name, data in (("bom.jsonl", json.dumps(OPENTHOUGHTS)), ("bom.json", json.dumps([OPENTHOUGHTS]))):
        path = write(tmp_path, name, b"\xef\xbb\xbf" + data.encode())
        code, _, train = prep(tmp_path, "math", path)
        assert code == 0 and train["kept"] == 1


def test_wrong_encodings_and_kinds_are_file_errors(tmp_path, capsys):
    utf16 = write(tmp_path, "rows.jsonl", (json.dumps(OPENTHOUGHTS) + "\n").encode("utf-16"))
    assert f"{utf16}: is UTF-16 text; data prep reads UTF-8" in fails(tmp_path, capsys, "math", utf16)
    parquet_named_jsonl = str(tmp_path / "really_parquet.jsonl")
    pq.write_table(pa.Table.from_pylist([OPENTHOUGHTS]), parquet_named_jsonl)
    error = fails(tmp_path, capsys, "math", parquet_named_jsonl)
    assert f"{parquet_named_jsonl}: is a parquet file, not JSON" in error
    assert f"{tmp_path}: is a folder, not a file" in fails(tmp_path, capsys, "math", str(tmp_path))
    empty = write(tmp_path, "empty.jsonl", b"")
    assert f"{empty}: has no rows" in fails(tmp_path, capsys, "math", empty)
    empty_parquet = str(tmp_path / "empty.parquet")
    pq.write_table(pa.Table.from_pylist([OPENTHOUGHTS]).slice(0, 0), empty_parquet)
    assert f"{empty_parquet}: has no rows" in fails(tmp_path, capsys, "math", empty_parquet)


def test_lone_surrogate_text_is_named(tmp_path, capsys):
    line = json.dumps(OPENTHOUGHTS).replace('"Find', '"\\ud800Find')
    path = write(tmp_path, "rows.jsonl", line.encode() + b"\n")
    error = fails(tmp_path, capsys, "math", path)
    assert f"{path}: row 0 (line 1): field 'problem': text holds a lone surrogate U+D800 at character 0" in error


def test_gzipped_json_lines_and_truncated_gzip(tmp_path, capsys):
    path = str(tmp_path / "rows.jsonl.gz")
    with gzip.open(path, "wb") as handle:
        handle.write((json.dumps(OPENTHOUGHTS) + "\n").encode() * 50)
    code, _, train = prep(tmp_path, "math", path, "--no-dedupe")
    assert code == 0 and train["kept"] == 50
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    assert f"{path}: cannot read the file: Compressed file ended" in fails(tmp_path, capsys, "math", path)


def test_corrupt_parquet_pages_and_repeated_columns(tmp_path, capsys):
    path = str(tmp_path / "corrupt.parquet")
    pq.write_table(pa.Table.from_pylist([dict(OPENTHOUGHTS, problem=f"p{i}" * 50) for i in range(200)]), path)
    data = bytearray(open(path, "rb").read())
    data[8 : len(data) // 2] = b"\x55" * (len(data) // 2 - 8)  # pages destroyed, footer intact
    open(path, "wb").write(bytes(data))
    assert f"{path}: cannot read rows from row 0 on (corrupt file?)" in fails(tmp_path, capsys, "math", path)
    table = pa.Table.from_pylist([OPENTHOUGHTS]).append_column("problem", pa.array(["Another?"]))
    pq.write_table(table, path)
    assert f"{path}: column(s) problem appear more than once" in fails(tmp_path, capsys, "math", path)


# --- numbers: NaN counts as null, infinity and out-of-range limits are errors -------------------


def test_nan_answers_are_dropped_and_infinite_ones_are_errors(tmp_path, capsys):
    path = write(tmp_path, "rows.jsonl", b'{"q": "x?", "a": NaN}\n{"q": "y?", "a": 3}\n')
    code, out, train = prep(tmp_path, "math", path, *GENERIC_MATH)
    assert code == 0 and train["dropped"] == {"empty_answer": 1}
    assert [row["reward_model"]["ground_truth"] for row in rows_of(out)] == ["3"]
    dapo = str(tmp_path / "dapo.parquet")
    nan_truth = {"ground_truth": float("nan"), "style": "rule"}
    row = {"prompt": [{"role": "user", "content": "1+1?"}], "reward_model": nan_truth}
    pq.write_table(pa.Table.from_pylist([row, dict(row, prompt=[{"role": "user", "content": "2+2?"}])]), dapo)
    code, _, train = prep(tmp_path, "math", dapo, "--format", "dapo")
    assert code == 0 and train["kept"] == 0 and train["dropped"] == {"empty_answer": 2}
    for literal in (b"Infinity", b"-Infinity", b"1e400"):
        path = write(tmp_path, "inf.jsonl", b'{"q": "x?", "a": ' + literal + b"}\n")
        error = fails(tmp_path, capsys, "math", path, *GENERIC_MATH)
        assert f"{path}: row 0 (line 1): field 'a': expected a finite number" in error


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("time_limit", "-1", "time limit must be in (0, 600] seconds, got -1"),
        ("time_limit", "0", "time limit must be in (0, 600] seconds, got 0"),
        ("time_limit", "1e30", "time limit must be in (0, 600] seconds, got 1e+30"),
        ("time_limit", "Infinity", "expected a finite number, got inf"),
        ("memory_limit", "1", "memory limit must be in [16, 65536] MB, got 1"),
        ("memory_limit", "-1", "memory limit must be in [16, 65536] MB, got -1"),
        ("memory_limit", "268435456", "must be in [16, 65536] MB, got 2.68435e+08 (given in bytes or KB?)"),
    ],
)
def test_run_limits_the_sandbox_cannot_use(tmp_path, capsys, field, value, message):
    line = json.dumps(dict(CODEFORCES, **{field: 12345.5})).replace("12345.5", value)
    args = code_run(tmp_path, [json.loads(line)])
    error = fails(tmp_path, capsys, "code", *args)
    assert f"row 0 (line 1): field '{field}': " in error and message in error


def test_nan_run_limits_get_the_defaults(tmp_path):
    line = json.dumps(dict(CODEFORCES, time_limit=1.5, memory_limit=2.5)).replace("1.5", "NaN").replace("2.5", "NaN")
    code, out, _ = prep(tmp_path, "code", *code_run(tmp_path, [json.loads(line)]))
    extra_info = rows_of(out)[0]["extra_info"]
    assert code == 0 and (extra_info["time_limit_s"], extra_info["memory_mb"]) == (2.0, 256.0)


# --- ids: one id, one problem ---------------------------------------------------------------


def test_two_code_problems_sharing_an_id_do_not_share_a_reference(tmp_path, capsys):
    other = dict(CODEFORCES, title="Product", description="Print the product of the elements.")
    args = code_run(tmp_path, [CODEFORCES, other])
    error = fails(tmp_path, capsys, "code", *args)
    assert "row 1 (line 2): field 'id': problem id '1900/A' is already the id of a different problem (row 0)" in error
    code, out, train = prep(tmp_path, "code", *args, "--skip-bad-rows")
    assert code == 0 and train["kept"] == 1 and train["dropped"] == {"bad_row": 1}
    assert [row["extra_info"]["problem"].split("\n")[0] for row in rows_of(out)] == [CODEFORCES["title"]]


def test_math_and_eval_ids_name_one_problem(tmp_path, capsys):
    rows = [{"q": "What is 1+1?", "a": "2", "id": 7}, {"q": "What is 2+2?", "a": "4", "id": 7}]
    path = write(tmp_path, "rows.jsonl", rows)
    error = fails(tmp_path, capsys, "math", path, *GENERIC_MATH, "--id-key", "id")
    assert f"{path}: row 1 (line 2): field 'id': problem id '7' is already the id of a different problem" in error
    eval_rows = [{"id": 1, "problem": "1+1?", "answer": "2"}, {"id": 1, "problem": "2+2?", "answer": "4"}]
    eval_path = write(tmp_path, "eval.jsonl", eval_rows)
    train = write(tmp_path, "train.jsonl", [OPENTHOUGHTS])
    error = fails(tmp_path, capsys, "math", train, "--eval", f"aime={eval_path}")
    assert f"{eval_path}: row 1 (line 2): field 'id': problem id '1' is already the id" in error
    path = write(tmp_path, "list_id.jsonl", [{"q": "x?", "a": "1", "id": [1]}])
    error = fails(tmp_path, capsys, "math", path, *GENERIC_MATH, "--id-key", "id")
    assert "field 'id': expected an id (text or a number), got list" in error


def test_solution_rows_that_cannot_be_joined(tmp_path, capsys):
    problems = write(tmp_path, "problems.jsonl", [CODEFORCES])
    null_id = write(tmp_path, "generic.jsonl", [{"problem_id": None, "code": "print(1)"}])
    error = fails(tmp_path, capsys, "code", problems, "--solutions", null_id, "--solutions-format", "generic")
    assert f"{null_id}: row 0 (line 1): field 'problem_id': no problem id" in error
    for languages in ([[3]], "py", [3, 3]):
        solutions = {"language": languages, "solution": ["print(1)"]}
        row = {"cf_contest_id": 1900, "cf_index": "A", "name": "x", "solutions": solutions}
        contests = write(tmp_path, "contests.jsonl", [row])
        error = fails(tmp_path, capsys, "code", problems, "--solutions", contests)
        assert "field 'solutions.language': expected as many integer language codes as solutions" in error


def test_livecodebench_function_name_and_decompression_bomb(tmp_path, capsys, monkeypatch):
    problems, solutions = code_run(tmp_path, [CODEFORCES])[0], code_run(tmp_path, [CODEFORCES])[2]
    call_based = fixture_row("livecodebench.jsonl", 1)
    lcb = write(tmp_path, "lcb.jsonl", [dict(call_based, metadata='{"func_name": 5}')])
    error = fails(tmp_path, capsys, "code", problems, "--solutions", solutions, "--eval", f"lcb={lcb}")
    assert f"{lcb}: row 0 (line 1): field 'metadata': func_name must be a Python identifier, got 5" in error
    monkeypatch.setattr(code_readers, "MAX_DECOMPRESSED_TESTS_BYTES", 1000)
    bomb = base64.b64encode(zlib.compress(pickle.dumps("[" + " " * 5000 + "]"))).decode()
    lcb = write(tmp_path, "bomb.jsonl", [dict(fixture_row("livecodebench.jsonl"), private_test_cases=bomb)])
    error = fails(tmp_path, capsys, "code", problems, "--solutions", solutions, "--eval", f"lcb={lcb}")
    assert "field 'private_test_cases': cannot decode test cases (ValueError: test cases decompress to more" in error


# --- rows the contract would refuse ----------------------------------------------------------


def test_a_view_already_in_the_prompt_is_a_counted_drop(tmp_path):
    statement = "Prove that (a+b)^2 = a^2 + 2ab + b^2 for all reals."
    solution = "Expand.\n\nSo $\\boxed{(a+b)^2 = a^2 + 2ab + b^2}$"
    proof = dict(OPENTHOUGHTS, problem=statement, ground_truth_solution=solution)
    path = write(tmp_path, "rows.jsonl", [OPENTHOUGHTS, proof])
    code, out, train = prep(tmp_path, "math", path)
    assert code == 0 and train["kept"] == 1 and train["dropped"] == {"view_in_prompt": 1}
    assert [row["extra_info"]["problem"] for row in rows_of(out)] == [OPENTHOUGHTS["problem"]]


def test_null_test_output_is_an_error_not_an_empty_expected_output(tmp_path, capsys):
    tests = [{"input": "3\n1 2 3\n", "output": None}]
    args = code_run(tmp_path, [dict(CODEFORCES, official_tests=tests)])
    error = fails(tmp_path, capsys, "code", *args)
    assert "row 0 (line 1): field 'official_tests[0].output': a test input or output is null" in error
    line = json.dumps(dict(CODEFORCES, time_limit=2000))
    error = fails(tmp_path, capsys, "code", *code_run(tmp_path, [json.loads(line)]))
    assert "field 'time_limit': time limit must be in (0, 600] seconds, got 2000 (given in milliseconds?)" in error


def test_reference_is_the_program_not_the_sample_output(tmp_path):
    program = SUBMISSION["source"]
    generation = f"<think>...</think>\n```python\n{program}\n```\nFor the sample:\n```text\n6\n```\n"
    cots = write(tmp_path, "cots.jsonl", [{"id": "1900A", "generation": generation, "finish_reason": "stop"}])
    problems = write(tmp_path, "problems.jsonl", [CODEFORCES])
    code, out, _ = prep(tmp_path, "code", problems, "--solutions", cots)
    reference = rows_of(out)[0]["extra_info"]["views"][0]
    assert code == 0 and reference == {"name": "reference", "text": f"```python\n{program}\n```"}


def test_a_program_holding_backticks_keeps_its_fence_whole(tmp_path):
    program = 'print("```", sum(map(int, open(0).read().split()[1:])))'
    solutions = write(tmp_path, "solutions.jsonl", [dict(SUBMISSION, source=program)])
    problems = write(tmp_path, "problems.jsonl", [CODEFORCES])
    code, out, _ = prep(tmp_path, "code", problems, "--solutions", solutions)
    reference = rows_of(out)[0]["extra_info"]["views"][0]
    assert code == 0 and reference == {"name": "reference", "text": f"````python\n{program}\n````"}


def test_livecodebench_test_type_of_the_wrong_type_and_non_utf8_dataset_names(tmp_path):
    problems, _, solutions = code_run(tmp_path, [CODEFORCES])
    cases = json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": ["stdin"]}])
    lcb = write(tmp_path, "lcb.jsonl", [dict(fixture_row("livecodebench.jsonl"), private_test_cases=cases)])
    code, out, _ = prep(tmp_path, "code", problems, "--solutions", solutions, "--eval", f"lcb={lcb}")
    hidden = json.loads(rows_of(out, "eval_lcb.parquet")[0]["reward_model"]["ground_truth"])
    assert code == 0 and hidden["inputs"][-1] == "1 2\n"
    # --format generic names the dataset after its file: a non-UTF-8 file name must not crash the parquet writer
    path = os.path.join(str(tmp_path), os.fsdecode(b"mine\xff.jsonl"))
    with open(path, "w") as handle:
        handle.write(json.dumps({"q": "What is 1+1?", "a": "2"}) + "\n")
    code, out, _ = prep(tmp_path, "math", path, *GENERIC_MATH)
    assert code == 0 and rows_of(out)[0]["data_source"] == "math/mine\\udcff"
