"""`verl-avsd prep math` end to end on the hand-written fixtures: rows, views, filters, summary, manifest."""

import hashlib
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_avsd.data_prep.boxed import contains_box
from verl_avsd.data_prep.cli import main
from verl_avsd.data_prep.contract import ROW_SCHEMA, contract_problems

FIXTURES = os.path.join(os.path.dirname(__file__), "data", "prep")
OPENTHOUGHTS = os.path.join(FIXTURES, "openthoughts_metadata.jsonl")
EVALS = [
    "--eval",
    f"aime2024={FIXTURES}/aime2024.jsonl",
    "--eval",
    f"aime2025={FIXTURES}/aime2025.jsonl",
    "--eval",
    f"hmmt2025={FIXTURES}/hmmt_feb_2025.jsonl",
]


def read_rows(path):
    return pq.read_table(path).to_pylist()


def prepared_rows(out):
    rows = read_rows(os.path.join(out, "train.parquet"))
    if os.path.exists(os.path.join(out, "validation.parquet")):
        rows += read_rows(os.path.join(out, "validation.parquet"))
    return rows


def views_of(row):
    return {view["name"]: view["text"] for view in row["extra_info"]["views"]}


def manifest_of(out):
    with open(os.path.join(out, "manifest.json")) as handle:
        return json.load(handle)


