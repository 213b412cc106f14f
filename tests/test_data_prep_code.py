"""`verl-avsd prep code` end to end: codeforces problems joined with reference solutions, LiveCodeBench eval."""

import json
import os

import pyarrow.parquet as pq
import pytest

from verl_avsd.data_prep.cli import main
from verl_avsd.data_prep.contract import contract_problems

FIXTURES = os.path.join(os.path.dirname(__file__), "data", "prep")
PROBLEMS = os.path.join(FIXTURES, "codeforces_problems.jsonl")
SOLUTIONS = [
    "--solutions",
    f"{FIXTURES}/codeforces_cots.jsonl",
    "--solutions",
    f"{FIXTURES}/codeforces_submissions.jsonl",
]
LCB = ["--eval", f"lcb={FIXTURES}/livecodebench.jsonl"]


def rows_in(out, *names):
    rows = []
    for name in names:
        path = os.path.join(out, name)
        if os.path.exists(path):
            rows += pq.read_table(path).to_pylist()
    return rows


def manifest_of(out):
    with open(os.path.join(out, "manifest.json")) as handle:
        return json.load(handle)


def prep_code(out, *args):
    """`prep code ARGS --out OUT --quiet --val-size 0`, which must succeed; returns OUT."""
    assert main(["code", *args, "--out", out, "--quiet", "--val-size", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def code_run(tmp_path_factory):
    out = prep_code(str(tmp_path_factory.mktemp("code")), PROBLEMS, *SOLUTIONS, *LCB)
    rows = {row["extra_info"]["problem_id"]: row for row in rows_in(out, "train.parquet")}
    return out, manifest_of(out), rows


def test_summary_counts_problems_and_solutions(code_run):
    _, manifest, rows = code_run
    assert manifest["summary"]["train"] == {
        "read": 10,
        "kept": 4,
        "dropped": {"file_io_problem": 1, "interactive_problem": 1, "needs_checker": 1, "no_hidden_tests": 1},
        "filtered": {"duplicate_problem": 1, "eval_overlap_exact": 1},  # 1950/A repeats 1900/A; 1990/A is in LCB
    }
    assert manifest["summary"]["solutions"] == {
        "read": 12,
        "kept": 9,
        "dropped": {"no_code_block": 1, "not_accepted": 1, "unfinished_generation": 1},
        "filtered": {},
    }
    assert sorted(rows) == ["1900/A", "1900/B", "1900/F", "1900/H"]
    assert manifest["views"] == {
        "names": ["reference", "hint", "feedback"],
        "rows_with_view": {"hint": 4, "reference": 4},
    }


def test_reference_is_the_accepted_one_in_the_students_language(code_run):
    _, _, rows = code_run

    def reference(problem_id):
        return rows[problem_id]["extra_info"]["views"][0]["text"]

    assert reference("1900/A") == "```python\ninput()\nprint(sum(map(int, input().split())))\n```"  # accepted beats cots
    assert reference("1900/B").startswith("```python\nn = int(input())\na = sorted(")  # both unverified: python wins
    assert reference("1900/F") == "```python\ns = input()\nprint(s[::-1])\n```"  # accepted python over accepted C++
    assert "heapq.heappush" in reference("1900/H")  # joined by contestId + problem_index
    hint = rows["1900/H"]["extra_info"]["views"][1]
    assert hint["name"] == "hint" and "a heap / priority queue" in hint["text"]


def test_hidden_tests_reward_public_tests_feedback_and_limits(code_run):
    _, _, rows = code_run
    row = rows["1900/B"]
    hidden = json.loads(row["reward_model"]["ground_truth"])
    public = json.loads(row["extra_info"]["public_tests"])
    assert hidden == {"inputs": ["4\n10 1 7 3\n", "2\n5 100\n"], "outputs": ["2\n", "95\n"]}
    assert public == {"inputs": ["4\n10 1 7 3\n"], "outputs": ["2\n"]}
    assert row["extra_info"]["time_limit_s"] == 2.0 and row["extra_info"]["memory_mb"] == 512.0
    assert row["extra_info"]["language"] == "python"
    prompt = row["prompt"][0]["content"]
    assert "Example 1\nInput:\n4\n10 1 7 3\nOutput:\n2" in prompt  # the public example is in the statement
    assert "5 100" not in prompt  # a hidden test is not
    for row in rows.values():
        assert contract_problems(row) == []
        assert row["data_source"] == "code/codeforces" and row["ability"] == "code"
        assert all(view["text"] not in row["prompt"][0]["content"] for view in row["extra_info"]["views"])


def test_livecodebench_eval_rows(code_run):
    out, manifest, _ = code_run
    rows = {row["extra_info"]["problem_id"]: row for row in rows_in(out, "eval_lcb.parquet")}
    assert manifest["summary"]["eval:lcb"] == {"read": 3, "kept": 3, "dropped": {}, "filtered": {}}
    functional = rows["3000"]
    hidden = json.loads(functional["reward_model"]["ground_truth"])
    assert hidden == {
        "inputs": ["[1, 2, 3]\n4", "[5]\n1", "[1, 1]\n3"],
        "outputs": ["1", "0", "1"],
        "fn_name": "countPairs",
    }
    assert json.loads(functional["extra_info"]["public_tests"])["inputs"] == ["[1, 2, 3]\n4"]
    assert "class Solution:\n    def countPairs(self, nums: List[int], k: int) -> int:" in functional["prompt"][0]["content"]
    stdin = json.loads(rows["abc400_a"]["reward_model"]["ground_truth"])  # compressed private tests
    assert stdin == {"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", "10\n"]}
    for row in rows.values():
        assert row["extra_info"]["views"] == [] and row["extra_info"]["split"] == "eval"
        assert row["data_source"] == "code/lcb" and contract_problems(row) == []


def test_without_solutions_problems_are_dropped_or_kept_viewless(tmp_path):
    out = prep_code(str(tmp_path / "o"), PROBLEMS, "--no-decontaminate")
    train = manifest_of(out)["summary"]["train"]
    assert train["dropped"]["no_reference_solution"] == 6 and train["kept"] == 0
    assert not os.path.exists(os.path.join(out, "train.parquet"))
    out2 = prep_code(str(tmp_path / "o2"), PROBLEMS, "--no-decontaminate", "--keep-without-reference")
    rows = rows_in(out2, "train.parquet")
    assert len(rows) == 5 and all(row["extra_info"]["views"] == [] for row in rows)
    assert all(json.loads(row["extra_info"]["public_tests"])["inputs"] for row in rows)  # feedback still possible


def test_max_hidden_tests_and_cpp_students(tmp_path):
    out = prep_code(str(tmp_path / "o"), PROBLEMS, *SOLUTIONS, "--max-hidden-tests", "1", "--language", "cpp")
    rows = {row["extra_info"]["problem_id"]: row for row in rows_in(out, "train.parquet")}
    assert json.loads(rows["1900/A"]["reward_model"]["ground_truth"])["inputs"] == ["3\n1 2 3\n"]
    assert rows["1900/B"]["extra_info"]["views"][0]["text"].startswith("```cpp\n#include")  # C++ now preferred
    assert rows["1900/F"]["extra_info"]["views"][0]["text"].startswith("```cpp\n#include")
    assert "Write a C++17 program" in rows["1900/A"]["prompt"][0]["content"]


def test_generic_problems_with_inline_reference_and_code_contests_solutions(tmp_path):
    problems = tmp_path / "mine.jsonl"
    problems.write_text(
        "\n".join(
            json.dumps(row)
            for row in [
                {
                    "pid": "7/A",
                    "statement": "Print the double of n.",
                    "hidden": {"inputs": ["2\n"], "outputs": ["4\n"]},
                    "public": [{"input": "1\n", "output": "2\n"}],
                    "ref": "print(2 * int(input()))",
                    "tl": 3,
                    "mem": 64,
                },
                {
                    "pid": "7/B",
                    "statement": "Print n squared.",
                    "hidden": json.dumps({"inputs": ["3\n"], "outputs": ["9\n"]}),
                    "public": None,
                    "ref": "",
                    "tl": None,
                    "mem": None,
                },
            ]
        )
    )
    solutions = tmp_path / "code_contests.jsonl"
    solutions.write_text(
        json.dumps(
            {
                "name": "7_B. Square",
                "cf_contest_id": 7,
                "cf_index": "B",
                "solutions": {"language": [2, 3], "solution": ["int main(){}", "n=int(input())\nprint(n*n)"]},
            }
        )
    )
    out = prep_code(
        str(tmp_path / "o"),
        str(problems),
        *["--format", "generic", "--problem-key", "statement", "--tests-key", "hidden", "--public-tests-key", "public"],
        *["--id-key", "pid", "--reference-key", "ref", "--time-limit-key", "tl", "--memory-key", "mem"],
        *["--solutions", str(solutions)],
    )
    rows = {row["extra_info"]["problem_id"]: row for row in rows_in(out, "train.parquet")}
    assert rows["7/A"]["extra_info"]["views"][0]["text"] == "```python\nprint(2 * int(input()))\n```"
    assert (rows["7/A"]["extra_info"]["time_limit_s"], rows["7/A"]["extra_info"]["memory_mb"]) == (3.0, 64.0)
    assert rows["7/B"]["extra_info"]["views"][0]["text"] == "```python\nn=int(input())\nprint(n*n)\n```"
    assert (rows["7/B"]["extra_info"]["time_limit_s"], rows["7/B"]["extra_info"]["memory_mb"]) == (2.0, 256.0)
    assert json.loads(rows["7/B"]["extra_info"]["public_tests"]) == {"inputs": [], "outputs": []}
    assert {row["data_source"] for row in rows.values()} == {"code/mine"}
