"""End to end: verl's own trainer (`python -m verl.trainer.main_ppo`, V1 sync trainer) runs
2 GRPO steps on this CPU-only machine, with the CPU platform and the `hf` rollout.

The model is the toy tokenizer + a 2-layer Qwen2 (hidden 64) built in a temp dir; the data is
the toy arithmetic task (with `extra_info.views`), scored by the toy's `compute_score`.
verl's file logger (`trainer.logger=[console,file]`, path from VERL_FILE_LOGGER_PATH) writes
one JSON line per step, `{"step": N, "data": {metric: value}}`; the test reads it back.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from verl_avsd.cpu.platform import cpu_overrides
from verl_avsd.toy import task as toy_task
from verl_avsd.toy.tiny_model import build_model, build_tokenizer

# verl imports the `verl.plugins` entry point (verl_avsd.plugin: CPU platform, hf rollout, ...)
# at `import verl` in every process, but swallows its errors. Naming the same module in
# VERL_USE_EXTERNAL_MODULES (inherited by the Ray workers) imports it first and loudly.
PLUGIN_MODULES = "verl_avsd.plugin"
RUN_TIMEOUT_S = 900  # verl waits forever when Ray lacks resources; never let the test hang


def digit_share_reward(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """verl custom reward for this test: the share of the response's characters that are digits.

    A random tiny model never solves a toy problem, so the toy's 0/1 `compute_score` would give
    every rollout 0, every GRPO advantage 0 and a zero gradient. This score differs between the
    samples of a group, so the actor really updates and the weight sync is really exercised.
    """
    if not isinstance(solution_str, str):
        raise TypeError(f"digit_share_reward: solution_str must be a str, got {type(solution_str).__name__}")
    return sum(char.isdigit() for char in solution_str) / max(1, len(solution_str))


def build_tiny_model(model_dir: Path) -> None:
    """Toy tokenizer trained on toy problems, and a 2-layer, hidden-64 Qwen2 with random weights."""
    problems = toy_task.generate_problems(200, seed=1, split="train")
    texts = [problem.prompt + "\n" + problem.solution for problem in problems]
    tokenizer = build_tokenizer(texts, out_dir=str(model_dir))
    build_model(tokenizer, out_dir=str(model_dir), hidden=64, layers=2, heads=4, kv_heads=2, max_positions=256)


def grpo_overrides(model_dir: Path, data: dict[str, str], run_dir: Path, steps: int = 2) -> list[str]:
    """CPU overrides + a tiny GRPO run: 4 prompts x 2 samples per step, 24-token responses."""
    return cpu_overrides() + [
        f"actor_rollout_ref.model.path={model_dir}",
        f"data.train_files={data['train']}",
        f"data.val_files={data['val']}",
        "data.train_batch_size=4",
        "data.max_prompt_length=48",
        "data.max_response_length=24",
        "algorithm.adv_estimator=grpo",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.actor.optim.lr=1e-2",  # large, so stale rollout weights would show at step 2
        "actor_rollout_ref.actor.use_kl_loss=false",
        f"reward.custom_reward_function.path={Path(__file__).resolve()}",
        "reward.custom_reward_function.name=digit_share_reward",
        f"trainer.total_training_steps={steps}",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "trainer.resume_mode=disable",
        "trainer.logger=[console,file]",
        "trainer.project_name=cpu_e2e",
        "trainer.experiment_name=grpo",
        f"trainer.default_local_dir={run_dir / 'checkpoints'}",
    ]


def run_main_ppo(overrides: list[str], run_dir: Path) -> tuple[subprocess.CompletedProcess, Path, float]:
    """Run verl's trainer in a subprocess under `timeout`; returns (process, metrics file, seconds)."""
    metrics_file = run_dir / "metrics.jsonl"
    env = dict(
        os.environ,
        VERL_USE_EXTERNAL_MODULES=PLUGIN_MODULES,
        VERL_FILE_LOGGER_PATH=str(metrics_file),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        RAY_DEDUP_LOGS="0",
    )
    command = ["timeout", "-k", "30", str(RUN_TIMEOUT_S), sys.executable, "-m", "verl.trainer.main_ppo", *overrides]
    start = time.monotonic()
    process = subprocess.run(command, cwd=run_dir, env=env, capture_output=True, text=True)
    return process, metrics_file, time.monotonic() - start


@pytest.mark.slow
def test_main_ppo_runs_two_grpo_steps_on_cpu(tmp_path):
    model_dir, run_dir = tmp_path / "model", tmp_path / "run"
    run_dir.mkdir()
    build_tiny_model(model_dir)
    data = toy_task.write_parquet(str(tmp_path / "data"), n_train=32, n_val=8)

    process, metrics_file, seconds = run_main_ppo(grpo_overrides(model_dir, data, run_dir), run_dir)

    log_tail = (process.stdout + process.stderr)[-6000:]
    assert process.returncode == 0, f"main_ppo exited with {process.returncode} after {seconds:.0f}s:\n{log_tail}"
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    steps = {record["step"]: record["data"] for record in records}
    assert sorted(steps) == [1, 2], f"expected metrics for steps 1 and 2, got {sorted(steps)}"
    for step, metrics in steps.items():
        for key in (
            "actor/pg_loss",
            "actor/grad_norm",
            "critic/score/mean",
            "response_length/mean",
            "training/rollout_probs_diff_max",
        ):
            assert key in metrics, f"step {step}: metric {key} missing; have {sorted(metrics)}"
        non_finite = {key: value for key, value in metrics.items() if isinstance(value, float) and not math.isfinite(value)}
        assert not non_finite, f"step {step}: non-finite metrics {non_finite}"
        assert metrics["response_length/mean"] > 0
        assert 0.0 <= metrics["critic/score/mean"] <= 1.0
        # the samples of a group scored differently, so the actor took a real gradient step
        assert metrics["actor/grad_norm"] > 0, f"step {step}: zero gradient, the update did nothing"
        # on-policy: the hf server's log-probs of its own samples equal the actor's old_log_prob
        # (both float32). At step 2 this holds only if the step-1 update reached the server:
        # with the weight sync switched off it measured 7.9e-3 here, with the sync 3e-9.
        assert metrics["training/rollout_probs_diff_max"] < 1e-5, (
            f"step {step}: rollout and actor disagree (max prob diff {metrics['training/rollout_probs_diff_max']})"
        )