def prep_math(out, *args):
    """`prep math ARGS --out OUT --quiet`, which must succeed; returns OUT."""
    assert main(["math", *args, "--out", out, "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def openthoughts_run(tmp_path_factory):
    out = prep_math(str(tmp_path_factory.mktemp("ot")), OPENTHOUGHTS, *EVALS)
    return out, manifest_of(out), prepared_rows(out)


def test_summary_counts_every_row_by_reason(openthoughts_run):
    _, manifest, rows = openthoughts_run
    train = manifest["summary"]["train"]
    assert train["read"] == 17
    assert train["dropped"] == {
        "empty_boxed_answer": 1,  # row 15
        "empty_solution": 2,  # rows 6 ("") and 12 (null)
        "no_boxed_answer": 1,  # row 7
        "unbalanced_boxed": 1,  # row 11
    }
    assert train["filtered"] == {
        "domain": 2,  # rows 4 (code) and 5 (biology): OpenThoughts defaults to --domain math
        "duplicate_problem": 1,  # row 8 repeats row 0 up to whitespace
        "eval_overlap_exact": 1,  # row 9 is an AIME 2024 problem
        "eval_overlap_whitespace": 1,  # row 10 is an AIME 2025 problem with other whitespace
    }
    assert train["kept"] == len(rows) == 7
    assert manifest["summary"]["eval:aime2025"] == {
        "read": 3,
        "kept": 2,
        "dropped": {"empty_problem": 1},
        "filtered": {},
    }


def test_answers_come_from_the_last_balanced_box(openthoughts_run):
    _, _, rows = openthoughts_run
    answers = {row["extra_info"]["problem"]: row["reward_model"]["ground_truth"] for row in rows}
    assert answers["Find the sum of all positive divisors of 36."] == "91"
    assert answers["A fair coin is tossed twice. What is the probability of exactly one head?"] == "\\frac{1}{2}"
    assert answers["Solve $2x + 6 = 14$ for $x$."] == "4"  # \fbox
    assert answers["Compute $3! + 4!$."] == "30"  # the last of two boxes
    assert answers["List the real roots of $x^2 - 3x + 2 = 0$ as a set."] == "\\{1, 2\\}"


def test_every_row_follows_the_contract_and_keeps_views_out_of_the_prompt(openthoughts_run):
    _, _, rows = openthoughts_run
    for row in rows:
        assert contract_problems(row) == []
        assert row["data_source"] == "math/openthoughts" and row["ability"] == "math"
        prompt = row["prompt"][0]["content"]
        assert row["prompt"][0]["role"] == "user" and row["extra_info"]["problem"] in prompt
        for name, text in views_of(row).items():
            if name != "answer":
                assert text not in prompt
        assert views_of(row)["answer"] == row["reward_model"]["ground_truth"]


def test_no_partial_view_contains_its_answer(openthoughts_run):
    _, _, rows = openthoughts_run
    partials = 0
    for row in rows:
        views = views_of(row)
        answer = row["reward_model"]["ground_truth"]
        assert list(views) in (["full", "partial", "answer"], ["full", "answer"])
        if "partial" in views:
            partials += 1
            assert not contains_box(views["partial"])
            assert "\\boxed{" + answer + "}" not in views["partial"]
            if len(answer) >= 3:
                assert answer not in views["partial"]
            assert views["full"].startswith(views["partial"].split("\n")[0])
    assert partials == 6  # "Compute 3! + 4!" boxes 6 early: one reasoning step, no partial view


def test_manifest_records_inputs_outputs_options_and_views(openthoughts_run):
    out, manifest, rows = openthoughts_run
    with open(OPENTHOUGHTS, "rb") as handle:
        expected_sha = hashlib.sha256(handle.read()).hexdigest()
    train_input = [entry for entry in manifest["inputs"] if entry["role"] == "train"]
    assert train_input == [{"path": os.path.abspath(OPENTHOUGHTS), "role": "train", "rows": 17, "sha256": expected_sha}]
    assert {entry["role"] for entry in manifest["inputs"]} == {
        "train",
        "eval:aime2024",
        "eval:aime2025",
        "eval:hmmt2025",
    }
    outputs = {entry["path"]: entry for entry in manifest["outputs"]}
    assert set(outputs) == {
        "train.parquet",
        "validation.parquet",
        "eval_aime2024.parquet",
        "eval_aime2025.parquet",
        "eval_hmmt2025.parquet",
    }
    assert outputs["train.parquet"]["rows"] + outputs["validation.parquet"]["rows"] == len(rows)
    for name, entry in outputs.items():
        with open(os.path.join(out, name), "rb") as handle:
            assert entry["sha256"] == hashlib.sha256(handle.read()).hexdigest()
    assert manifest["views"] == {
        "names": ["full", "partial", "answer"],
        "rows_with_view": {"answer": 7, "full": 7, "partial": 6},
    }
    assert manifest["options"]["domains"] == ["math"] and manifest["options"]["val_size"] == 0.05
    assert manifest["task"] == "math" and manifest["command"][0] == "math"


def test_validation_split_is_seeded_and_indexes_are_positions(openthoughts_run, tmp_path):
    out, _, _ = openthoughts_run
    validation = read_rows(os.path.join(out, "validation.parquet"))
    train = read_rows(os.path.join(out, "train.parquet"))
    assert len(validation) == 1 and len(train) == 6
    assert [row["extra_info"]["index"] for row in train] == list(range(6))
    assert {row["extra_info"]["split"] for row in train} == {"train"}
    assert validation[0]["extra_info"]["split"] == "validation"
    again = prep_math(str(tmp_path / "again"), OPENTHOUGHTS, *EVALS)
    assert read_rows(os.path.join(again, "validation.parquet")) == validation  # same seed, same split
    assert pq.read_table(os.path.join(out, "train.parquet")).schema.equals(ROW_SCHEMA)


def test_eval_sets_have_answers_and_no_views(openthoughts_run):
    out, _, _ = openthoughts_run
    aime25 = read_rows(os.path.join(out, "eval_aime2025.parquet"))
    hmmt = read_rows(os.path.join(out, "eval_hmmt2025.parquet"))
    assert [row["reward_model"]["ground_truth"] for row in aime25] == ["100", "2"]  # integers in the file
    assert [row["reward_model"]["ground_truth"] for row in hmmt] == ["12", "55"]  # "$55$" unwrapped
    for row in aime25 + hmmt:
        assert row["extra_info"]["views"] == [] and row["extra_info"]["split"] == "eval"
        assert contract_problems(row) == []
    assert {row["data_source"] for row in hmmt} == {"math/hmmt2025"}


def test_parquet_input_gives_the_same_rows_as_jsonl(openthoughts_run, tmp_path):
    out, _, _ = openthoughts_run
    with open(OPENTHOUGHTS) as handle:
        records = [json.loads(line) for line in handle]
    parquet_input = str(tmp_path / "openthoughts_metadata.parquet")
    pq.write_table(pa.Table.from_pylist(records), parquet_input)
    parquet_out = prep_math(str(tmp_path / "from_parquet"), parquet_input, *EVALS)
    assert prepared_rows(parquet_out) == prepared_rows(out)


def test_domain_and_source_filters(tmp_path):
    out = prep_math(
        str(tmp_path / "o"),
        OPENTHOUGHTS,
        *["--domain", "math", "--domain", "code", "--source", "synthetic_math", "--no-dedupe"],
    )
    train = manifest_of(out)["summary"]["train"]
    # rows of other domains (1) and other sources (13) are filtered before their content is judged
    assert train["filtered"] == {"domain": 1, "source": 13}
    assert train["kept"] == 3 and {row["extra_info"]["source"] for row in prepared_rows(out)} == {"synthetic_math"}


def test_deepseek_solution_source_builds_views_from_it(tmp_path):
    out = prep_math(str(tmp_path / "o"), OPENTHOUGHTS, "--solution-source", "deepseek", "--val-size", "0")
    rows = {row["extra_info"]["problem"]: row for row in prepared_rows(out)}
    row = rows["A fair coin is tossed twice. What is the probability of exactly one head?"]
    assert views_of(row)["full"] == "**Final Answer**\n\\boxed{\\dfrac{1}{2}}"
    assert row["reward_model"]["ground_truth"] == "\\frac{1}{2}"  # the answer still comes from the ground truth
    # rows 6 and 12 have a DeepSeek solution, so they are no longer dropped for an empty one
    assert rows["How many edges does a cube have?"]["reward_model"]["ground_truth"] == "12"


def test_dapo_rows_get_only_the_answer_view_and_lose_dapos_wrapper(tmp_path):
    out = prep_math(
        str(tmp_path / "o"),
        f"{FIXTURES}/dapo_math.jsonl",
        *["--format", "dapo", "--val-size", "0", "--eval", f"aime2025={FIXTURES}/aime2025.jsonl"],
    )
    train = manifest_of(out)["summary"]["train"]
    assert train == {
        "read": 5,
        "kept": 2,
        "dropped": {"empty_answer": 1},
        "filtered": {"duplicate_problem": 1, "eval_overlap_exact": 1},
    }
    rows = prepared_rows(out)
    assert [row["extra_info"]["problem"] for row in rows] == [
        "In triangle $ABC$, $AB = 5$, $BC = 12$ and $AC = 13$. Find the area of the triangle.",
        "Find the smallest prime greater than 100.",
    ]
    assert [row["extra_info"]["views"] for row in rows] == [
        [{"name": "answer", "text": "30"}],
        [{"name": "answer", "text": "101"}],
    ]
    assert [row["extra_info"]["problem_id"] for row in rows] == ["a3f1", "b772"]
    assert all("Remember to put your answer" not in row["prompt"][0]["content"] for row in rows)
    assert {row["data_source"] for row in rows} == {"math/dapo"}


def test_generic_reader_with_named_columns(tmp_path):
    out = prep_math(
        str(tmp_path / "o"),
        f"{FIXTURES}/generic_math.jsonl",
        *["--format", "generic", "--problem-key", "question", "--solution-key", "worked", "--answer-key", "final"],
        *["--id-key", "qid", "--name", "mine", "--val-size", "0"],
    )
    rows = {row["extra_info"]["problem_id"]: row for row in prepared_rows(out)}
    assert rows["g1"]["reward_model"]["ground_truth"] == "144"
    assert rows["g2"]["reward_model"]["ground_truth"] == "256"  # null answer column: the solution's box
    assert rows["g3"]["reward_model"]["ground_truth"] == "15"  # no box, the answer column
    assert list(views_of(rows["g3"])) == ["full", "answer"]
    assert list(views_of(rows["g1"])) == ["full", "answer"]  # "144" is stated in the first step already
    assert views_of(rows["g2"])["partial"] == "Doubling 1 eight times: 2, 4, 8, 16."
    assert {row["data_source"] for row in rows.values()} == {"math/mine"}


def test_custom_prompt_template_and_system_prompt(tmp_path):
    out = prep_math(
        str(tmp_path / "o"),
        OPENTHOUGHTS,
        *["--val-size", "0", "--limit", "1"],
        *["--prompt-template", "Problem: {problem}\nAnswer in \\boxed{{}}.", "--system-prompt", "Be brief."],
    )
    (row,) = prepared_rows(out)
    assert row["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Problem: Find the sum of all positive divisors of 36.\nAnswer in \\boxed{}."},
    ]


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from verl_avsd.toy.tiny_model import build_tokenizer

    with open(OPENTHOUGHTS) as handle:
        texts = [handle.read()]
    folder = str(tmp_path_factory.mktemp("tokenizer"))
    tokenizer = build_tokenizer(texts, folder, vocab_size=400)
    return folder, tokenizer


def test_token_length_filters(tmp_path, openthoughts_run, tiny_tokenizer):
    folder, tokenizer = tiny_tokenizer
    _, _, rows = openthoughts_run

    def count(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompt_tokens = sorted(count(row["prompt"][0]["content"]) for row in rows)
    limit = prompt_tokens[-2]  # only the longest prompt (the farmer story) is over it
    out = prep_math(str(tmp_path / "o"), OPENTHOUGHTS, *EVALS, "--tokenizer", folder, "--max-problem-tokens", str(limit))
    assert manifest_of(out)["summary"]["train"]["filtered"]["problem_too_long"] == 1
    assert max(count(row["prompt"][0]["content"]) for row in prepared_rows(out)) <= limit

    longest_view = sorted(max(count(v["text"]) for v in row["extra_info"]["views"]) for row in rows)
    view_limit = longest_view[len(rows) // 2]
    expected = sum(1 for n in longest_view if n > view_limit)
    assert 0 < expected < len(rows)
    out2 = prep_math(str(tmp_path / "o2"), OPENTHOUGHTS, *EVALS, "--tokenizer", folder, "--max-view-tokens", str(view_limit))
    filtered = manifest_of(out2)["summary"]["train"]["filtered"]
    assert sum(n for reason, n in filtered.items() if reason.startswith("view_too_long:")) == expected
    for row in prepared_rows(out2):
        assert all(count(view["text"]) <= view_limit for view in row["extra_info"]["views"])


def test_decontamination_and_dedupe_can_be_turned_off(tmp_path):
    out = prep_math(str(tmp_path / "o"), OPENTHOUGHTS, *EVALS, "--no-dedupe", "--no-decontaminate")
    train = manifest_of(out)["summary"]["train"]
    assert train["filtered"] == {"domain": 2} and train["kept"] == 10
