"""Micro-batch sizes for CPU training runs, from the model's shape and the sequence length.

A CPU run trains in host memory, which the trainer, the rollout server and the reference model
share. The toy runs used to put the whole batch in one micro-batch: right for the toy model
(a few MB a sequence) but a 135M chat model with a 49k vocabulary needs ~1.3 GB a sequence of
640 tokens for forward + backward, so 8 such sequences in one micro-batch ran a 24 GB machine
out of memory. `cpu_micro_batch_size` picks the largest micro-batch whose estimated
forward + backward memory fits a budget (MICRO_BATCH_BUDGET_BYTES, 4 GiB by default).

The estimate per token, in float32 values (measured against a real forward + backward with
log-softmax, gather and entropy in bench/real_checkpoint.py and tests/test_cpu_micro_batch.py;
the estimate is 1.4-1.7x the measured growth of peak RSS, never below it):

  - LOGIT_COPIES x vocab: the logits, their temperature-scaled slice, log-softmax, the
    entropy's softmax and the gradients of the first two;
  - per layer ACT_PER_HIDDEN x hidden + ACT_PER_INTERMEDIATE x intermediate: the activations
    autograd keeps for backward (norms, q/k/v, attention output, the MLP's gate/up/act);
  - per layer heads x sequence length: attention weights, materialised by CPU sdpa with the
    padding mask of a padded batch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

MICRO_BATCH_BUDGET_BYTES = 4 * 2**30  # forward + backward of one micro-batch, on top of weights and optimizer
BYTES_PER_VALUE = 4  # float32: CPU runs train in float32 (cpu/cpu.yaml)
LOGIT_COPIES = 6
ACT_PER_HIDDEN = 10
ACT_PER_INTERMEDIATE = 4


@dataclass(frozen=True)
class ModelShape:
    """What the memory of a decoder-only transformer's training step depends on."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int

    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike) -> "ModelShape":
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; the CPU micro-batch size is computed from the model's config.json")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        config = config.get("text_config", config)  # multimodal configs nest the language model's
        values = {}
        for name in cls.__dataclass_fields__:
            value = config.get(name)
            if name == "intermediate_size" and value is None:
                value = 4 * config.get("hidden_size", 0)  # the classic MLP width when a config leaves it out
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{path}: field {name!r} must be a positive integer, got {value!r}")
            values[name] = value
        return cls(**values)


def train_bytes_per_sequence(shape: ModelShape, seq_len: int) -> int:
    """Estimated host memory of one sequence of `seq_len` tokens in a forward + backward pass."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    per_layer = ACT_PER_HIDDEN * shape.hidden_size + ACT_PER_INTERMEDIATE * shape.intermediate_size
    per_layer += shape.num_attention_heads * seq_len
    per_token = LOGIT_COPIES * shape.vocab_size + shape.num_hidden_layers * per_layer
    return seq_len * per_token * BYTES_PER_VALUE


def cpu_micro_batch_size(
    model_dir: str | os.PathLike, seq_len: int, batch_size: int, budget_bytes: int = MICRO_BATCH_BUDGET_BYTES
) -> int:
    """The largest divisor of `batch_size` (verl splits a batch into equal micro-batches) whose
    sequences of `seq_len` tokens (prompt + response) fit `budget_bytes`; at least 1."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if budget_bytes < 1:
        raise ValueError(f"budget_bytes must be >= 1, got {budget_bytes}")
    per_sequence = train_bytes_per_sequence(ModelShape.from_model_dir(model_dir), seq_len)
    fits = max(1, budget_bytes // per_sequence)
    return max(size for size in range(1, batch_size + 1) if batch_size % size == 0 and size <= fits)


def run_micro_batch_size(model_dir: str | os.PathLike, seq_len: int, batch_size: int) -> int:
    """`cpu_micro_batch_size` for a run whose model may not exist yet: a recipe's dry run prints
    the command before it builds the toy model, which fits whole (one micro-batch); verl itself
    refuses a model path without a config.json, so nothing trains on this guess."""
    if not (Path(model_dir) / "config.json").exists():
        return batch_size
    return cpu_micro_batch_size(model_dir, seq_len, batch_size)


def micro_batch_overrides(micro_batch_size: int) -> list[str]:
    """verl's three per-device micro-batch keys (actor update, rollout and ref log-probs)."""
    return [
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro_batch_size}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro_batch_size}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={micro_batch_size}",
    ]
