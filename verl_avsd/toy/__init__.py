"""Toy setting for the CPU demo and the toy-scale study.

- `tiny_model`: a local byte-level BPE tokenizer (chat template) and a tiny Qwen2 model.
- `task`: multi-step arithmetic with three privileged views (full, partial, answer), its
  reward function and the verl parquet writer.
- `warmup`: the supervised warm-up that teaches the tiny model to read views, and the
  measurement (accuracies, teacher check) shipped with the checkpoint.
"""

from pathlib import Path

# The shipped warmed-up checkpoint (model + tokenizer + warmup_metrics.json), package data.
TOY_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy_model"
