"""The CPU port: verl 0.9.1 training on a machine with no accelerator.

Reading order:
- `platform.py`: the "cpu" device platform for verl (gloo collectives, `torch.cpu` as the device
  module) and `cpu_platform_selected()`; it registers and patches only where the CPU platform is
  selected, and `cpu_overrides()` reads the hydra overrides every CPU run needs from `cpu.yaml`.
- `cpu.yaml`: those overrides (placeholder GPU, fp32, the `hf` rollout, one process).
- `hf_rollout.py`: the `hf` rollout backend (transformers `generate` in a Ray actor), with
  `sampled_logprobs.py`: each sampled token's log-prob, taken step by step during generation,
  and `early_rows.py`: each request answered when its own row ends; generation and scoring locks;
  `hf_adapter.py`: the adapter verl builds inside the trainer worker (weights, wake/sleep).
- `prompt_logprobs.py` + `prefix_cache.py`: prompt-log-prob (teacher scoring) requests, answered
  as vLLM does, with an LRU cache of shared prefixes' KV; `view_follower.py`: a sample's teacher
  views scored while it still generates (rollout placement's `teacher_stream_tokens`).
- `micro_batch.py`: micro-batch sizes that fit host memory, from the model's shape.

`verl_avsd.plugin` imports `platform` first in every verl process (on a GPU host it only defines
things) and registers the name `hf` without importing `hf_rollout`; nothing else here is imported
unless a run uses it. `python -m verl_avsd.cpu` prints the overrides, one per line, for shell scripts.
"""
