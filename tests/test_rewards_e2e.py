"""End to end: the code reward and the feedback view inside verl's trainer (CPU, 2 AVSD steps on
the views reference, hint and feedback) on a code toy task.

The toy task: "read an integer n and print 2n", with its own hidden tests per row, in the data
contract's code row format (hidden tests in `reward_model.ground_truth`,
`extra_info.public_tests`, limits). A tiny Qwen2 is first warmed up for a few seconds on the
reference program, so that its sampled rollouts are fenced Python programs (mostly right; a
sampled typo makes one wrong). Then `verl.trainer.main_ppo`
runs with `reward.custom_reward_function.path=pkg://verl_avsd.rewards`: every rollout's program
runs in the sandbox of verl's reward worker, and the dumped generations carry the reward's
`acc`, `pass_rate` and `status` for every rollout. After each rollout the AVSD trainer runs the
program on the row's public tests in the sandbox, and the teacher scores that feedback as a view.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from test_cpu_e2e_grpo import grpo_overrides, run_main_ppo

from verl_avsd.data_prep.contract import ROW_SCHEMA, chat_prompt, make_row
from verl_avsd.data_prep.contract import tests_json as make_tests  # aliased: pytest would collect test*
from verl_avsd.toy.tiny_model import build_model, build_tokenizer, save_checkpoint

DATA_SOURCE = "code/toy-multiply"
JUDGED = {"ok", "wrong_answer", "runtime_error", "compile_error", "timeout", "memory_limit", "output_limit"}


K = 2  # one program for every row: a 2-layer toy model learns it in seconds


def problem_text(k: int = K) -> str:
    return f"Read an integer n and print n times {k}."


def reference_program(k: int = K) -> str:
    return f"```python\nprint(int(input()) * {k})\n```"


def code_rows(split: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(f"{seed}/{split}")
    rows = []
    for index in range(n):
        hidden = [rng.randint(-50, 50) for _ in range(3)]
        public = rng.randint(1, 9)
        row = make_row(
            data_source=DATA_SOURCE,
            ability="code",
            prompt=chat_prompt(problem_text()),
            ground_truth=make_tests([f"{x}\n" for x in hidden], [f"{x * K}\n" for x in hidden]),
            problem=problem_text(),
            problem_id=f"{split}-{index}",
            source="toy",
            views=[{"name": "reference", "text": reference_program()}, {"name": "hint", "text": "Multiply the input."}],
            public_tests=make_tests([f"{public}\n"], [f"{public * K}\n"]),
            time_limit_s=2.0,
            memory_mb=256.0,
            language="python",
        )
        row["extra_info"].update(index=index, split=split)
        rows.append(row)
    return rows


def write_code_parquet(out_dir: Path) -> dict[str, str]:
    out_dir.mkdir(parents=True)
    paths = {}
    for split, n in (("train", 32), ("validation", 8)):
        path = out_dir / f"{split}.parquet"
        pq.write_table(pa.Table.from_pylist(code_rows(split, n, seed=0), schema=ROW_SCHEMA), path)
        paths["val" if split == "validation" else split] = str(path)
    return paths


def warm_tiny_model(model_dir: Path, steps: int = 120) -> None:
    """Tokenizer + 2-layer Qwen2 trained briefly on prompt -> reference program (+ EOS)."""
    torch.manual_seed(0)
    texts = [problem_text() + "\n" + reference_program()] * 20
    tokenizer = build_tokenizer(texts, out_dir=str(model_dir))
    model = build_model(tokenizer, None, hidden=64, layers=2, heads=4, kv_heads=2, max_positions=256)
    prompt_text = tokenizer.apply_chat_template(chat_prompt(problem_text()), tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response = tokenizer(reference_program(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = torch.tensor([prompt + response])  # [1, T]
    labels = torch.tensor([[-100] * len(prompt) + response])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-wide model gains nothing from threads on a shared machine
    try:
        model.train()
        for _ in range(steps):
            logits = model(input_ids=input_ids).logits  # [1, T, V]
            loss = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.1, f"warm-up did not learn the reference program (loss {loss.item():.3f})"
    save_checkpoint(model.eval(), tokenizer, str(model_dir))


def with_overrides(base: list[str], **changes: str) -> list[str]:
    """`base` with the `key=value` entries for `changes` replaced (hydra refuses duplicates)."""
    keys = {key.replace("__", "."): value for key, value in changes.items()}
    kept = [item for item in base if item.split("=", 1)[0].lstrip("+") not in keys]
    return kept + [f"{key}={value}" for key, value in keys.items()]


@pytest.mark.slow
def test_code_reward_runs_inside_the_cpu_trainer(tmp_path):
    model_dir, run_dir, dumps = tmp_path / "model", tmp_path / "run", tmp_path / "generations"
    run_dir.mkdir()
    warm_tiny_model(model_dir)
    data = write_code_parquet(tmp_path / "data")
    overrides = with_overrides(
        grpo_overrides(model_dir, data, run_dir),
        data__max_response_length="40",
        actor_rollout_ref__rollout__n="4",
        actor_rollout_ref__actor__optim__lr="1e-4",
        reward__custom_reward_function__path="pkg://verl_avsd.rewards",
        reward__custom_reward_function__name="compute_score",
        trainer__val_before_train="true",  # validation dumps carry the reward's extra fields
        trainer__validation_data_dir=str(dumps / "val"),
        trainer__rollout_data_dir=str(dumps / "train"),
        trainer__experiment_name="code_reward",
        # trained with AVSD on the code views, including the rollout-dependent feedback view
        trainer__v1__trainer_mode="avsd_sync",
        algorithm__adv_estimator="avsd",
    ) + ["+algorithm.avsd.views=[reference,hint,feedback]", "+algorithm.avsd.opsd_view=reference"]

    process, metrics_file, seconds = run_main_ppo(overrides, run_dir)

    log = process.stdout + process.stderr
    assert process.returncode == 0, f"main_ppo exited with {process.returncode} after {seconds:.0f}s:\n{log[-6000:]}"
    assert "verl_avsd code sandbox isolation:" in log  # the reward worker announced its sandbox
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    metrics = {key: value for record in records for key, value in record["data"].items()}
    assert {1, 2} <= {record["step"] for record in records}
    assert f"val-core/{DATA_SOURCE}/acc/mean@1" in metrics and f"val-aux/{DATA_SOURCE}/pass_rate/mean@1" in metrics
    # the feedback view was built in the sandbox for the rollouts that wrote a program, and the
    # teacher scored it as a third view for them (reference and hint exist for every row)
    steps = {record["step"]: record["data"] for record in records}
    for step in (1, 2):
        m = steps[step]
        assert m["timing_s/feedback_view"] > 0 and 0.0 < m["feedback/view_rate"] <= 1.0, m
        assert 2.0 < m["avsd/views_valid_mean"] <= 3.0, m["avsd/views_valid_mean"]

    def read(folder: str) -> list[dict]:
        return [json.loads(line) for path in sorted((dumps / folder).glob("*.jsonl")) for line in path.read_text().splitlines()]

    validation = read("val")
    assert len(validation) == 8
    for rollout in validation:  # every rollout carries the reward's fields, consistent with its score
        assert rollout["status"] in JUDGED | {"no_program"}
        assert rollout["score"] == pytest.approx(rollout["pass_rate"])  # fraction mode: reward = share passed
        assert rollout["acc"] == (1.0 if rollout["status"] == "ok" else 0.0)
    assert {rollout["status"] for rollout in validation} & JUDGED, "no program was judged in the sandbox"
    training = read("train")
    assert len(training) == 2 * 4 * 4  # steps x prompts x samples
    scores = {round(rollout["score"], 4) for rollout in training}
    assert scores <= {0.0, 0.3333, 0.6667, 1.0} and 1.0 in scores, scores
