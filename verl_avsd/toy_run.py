"""A training run of the toy task through verl's real trainer, on the CPU.

This is the one recipe the demo, the end-to-end tests and the toy-scale study share:

    python -m verl.trainer.main_ppo  <CPU overrides>  <toy model + data>  <estimator>

run in a subprocess under `timeout` (verl waits forever when Ray lacks resources), with verl's
file logger writing one JSON line per step, which this module tails to report progress.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import verl_avsd.plugin  # noqa: F401,I001  first: registers the CPU platform before verl picks one
from verl_avsd.cpu.micro_batch import micro_batch_overrides, run_micro_batch_size
from verl_avsd.cpu.platform import cpu_overrides
from verl_avsd.estimator_facts import needs_groups, needs_teacher
from verl_avsd.run_files import read_metrics_file
from verl_avsd.toy import task as toy_task

# The toy warm-up taught the model to read views in exactly this wording (toy.task.TEACHER_TEMPLATE).
TOY_VIEW_TEMPLATE = toy_task.TEACHER_TEMPLATE.replace("{view_text}", "{view}").replace("\n", "\\n")


GROUP_SIZE = 4  # rollouts per prompt of the group-relative estimators (needs_groups); the others sample one


def rollouts_per_prompt(estimator: str) -> int:
    """GROUP_SIZE for the group-relative estimators (their advantage needs a group), else 1."""
    return GROUP_SIZE if needs_groups(estimator) else 1


def rollout_budget(estimator: str, rollouts_per_step: int) -> dict[str, int]:
    """ToyRun's `prompts_per_step` and `rollouts_per_prompt` that spend `rollouts_per_step` rollouts
    a step: one per prompt for the teacher estimators (as in the paper), groups of GROUP_SIZE for
    grpo and rlsd (their advantage needs a group), so that methods compare at the same budget."""
    n = rollouts_per_prompt(estimator)
    if rollouts_per_step % n:
        raise ValueError(
            f"{estimator} samples groups of {n}: rollouts per step must be a multiple of {n}, got {rollouts_per_step}"
        )
    return {"prompts_per_step": rollouts_per_step // n, "rollouts_per_prompt": n}


@dataclass
class ToyRun:
    """What one toy run trains, on which data, for how long."""

    model_dir: str
    train_file: str
    val_file: str
    run_dir: str
    estimator: str = "avsd"
    steps: int = 10
    prompts_per_step: int = 8
    rollouts_per_prompt: int | None = None  # default: 1 for teacher estimators, GROUP_SIZE for grpo/rlsd
    views: tuple[str, ...] = ("full", "partial", "answer")
    max_response_length: int = 48
    lr: float = 1e-4
    temperature: float = 1.0
    seed: int = 0
    save_freq: int = -1
    # held-out accuracy through verl's own validation (greedy, on val_file): before training
    # (logged at step 0) and every `test_freq` steps (-1 = never)
    val_before_train: bool = False
    test_freq: int = -1
    resume: bool = False
    dump_rollouts: bool = False
    # algorithm.avsd.teacher_placement and .teacher (None: `current` with rollout placement, the
    # teacher the rollout servers hold and the one that streams; else the yaml's default)
    teacher_placement: str = "actor"
    teacher: str | None = None
    extra_overrides: list[str] = field(default_factory=list)

    def overrides(self) -> list[str]:
        teacher = needs_teacher(self.estimator)
        n = self.rollouts_per_prompt or rollouts_per_prompt(self.estimator)
        run_dir = Path(self.run_dir).resolve()
        views = "[" + ",".join(self.views) + "]"
        out = cpu_overrides() + [
            f"actor_rollout_ref.model.path={self.model_dir}",
            f"data.train_files={self.train_file}",
            f"data.val_files={self.val_file}",
            f"data.train_batch_size={self.prompts_per_step}",
            "data.max_prompt_length=96",
            f"data.max_response_length={self.max_response_length}",
            f"data.seed={self.seed}",
            "trainer.v1.trainer_mode=avsd_sync",
            f"algorithm.adv_estimator={self.estimator}",
            f"+algorithm.avsd.views={views}",
            f"+algorithm.avsd.opsd_view={self.views[0]}",
            f"+algorithm.avsd.view_template='{TOY_VIEW_TEMPLATE}'",
            f"actor_rollout_ref.rollout.n={n}",
            f"actor_rollout_ref.rollout.temperature={self.temperature}",
            # one on-policy update per batch: the PPO ratio is 1 and the loss is -advantage * log p
            f"actor_rollout_ref.actor.ppo_mini_batch_size={self.prompts_per_step}",
            "actor_rollout_ref.actor.ppo_epochs=1",
            # micro-batches sized from the model (the whole batch for the toy model): verl_avsd.cpu.micro_batch
            *micro_batch_overrides(
                run_micro_batch_size(self.model_dir, 96 + self.max_response_length, self.prompts_per_step * n)
            ),
            f"actor_rollout_ref.actor.optim.lr={self.lr}",
            "actor_rollout_ref.actor.use_kl_loss=false",
            "actor_rollout_ref.actor.entropy_coeff=0",
            # pkg:// imports the module normally (a file path would be executed outside sys.modules)
            "reward.custom_reward_function.path=pkg://verl_avsd.toy.task",
            "reward.custom_reward_function.name=compute_score",
            f"trainer.total_training_steps={self.steps}",
            f"trainer.val_before_train={str(self.val_before_train).lower()}",
            f"trainer.test_freq={self.test_freq}",
            f"trainer.save_freq={self.save_freq}",
            f"trainer.resume_mode={'auto' if self.resume else 'disable'}",
            "trainer.logger=[console,file]",
            "trainer.project_name=verl_avsd_toy",
            f"trainer.experiment_name={self.estimator}",
            f"trainer.default_local_dir={run_dir / 'checkpoints'}",
        ]
        if self.dump_rollouts:
            out.append(f"+algorithm.avsd.dump_rollouts_dir={run_dir / 'rollouts'}")
        if teacher and (self.teacher_placement != "actor" or self.teacher):
            out.append(f"+algorithm.avsd.teacher_placement={self.teacher_placement}")
            out.append(f"+algorithm.avsd.teacher={self.teacher or 'current'}")
        if not teacher:
            out = [o for o in out if not o.startswith(("+algorithm.avsd.view_template", "+algorithm.avsd.opsd_view"))]
        return out + list(self.extra_overrides)


def random_toy_model(out_dir: str) -> str:
    """The toy tokenizer and a 2-layer, hidden-64 Qwen2 with random weights (for mechanics tests;
    the demo uses the warmed-up model shipped in verl_avsd/assets/toy_model)."""
    from verl_avsd.toy.tiny_model import build_model, build_tokenizer

    problems = toy_task.generate_problems(200, seed=1, split="train")
    tokenizer = build_tokenizer([p.prompt + "\n" + p.solution for p in problems], out_dir=out_dir)
    build_model(tokenizer, out_dir=out_dir, hidden=64, layers=2, heads=4, kv_heads=2, max_positions=256)
    return out_dir


def toy_data(out_dir: str, n_train: int = 256, n_val: int = 64, seed: int = 0) -> dict[str, str]:
    """Toy parquet files (train/val) with views in extra_info.views."""
    return toy_task.write_parquet(out_dir, n_train=n_train, n_val=n_val, seed=seed)


@dataclass
class RunResult:
    returncode: int
    seconds: float
    metrics: dict[int, dict]
    log_file: Path

    def log_tail(self, n: int = 6000) -> str:
        return self.log_file.read_text(errors="replace")[-n:] if self.log_file.exists() else ""


def start_main_ppo(overrides: list[str], run_dir: str | os.PathLike, log, timeout_s: int = 1800) -> subprocess.Popen:
    """Start `python -m verl.trainer.main_ppo` in RUN_DIR (its output to the open file `log`) and
    return at once; verl's file logger writes RUN_DIR/verl_metrics.jsonl."""
    run_dir = Path(run_dir).resolve()  # verl runs in run_dir: a relative path would point elsewhere
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        VERL_FILE_LOGGER_PATH=str(run_dir / "verl_metrics.jsonl"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        RAY_DEDUP_LOGS="0",
        TOKENIZERS_PARALLELISM="false",
    )
    command = ["timeout", "-k", "30", str(timeout_s), sys.executable, "-m", "verl.trainer.main_ppo", *overrides]
    log.write("$ " + " ".join(command) + "\n")
    log.flush()
    return subprocess.Popen(command, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT)


def run_main_ppo(
    overrides: list[str],
    run_dir: str | os.PathLike,
    timeout_s: int = 1800,
    on_step: Callable[[int, dict], None] | None = None,
) -> RunResult:
    """Run `python -m verl.trainer.main_ppo` with these overrides; verl's output goes to
    RUN_DIR/train.log, per-step metrics to RUN_DIR/verl_metrics.jsonl (and to `on_step`)."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_file, log_file = run_dir / "verl_metrics.jsonl", run_dir / "train.log"
    start, seen = time.monotonic(), set()
    with open(log_file, "a") as log:
        process = start_main_ppo(overrides, run_dir, log, timeout_s)
        while process.poll() is None:
            time.sleep(1.0)
            if on_step:
                for step, metrics in sorted(read_metrics_file(metrics_file, while_writing=True).items()):
                    if step not in seen:
                        seen.add(step)
                        on_step(step, metrics)
    metrics = read_metrics_file(metrics_file, while_writing=True)
    if on_step:
        for step in sorted(set(metrics) - seen):
            on_step(step, metrics[step])
    return RunResult(process.returncode, time.monotonic() - start, metrics, log_file)
