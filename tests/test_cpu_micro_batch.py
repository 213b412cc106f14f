"""CPU micro-batch sizes from the model's shape (verl_avsd.cpu.micro_batch).

The memory estimate is checked against a measured forward + backward (peak RSS of a fresh
process), and the sizes against verl's rule that micro-batches split the batch evenly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from peak_rss import PEAK_GROWTH

from verl_avsd.cpu.micro_batch import (
    MICRO_BATCH_BUDGET_BYTES,
    ModelShape,
    cpu_micro_batch_size,
    micro_batch_overrides,
    run_micro_batch_size,
    train_bytes_per_sequence,
)
from verl_avsd.toy import TOY_MODEL_DIR
from verl_avsd.toy_run import ToyRun

# SmolLM2-135M-Instruct's shape (what `verl-avsd prep-model smollm2` writes)
SMOLLM2 = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9}


def write_config(folder, **fields):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fields))
    return folder


def test_toy_model_trains_the_whole_batch_in_one_micro_batch():
    assert cpu_micro_batch_size(TOY_MODEL_DIR, seq_len=96 + 48, batch_size=32) == 32


def test_a_135m_chat_model_is_split(tmp_path):
    model = write_config(tmp_path / "smol", **SMOLLM2)
    # 8 prompts x 256-token responses: one micro-batch of all 8 was ~12 GB of activations
    assert cpu_micro_batch_size(model, seq_len=256 + 256, batch_size=8) == 2
    assert cpu_micro_batch_size(model, seq_len=256 + 64, batch_size=4) == 4  # the slow test's size fits whole
    assert cpu_micro_batch_size(model, seq_len=256 + 64, batch_size=6) == 3  # 4 fit, 4 does not divide 6
    assert cpu_micro_batch_size(model, seq_len=8192, batch_size=8) == 1  # never below one sequence


def test_toy_run_uses_the_model_sized_micro_batch(tmp_path):
    model = write_config(tmp_path / "smol", **SMOLLM2)
    run = ToyRun(
        model_dir=str(model),
        train_file="t.parquet",
        val_file="v.parquet",
        run_dir=str(tmp_path / "run"),
        prompts_per_step=8,
        max_response_length=416,
    )
    assert set(micro_batch_overrides(2)) <= set(run.overrides())


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 64),
    seq_len=st.integers(1, 4096),
    vocab=st.integers(100, 300_000),
    budget=st.integers(1, 2 * MICRO_BATCH_BUDGET_BYTES),
)
def test_micro_batch_divides_the_batch_and_fits_the_budget(tmp_path_factory, batch, seq_len, vocab, budget):
    model = write_config(tmp_path_factory.mktemp("m"), **{**SMOLLM2, "vocab_size": vocab})
    size = cpu_micro_batch_size(model, seq_len, batch, budget_bytes=budget)
    per_sequence = train_bytes_per_sequence(ModelShape.from_model_dir(model), seq_len)
    assert 1 <= size <= batch and batch % size == 0
    assert size == 1 or size * per_sequence <= budget
    # the largest such divisor: the next larger divisor would not fit
    larger = [d for d in range(size + 1, batch + 1) if batch % d == 0]
    assert not larger or larger[0] * per_sequence > budget


# A fresh process, so its peak RSS measures only this forward + backward: logits, temperature,
# log-softmax + gather (the loss) and entropy (no grad), as verl's actor computes them.
_MEASURE = PEAK_GROWTH + textwrap.dedent("""
    import sys, torch
    from transformers import LlamaConfig, LlamaForCausalLM
    vocab, hidden, layers, heads, seq_len, batch = map(int, sys.argv[1:7])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden,
                                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                                         max_position_embeddings=seq_len, attn_implementation="sdpa"))
    def step(batch):
        ids = torch.randint(0, vocab, (batch, seq_len))
        mask = torch.ones_like(ids)
        mask[0, : seq_len // 4] = 0  # a left-padded row, as in verl's padded batches
        logits = model(input_ids=ids, attention_mask=mask).logits[:, seq_len // 2 - 1 : -1] / 1.0
        log_probs = logits.log_softmax(-1).gather(-1, ids[:, seq_len // 2 :, None]).squeeze(-1)
        with torch.no_grad():
            entropy = torch.logsumexp(logits, -1) - (logits.softmax(-1) * logits).sum(-1)
        (-log_probs.sum()).backward()
        model.zero_grad(set_to_none=False)
    step(1)  # the gradients exist from now on
    print(peak_growth(lambda: step(batch))[0])
""")


def test_estimate_bounds_a_measured_forward_backward():
    """Peak RSS growth from a micro-batch of 2 to one of 4 sequences (each in its own process),
    per sequence, is below the
    estimate, and the estimate is not wasteful (under 3x the measurement)."""
    vocab, hidden, layers, heads, seq_len = 8192, 64, 2, 4, 256
    growth = {}
    for batch in (2, 4):
        proc = subprocess.run(
            [sys.executable, "-c", _MEASURE, *map(str, (vocab, hidden, layers, heads, seq_len, batch))],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        growth[batch] = int(proc.stdout.split()[-1])
    at_two, at_four = growth[2], growth[4]
    measured_per_sequence = (at_four - at_two) / 2
    shape = ModelShape(vocab, hidden, 3 * hidden, layers, heads)
    estimate = train_bytes_per_sequence(shape, seq_len)
    assert measured_per_sequence <= estimate < 3 * measured_per_sequence, (measured_per_sequence, estimate)


def test_bad_model_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing/config.json: not found"):
        cpu_micro_batch_size(tmp_path / "nothing", 128, 8)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken/config.json: not valid JSON"):
        cpu_micro_batch_size(broken, 128, 8)
    no_vocab = write_config(tmp_path / "no_vocab", **{k: v for k, v in SMOLLM2.items() if k != "vocab_size"})
    with pytest.raises(ValueError, match=r"no_vocab/config.json: field 'vocab_size' must be a positive integer, got None"):
        cpu_micro_batch_size(no_vocab, 128, 8)
    text_layers = write_config(tmp_path / "text_layers", **{**SMOLLM2, "num_hidden_layers": "30"})
    with pytest.raises(ValueError, match=r"field 'num_hidden_layers' must be a positive integer, got '30'"):
        cpu_micro_batch_size(text_layers, 128, 8)
    model = write_config(tmp_path / "ok", **SMOLLM2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        cpu_micro_batch_size(model, 128, 0)
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        cpu_micro_batch_size(model, 0, 8)


def test_a_run_whose_model_is_not_built_yet_gets_the_whole_batch(tmp_path):
    assert run_micro_batch_size(tmp_path / "to_be_built", 144, 16) == 16
