"""The tiny model and rollout configs the `hf` server tests share (test_hf_rollout.py,
test_hf_prompt_logprobs.py, and through it test_hf_early_rows.py)."""

from __future__ import annotations

from verl.workers.config import HFModelConfig, RolloutConfig

from verl_avsd.toy import task as toy_task
from verl_avsd.toy.tiny_model import build_model, build_tokenizer


def build_tiny_model(out) -> None:
    """A 2-layer model on the toy task's tokenizer (a few seconds on a CPU) into folder `out`."""
    problems = toy_task.generate_problems(100, seed=3, split="train")
    tokenizer = build_tokenizer([p.prompt + "\n" + p.solution for p in problems], out_dir=str(out))
    build_model(tokenizer, out_dir=str(out), hidden=64, layers=2, heads=4, kv_heads=2, max_positions=128)


def hf_configs(model_dir, **rollout_kwargs) -> tuple[RolloutConfig, HFModelConfig]:
    """verl's rollout and model configs for an `hf` server on `model_dir` (float32, sdpa)."""
    settings = dict(name="hf", prompt_length=48, response_length=12, dtype="float32", tensor_model_parallel_size=1)
    rollout = RolloutConfig(**{**settings, **rollout_kwargs})
    model = HFModelConfig(path=str(model_dir), override_config={"attn_implementation": "sdpa"})
    return rollout, model
