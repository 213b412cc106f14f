"""The shipped warmed-up toy checkpoint: loads offline, and reads views (measured, small n)."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_avsd.toy import TOY_MODEL_DIR
from verl_avsd.toy.task import generate_problems
from verl_avsd.toy.warmup import METRICS_FILE, measure


@pytest.fixture(scope="module")
def shipped():
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(TOY_MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(TOY_MODEL_DIR).eval()
    with open(os.path.join(TOY_MODEL_DIR, METRICS_FILE)) as f:
        metrics = json.load(f)
    return model, tokenizer, metrics


def test_checkpoint_is_small_safetensors_with_its_rebuild_command(shipped):
    model, tokenizer, metrics = shipped
    weights = os.path.join(TOY_MODEL_DIR, "model.safetensors")
    assert os.path.getsize(weights) < 8 * 2**20
    assert len(tokenizer) == model.config.vocab_size
    assert tokenizer.chat_template and tokenizer.eos_token_id == model.generation_config.eos_token_id
    assert metrics["command"].startswith("python -m verl_avsd.toy.warmup --out ")
    assert metrics["parameters"] == sum(p.numel() for p in model.parameters())


def test_views_help_and_teacher_flags_the_first_wrong_token(shipped):
    model, tokenizer, metrics = shipped
    task = metrics["config"]
    problems = generate_problems(24, seed=123, split="val", num_steps=task["num_steps"], max_operand=task["max_operand"])
    result = measure(model, tokenizer, problems, seed=0)
    greedy = result["accuracy"]["greedy"]
    assert greedy["full"] >= 0.9
    assert greedy["full"] > greedy["view_free"]
    check = result["teacher_check"]
    assert check["n_wrong_rollouts"] >= 3
    assert check["teacher_full_logp_mean"] < check["student_logp_mean"]
    assert check["teacher_full_below_student_share"] > 0.5
