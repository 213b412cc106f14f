"""`algorithm.avsd.teacher_placement=rollout` end to end through verl's real trainer on the CPU
(`python -m verl.trainer.main_ppo`, the `hf` rollout answering the prompt-log-prob requests):
2 AVSD steps on the toy task with a tiny random model.

- The placement metrics are logged every step and in range.
- At step 1 the teacher (`current`) is the initial model: on the very rollouts the run trained
  on (its dumps), the actor placement's computation (the packed prefill, workers/teacher_prefill.py,
  on the same contexts) gives the teacher log-probs the rollout placement gave, and the advantage
  the estimator computed from them is the one the actor placement's log-probs give.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_avsd.config import avsd_config
from verl_avsd.signals import avsd_signals
from verl_avsd.toy_run import TOY_VIEW_TEMPLATE, ToyRun, random_toy_model, run_main_ppo, toy_data
from verl_avsd.workers.teacher_context import build_teacher_contexts
from verl_avsd.workers.teacher_prefill import packed_response_logprobs

TIMEOUT_S = 900


@pytest.fixture(scope="module")
def rollout_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout_teacher")
    model_dir = random_toy_model(str(root / "model"))
    data = toy_data(str(root / "data"), n_train=48, n_val=8)
    run = ToyRun(model_dir=model_dir, train_file=data["train"], val_file=data["val"], run_dir=str(root / "run"),
                 estimator="avsd", steps=2, prompts_per_step=4, max_response_length=24, dump_rollouts=True,
                 teacher_placement="rollout")  # fmt: skip
    result = run_main_ppo(run.overrides(), run.run_dir, timeout_s=TIMEOUT_S)
    assert result.returncode == 0, f"main_ppo exited {result.returncode} after {result.seconds:.0f}s:\n{result.log_tail()}"
    return model_dir, data, run, result


@pytest.mark.slow
def test_rollout_placement_trains_like_the_actor_placement(rollout_run):
    model_dir, data, run, result = rollout_run
    assert sorted(result.metrics) == [1, 2]
    for step, m in result.metrics.items():
        assert 0.0 <= m["avsd/teacher_hidden_fraction"] <= 1.0, (step, m["avsd/teacher_hidden_fraction"])
        for key in ("avsd/teacher_blocking_s", "avsd/teacher_scoring_s", "timing_s/teacher_views"):
            assert math.isfinite(m[key]) and m[key] >= 0, (step, key, m.get(key))
        assert m["avsd/teacher_scoring_s"] > 0 and m["avsd/teacher_tokens"] > 0
        # the hf server's prefix cache: the 3 views of a rollout share the chat header and problem
        assert 0.0 < m["avsd/teacher_fed_fraction"] < 1.0, m["avsd/teacher_fed_fraction"]
        assert m["avsd/views_scored"] == 3.0 and math.isfinite(m["actor/pg_loss"])
        # teacher_stream_tokens (default 8): the views were scored while the 24-token responses grew
        assert 0 < m["avsd/teacher_streamed_s"] <= m["avsd/teacher_scoring_s"], step

    dumps = [json.loads(line) for line in (Path(run.run_dir) / "rollouts" / "rollouts_step1.jsonl").read_text().splitlines()]
    dumps = [d for d in dumps if not d["is_padding"]]
    assert len(dumps) == 4
    df = pd.read_parquet(data["train"])
    rows = {e["index"]: r for e, (_, r) in zip(df["extra_info"], df.iterrows())}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    cfg = avsd_config({"avsd": {"view_template": TOY_VIEW_TEMPLATE}})
    for d in dumps:
        row = rows[d["index"]]
        response = torch.tensor(d["response_ids"])
        contexts = build_teacher_contexts(tokenizer, [list(row["prompt"])], [row["extra_info"]], cfg)
        packed = packed_response_logprobs(model, [(contexts.context_ids[0][m], response) for m in range(3)], token_budget=4096)
        T, R = len(d["student_logp"]), len(response)  # the dump is padded to the batch's longest response
        actor_logq = torch.zeros(3, T)
        actor_logq[:, :R] = torch.stack(packed)  # [M, T] as the actor placement computes it
        got = torch.tensor(d["view_logq"], dtype=torch.float32)
        assert torch.allclose(got[:, :R], actor_logq[:, :R], atol=1e-4), (
            (got - actor_logq)[:, :R].abs().max()
        )  # float32, two kernels
        mask = torch.tensor([d["view_mask"]])
        actor = avsd_signals(torch.tensor([d["student_logp"]]), actor_logq[None], mask, torch.tensor([d["response_mask"]]))
        assert torch.allclose(torch.tensor(d["advantage"]), actor.advantage[0], atol=1e-4)
