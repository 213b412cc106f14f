"""The toy arithmetic task: generator, views, checker and parquet rows."""

import re

import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_avsd.data_prep.contract import ROW_SCHEMA, contract_problems
from verl_avsd.toy.task import (
    DATA_SOURCE,
    VIEW_NAMES,
    compute_score,
    extract_answer,
    generate_problems,
    random_problem,
    split_of_prompt,
    teacher_user_message,
    write_parquet,
)


def evaluate_left_to_right(prompt: str) -> int:
    """Slow independent reference: parse 'Compute a+b-c.' and sum the signed terms."""
    expression = prompt.removeprefix("Compute ").removesuffix(".")
    assert re.fullmatch(r"\d+([+-]\d+)+", expression), prompt
    return sum(int(term) for term in re.findall(r"[+-]?\d+", expression))


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10**6), num_steps=st.integers(2, 6), max_operand=st.integers(2, 999))
def test_problems_are_consistent_and_partial_never_holds_the_answer(seed, num_steps, max_operand):
    import random

    problem = random_problem(random.Random(seed), num_steps, max_operand)
    assert problem.answer == evaluate_left_to_right(problem.prompt)
    views = problem.views()
    assert [v["name"] for v in views] == list(VIEW_NAMES)
    full, partial, answer = (v["text"] for v in views)
    assert full == problem.solution and full.endswith(f"Answer: {answer}")
    assert int(answer) == problem.answer
    # fixed-width numbers: every problem of this size has the same layout
    assert answer == f"{problem.answer:0{len(str(max_operand * (num_steps + 1)))}d}"
    # partial: the first half of the step lines, and the answer appears nowhere in it
    assert partial.splitlines() == list(problem.steps[: max(1, num_steps // 2)])
    assert "Answer" not in partial
    assert problem.answer not in [int(n) for n in re.findall(r"\d+", partial)]
    # every step line is true arithmetic, chained from the previous total
    previous = None
    for line in problem.steps:
        a, op, b, c = re.fullmatch(r"(\d+)([+-])(\d+)=(\d+)", line).groups()
        assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        assert previous is None or int(a) == previous
        previous = int(c)


def test_generation_is_deterministic_and_splits_are_disjoint():
    train_a = generate_problems(300, seed=1, split="train")
    train_b = generate_problems(300, seed=1, split="train")
    val = generate_problems(100, seed=1, split="val")
    assert train_a == train_b
    assert generate_problems(300, seed=2, split="train") != train_a
    assert len({p.prompt for p in train_a}) == 300
    assert not {p.prompt for p in train_a} & {p.prompt for p in val}
    assert all(split_of_prompt(p.prompt) == "val" for p in val)
    with pytest.raises(ValueError, match="split"):
        generate_problems(1, seed=0, split="test")
    with pytest.raises(ValueError, match="num_steps"):
        generate_problems(1, seed=0, split="train", num_steps=1)


def test_checker_accepts_right_and_rejects_wrong_or_malformed():
    problem = generate_problems(1, seed=0, split="train")[0]
    truth = str(problem.answer)
    assert compute_score(DATA_SOURCE, problem.solution, truth) == 1.0
    assert compute_score(DATA_SOURCE, problem.solution + "\n", truth, extra_info={"views": []}) == 1.0
    assert compute_score(DATA_SOURCE, f"Answer: {truth}", truth) == 1.0  # outcome reward: steps not checked
    assert compute_score(DATA_SOURCE, f"Answer: 000{truth}", truth) == 1.0  # zero padding is the format
    wrong = problem.solution.rsplit(" ", 1)[0] + f" {problem.answer + 1}"
    assert wrong != problem.solution
    assert compute_score(DATA_SOURCE, wrong, truth) == 0.0
    malformed = [
        "",
        truth,  # bare number, no answer line
        f"answer: {truth}",  # wrong case
        f"Answer: {truth} and more",  # trailing junk
        f"Answer: {truth}\n1+1=2",  # answer line not last
        f"Answer: {truth}.5",
        problem.solution.replace("Answer:", "Answer"),
    ]
    for text in malformed:
        assert compute_score(DATA_SOURCE, text, truth) == 0.0, text
    assert extract_answer("x\nAnswer: -12") == -12


def test_checker_errors_name_the_bad_field():
    with pytest.raises(ValueError, match="data_source"):
        compute_score("openai/gsm8k", "Answer: 1", "1")
    with pytest.raises(ValueError, match="ground_truth"):
        compute_score(DATA_SOURCE, "Answer: 1", "one")


def test_teacher_message_is_named_view_then_prompt():
    assert teacher_user_message("Compute 1+2.", "answer", "3") == "Reference (answer):\n3\n\nCompute 1+2."
    with pytest.raises(ValueError, match="view_name"):
        teacher_user_message("p", "", "v")
    with pytest.raises(TypeError, match="view_text"):
        teacher_user_message("p", "full", None)


def test_parquet_rows_follow_the_contract(tmp_path):
    paths = write_parquet(str(tmp_path), n_train=40, n_val=10, seed=3)
    train, val = pd.read_parquet(paths["train"]), pd.read_parquet(paths["val"])
    assert len(train) == 40 and len(val) == 10
    for frame, split in ((train, "train"), (val, "validation")):  # val.parquet holds the contract's "validation" split
        assert set(frame.columns) == {"prompt", "data_source", "ability", "reward_model", "extra_info"}
        for i, row in frame.iterrows():
            messages = list(row["prompt"])
            assert len(messages) == 1 and messages[0]["role"] == "user"
            views = list(row["extra_info"]["views"])
            assert [v["name"] for v in views] == list(VIEW_NAMES)
            # the student prompt never contains view text
            assert "=" not in messages[0]["content"] and "Answer" not in messages[0]["content"]
            assert row["data_source"] == DATA_SOURCE
            assert row["reward_model"]["style"] == "rule"
            assert row["extra_info"]["index"] == i and row["extra_info"]["split"] == split
            truth = row["reward_model"]["ground_truth"]
            assert compute_score(row["data_source"], views[0]["text"], truth) == 1.0
            assert int(views[2]["text"]) == int(truth)
    assert not set(train["prompt"].map(lambda m: m[0]["content"])) & set(val["prompt"].map(lambda m: m[0]["content"]))
    # written through data prep's writer: every row passes the same contract check as `verl-avsd prep`'s
    for path in paths.values():
        rows = pq.read_table(path).to_pylist()
        assert rows and all(contract_problems(row) == [] for row in rows)
        assert pq.read_schema(path).equals(ROW_SCHEMA)  # the one schema every prepared file has
