"""The prepared files in use: verl's RLHFDataset reads them, `prep inspect` summarises them, `prep toy` writes them."""

import hashlib
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_avsd.data_prep.cli import main
from verl_avsd.data_prep.contract import ROW_SCHEMA

FIXTURES = os.path.join(os.path.dirname(__file__), "data", "prep")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Math (OpenThoughts + AIME eval), code (codeforces + LiveCodeBench eval) and toy outputs."""
    root = tmp_path_factory.mktemp("prepared")
    math_out, code_out, toy_out = str(root / "math"), str(root / "code"), str(root / "toy")
    assert (
        main(
            [
                "math",
                f"{FIXTURES}/openthoughts_metadata.jsonl",
                "--out",
                math_out,
                "--quiet",
                "--eval",
                f"aime2024={FIXTURES}/aime2024.jsonl",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "code",
                f"{FIXTURES}/codeforces_problems.jsonl",
                "--solutions",
                f"{FIXTURES}/codeforces_cots.jsonl",
                "--solutions",
                f"{FIXTURES}/codeforces_submissions.jsonl",
                "--eval",
                f"lcb={FIXTURES}/livecodebench.jsonl",
                "--out",
                code_out,
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["toy", "--out", toy_out, "--n-train", "40", "--n-val", "8", "--seed", "3"]) == 0
    return math_out, code_out, toy_out


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
    from verl_avsd.toy.tiny_model import build_tokenizer

    return build_tokenizer(
        ["Find the sum of 36. Print the array. Compute 1 + 2."], str(tmp_path_factory.mktemp("tok")), vocab_size=300
    )


def test_verl_rlhf_dataset_reads_math_code_and_eval_files_together(prepared, chat_tokenizer, tmp_path):
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    math_out, code_out, _ = prepared
    files = [
        os.path.join(math_out, "train.parquet"),
        os.path.join(math_out, "eval_aime2024.parquet"),
        os.path.join(code_out, "train.parquet"),
        os.path.join(code_out, "eval_lcb.parquet"),
    ]
    expected = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
    config = OmegaConf.create({"max_prompt_length": 100000, "filter_overlong_prompts": False, "cache_dir": str(tmp_path)})
    dataset = RLHFDataset(files, chat_tokenizer, config)
    assert len(dataset) == expected  # one schema: math and code files concatenate
    items = [dataset[i] for i in range(len(dataset))]
    abilities = [item["ability"] for item in items]
    assert set(abilities) == {"math", "code"}
    for item in items:
        assert item["raw_prompt"][-1]["role"] == "user"
        views = item["extra_info"]["views"]
        assert isinstance(views, list) and all(set(view) == {"name", "text"} for view in views)
        if item["ability"] == "code" and item["extra_info"]["split"] != "eval":
            assert [view["name"] for view in views] == ["reference", "hint"]
            assert json.loads(item["extra_info"]["public_tests"])["inputs"]
        if item["ability"] == "math" and item["extra_info"]["split"] != "eval":
            assert views[0]["name"] == "full" and views[-1]["name"] == "answer"
    batch = collate_fn(items[:4])
    assert batch["extra_info"][0]["views"] == items[0]["extra_info"]["views"]
    # the prompt goes through the chat template (verl's length filter does this too)
    assert chat_tokenizer.apply_chat_template(items[0]["raw_prompt"], add_generation_prompt=True, tokenize=False)


def test_inspect_prints_the_column_summary_and_rows(prepared, capsys):
    math_out, code_out, _ = prepared
    assert main(["inspect", os.path.join(math_out, "train.parquet"), "--rows", "2", "--max-chars", "60"]) == 0
    text = capsys.readouterr().out
    rows = pq.ParquetFile(os.path.join(math_out, "train.parquet")).metadata.num_rows
    assert f"train.parquet: {rows} rows, 5 columns" in text
    assert f"data sources: math/openthoughts {rows}" in text
    assert "views: full" in text and "rows breaking the row contract: 0" in text
    assert text.count("--- row ") == 2 and "view partial (" in text and "more chars]" in text
    assert main(["inspect", os.path.join(code_out, "eval_lcb.parquet")]) == 0
    text = capsys.readouterr().out
    assert "views: none" in text and "public_tests: " in text


def test_inspect_reports_rows_that_break_the_contract(tmp_path, capsys):
    row = {
        "data_source": "math/x",
        "prompt": [{"role": "user", "content": "Solve it. We factor 36 as 4 times 9."}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": ""},
        "extra_info": {
            "index": 0,
            "split": "train",
            "problem_id": "1",
            "problem": "Solve it.",
            "source": "x",
            "views": [{"name": "full", "text": "We factor 36 as 4 times 9."}, {"name": "hint", "text": "h"}],
            "public_tests": None,
            "time_limit_s": None,
            "memory_mb": None,
            "language": None,
        },
    }
    path = str(tmp_path / "bad.parquet")
    pq.write_table(pa.Table.from_pylist([row], schema=ROW_SCHEMA), path)
    assert main(["inspect", path]) == 0
    text = capsys.readouterr().out
    assert "rows breaking the row contract: 1" in text
    assert "the student prompt contains the text of view 'full'" in text
    assert "view 'hint' is not a math view" in text and "reward_model.ground_truth is empty" in text
    assert main(["inspect", str(tmp_path / "missing.parquet")]) == 2


def test_toy_rows_come_from_the_toy_task_and_are_deterministic(prepared, tmp_path):
    from verl_avsd.toy import task as toy_task

    _, _, toy_out = prepared
    train = pq.read_table(os.path.join(toy_out, "train.parquet")).to_pylist()
    validation = pq.read_table(os.path.join(toy_out, "validation.parquet")).to_pylist()
    assert len(train) == 40 and len(validation) == 8
    problems = toy_task.generate_problems(40, 3, "train")
    for row, problem in zip(train, problems, strict=True):
        assert row["prompt"] == [{"role": "user", "content": problem.prompt}]
        assert row["extra_info"]["views"] == problem.views()
        assert [view["name"] for view in row["extra_info"]["views"]] == ["full", "partial", "answer"]
        assert row["data_source"] == toy_task.DATA_SOURCE
        assert toy_task.compute_score(row["data_source"], problem.solution, row["reward_model"]["ground_truth"]) == 1.0
    assert {row["extra_info"]["problem"] for row in train}.isdisjoint(row["extra_info"]["problem"] for row in validation)
    again = str(tmp_path / "again")
    assert main(["toy", "--out", again, "--n-train", "40", "--n-val", "8", "--seed", "3"]) == 0
    for name in ("train.parquet", "validation.parquet"):
        digests = []
        for folder in (toy_out, again):
            with open(os.path.join(folder, name), "rb") as handle:
                digests.append(hashlib.sha256(handle.read()).hexdigest())
        assert digests[0] == digests[1]
    with open(os.path.join(toy_out, "manifest.json")) as handle:
        manifest = json.load(handle)
    assert manifest["views"]["rows_with_view"] == {"answer": 48, "full": 48, "partial": 48}
