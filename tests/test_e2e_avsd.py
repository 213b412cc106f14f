"""End to end through verl's real trainer on CPU (`python -m verl.trainer.main_ppo`,
trainer.v1.trainer_mode=avsd_sync) with a tiny random model on the toy task.

- AVSD runs 3 steps with checkpoints and rollout dumps; the metrics are present and in range,
  and every dumped rollout's teacher log-probs equal a slow one-sequence-at-a-time recomputation
  with the plain HF model (no row got another row's teacher values through verl's balancing,
  TransferQueue or the packed prefill), and the advantage equals the signal core on them.
- Killed after step 2, a run resumes at step 3 on the same prompts as the uninterrupted run.
- `verl-avsd demo` runs OPSD for 2 steps and writes metrics, config and plots.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_avsd.config import avsd_config
from verl_avsd.metrics import credit_metric_name
from verl_avsd.signals import avsd_signals
from verl_avsd.summary import summarize_runs
from verl_avsd.toy_run import TOY_VIEW_TEMPLATE, ToyRun, random_toy_model, run_main_ppo, toy_data
from verl_avsd.workers.teacher_context import build_teacher_contexts

TIMEOUT_S = 900
CREDIT_TOP_K = 5


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    model_dir = random_toy_model(str(root / "model"))
    data = toy_data(str(root / "data"), n_train=48, n_val=8)
    return root, model_dir, data


def _run(toy, name, **kw) -> tuple[ToyRun, object]:
    root, model_dir, data = toy
    run = ToyRun(
        model_dir=model_dir,
        train_file=data["train"],
        val_file=data["val"],
        run_dir=str(root / name),
        prompts_per_step=4,
        max_response_length=24,
        **kw,
    )
    result = run_main_ppo(run.overrides(), run.run_dir, timeout_s=TIMEOUT_S)
    assert result.returncode == 0, f"main_ppo exited {result.returncode} after {result.seconds:.0f}s:\n{result.log_tail()}"
    return run, result


def _dumps(run_dir, step) -> list[dict]:
    path = Path(run_dir) / "rollouts" / f"rollouts_step{step}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def avsd_run(toy):
    # credit_top_k off its default: the metric's name must follow it (credit_metric_name)
    return _run(
        toy,
        "avsd",
        estimator="avsd",
        steps=3,
        save_freq=1,
        dump_rollouts=True,
        extra_overrides=[f"+algorithm.avsd.credit_top_k={CREDIT_TOP_K}"],
    )


@pytest.mark.slow
def test_avsd_metrics_present_and_in_range(avsd_run):
    run, result = avsd_run
    # the report finds the run's top-k credit metric (by its logged name: a ToyRun writes no config.yaml)
    summary = summarize_runs([run.run_dir])["runs"]["avsd"]
    assert summary["credit_top_k"] == CREDIT_TOP_K and summary["last_n_mean"][credit_metric_name(CREDIT_TOP_K)] is not None
    assert sorted(result.metrics) == [1, 2, 3]
    for step, m in result.metrics.items():
        for key in (
            "avsd/gate_mean",
            "avsd/gate_open_rate",
            "avsd/residual_mean",
            "avsd/alignment_mean",
            "avsd/sign_conflict_rate",
            credit_metric_name(CREDIT_TOP_K),
            "timing_s/teacher_views",
            "avsd/teacher_tokens_per_s",
            "actor/pg_loss",
        ):
            assert key in m and math.isfinite(m[key]), (step, key)
        for key in (
            "avsd/gate_mean",
            "avsd/gate_open_rate",
            "avsd/alignment_mean",
            "avsd/sign_conflict_rate",
            credit_metric_name(CREDIT_TOP_K),
        ):
            assert 0.0 <= m[key] <= 1.0, (step, key, m[key])
        assert m["avsd/residual_mean"] >= 0
        assert credit_metric_name(20) not in m  # the default's name is not logged
        assert m["avsd/views_valid_mean"] == 3.0 and m["avsd/views_dropped"] == 0.0  # every toy row has 3 views
        assert m["avsd/views_scored"] == 3.0
        assert m["avsd/teacher_tokens"] > 0 and m["timing_s/teacher_views"] > 0
        # the 3 views of a rollout share the chat header + problem, fed once
        assert 0.5 < m["avsd/teacher_fed_fraction"] < 1.0, m["avsd/teacher_fed_fraction"]


@pytest.mark.slow
def test_estimator_saw_exactly_the_teacher_values_of_each_rollout(toy, avsd_run):
    _, model_dir, data = toy
    run, _ = avsd_run
    # teacher = frozen ref = the initial weights, at every step; the student equals them at step 1
    teacher_diff, student_diff = _teacher_and_student_vs_model(model_dir, data["train"], _dumps(run.run_dir, 1))
    assert teacher_diff < 1e-4 and student_diff < 1e-4, (teacher_diff, student_diff)
    teacher_diff, _ = _teacher_and_student_vs_model(model_dir, data["train"], _dumps(run.run_dir, 3))
    assert teacher_diff < 1e-4, teacher_diff
    # and the estimator's advantage is the signal core applied to exactly these values
    dumps = [d for step in (1, 2, 3) for d in _dumps(run.run_dir, step) if not d["is_padding"]]
    assert len(dumps) >= 12
    for d in dumps:
        view_logq = [[x if x is not None else float("nan") for x in v] for v in d["view_logq"]]
        s = avsd_signals(
            torch.tensor([d["student_logp"]]),
            torch.tensor([view_logq]),
            torch.tensor([d["view_mask"]]),
            torch.tensor([d["response_mask"]]),
        )
        assert torch.allclose(s.advantage[0], torch.tensor(d["advantage"]), atol=1e-6)


def _teacher_and_student_vs_model(model_dir, data_file, dumps) -> tuple[float, float]:
    """Max |difference| of the dumped teacher (all views) and student log-probs from a plain,
    one-sequence-at-a-time HF computation with the model in `model_dir`."""
    df = pd.read_parquet(data_file)
    rows = {e["index"]: r for e, (_, r) in zip(df["extra_info"], df.iterrows())}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    cfg = avsd_config({"avsd": {"view_template": TOY_VIEW_TEMPLATE}})

    def logp(context, response):
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.cat([context, response])[None]).logits[0].double(), -1)
        return lp[len(context) - 1 : -1].gather(1, response[:, None])[:, 0]

    teacher_diff = student_diff = 0.0
    for d in dumps:
        if d["is_padding"]:
            continue
        row = rows[d["index"]]
        response = torch.tensor(d["response_ids"])
        ctx = build_teacher_contexts(tokenizer, [list(row["prompt"])], [row["extra_info"]], cfg)
        for m in range(3):
            got = torch.tensor(d["view_logq"][m][: len(response)], dtype=torch.float64)
            teacher_diff = max(teacher_diff, (got - logp(ctx.context_ids[0][m], response)).abs().max().item())
        prompt = tokenizer.apply_chat_template(list(row["prompt"]), add_generation_prompt=True, tokenize=True)
        prompt = torch.tensor(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
        got = torch.tensor(d["student_logp"][: len(response)], dtype=torch.float64)
        student_diff = max(student_diff, (got - logp(prompt, response)).abs().max().item())
    return teacher_diff, student_diff


@pytest.mark.slow
def test_lora_teacher_is_the_base_model_with_the_adapter_off(toy):
    """With LoRA there is no separate ref model: the `ref` teacher is the actor's base model with
    its adapter disabled. After one update the student has moved, the teacher has not."""
    root, model_dir, data = toy
    run, _ = _run(
        toy,
        "lora",
        estimator="avsd",
        steps=2,
        dump_rollouts=True,
        lr=1e-3,
        extra_overrides=["actor_rollout_ref.model.lora_rank=8", "actor_rollout_ref.model.lora.merge=True"],
    )
    teacher_diff, student_diff = _teacher_and_student_vs_model(model_dir, data["train"], _dumps(run.run_dir, 2))
    assert teacher_diff < 1e-4, teacher_diff
    assert student_diff > 1e-3, student_diff  # the LoRA update changed the student


@pytest.mark.slow
def test_resume_after_kill_continues_at_next_step_with_same_data(toy, avsd_run):
    root, _, _ = toy
    run, _ = avsd_run
    ckpt = Path(run.run_dir) / "checkpoints"
    assert (ckpt / "global_step_2").is_dir() and (ckpt / "global_step_3").is_dir()
    # a run killed after the step-2 checkpoint: its directory holds steps 1-2 only
    resumed_dir = root / "resumed"
    shutil.copytree(ckpt, resumed_dir / "checkpoints", ignore=shutil.ignore_patterns("global_step_3"))
    (resumed_dir / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("2")
    resumed, result = _run(toy, "resumed", estimator="avsd", steps=3, save_freq=1, dump_rollouts=True, resume=True)
    assert sorted(result.metrics) == [3], "resumed run must train step 3 only"
    prompts = lambda d: sorted(r["index"] for r in _dumps(d, 3) if not r["is_padding"])  # noqa: E731
    assert prompts(resumed.run_dir) == prompts(run.run_dir)


@pytest.mark.slow
def test_demo_command_runs_opsd_and_writes_metrics_config_and_plots(tmp_path):
    """`verl-avsd demo` as a user runs it (here with OPSD and 2 short steps)."""
    out = tmp_path / "demo"
    cmd = [
        sys.executable,
        "-m",
        "verl_avsd.cli",
        "demo",
        "--output",
        str(out),
        "--estimator",
        "opsd",
        "--steps",
        "2",
        "--prompts-per-step",
        "4",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "step   2/2" in proc.stdout  # progress lines
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert r["avsd/views_valid_mean"] == 1.0  # OPSD reads the full view only
        assert r["avsd/views_scored"] == 1.0  # and the teacher scored only that view
        assert r["avsd/residual_mean"] == 0.0 and math.isfinite(r["actor/pg_loss"])
    config = OmegaConf.load(out / "config.yaml")
    assert config.algorithm.adv_estimator == "opsd" and config.trainer.v1.trainer_mode == "avsd_sync"
    for png in ("reward.png", "gate.png", "credit.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
