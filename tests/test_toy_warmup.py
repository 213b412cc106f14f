"""Warm-up pieces: the training layout, the log-prob reader and a short training run."""

import math

import torch

from verl_avsd.toy.task import generate_problems, teacher_user_message
from verl_avsd.toy.tiny_model import build_model, build_tokenizer
from verl_avsd.toy.warmup import (
    IGNORE,
    WarmupConfig,
    collate,
    first_wrong_position,
    prompt_ids,
    response_ids,
    token_log_probs,
    train,
    user_text,
    view_by_name,
)


def small_tokenizer():
    problems = generate_problems(50, seed=0, split="train")
    texts = [p.prompt for p in problems] + [p.solution for p in problems]
    texts += [teacher_user_message(p.prompt, v["name"], v["text"]) for p in problems for v in p.views()]
    return build_tokenizer(texts, None, vocab_size=300), problems


def test_examples_use_verl_layout_and_train_only_the_response():
    tokenizer, problems = small_tokenizer()
    problem = problems[0]
    student = prompt_ids(tokenizer, user_text(problem, None))
    teacher = prompt_ids(tokenizer, user_text(problem, view_by_name(problem, "full")))
    # the student prompt is the chat-templated bare question; the teacher's holds the view too
    assert tokenizer.decode(student) == f"<|im_start|>user\n{problem.prompt}<|im_end|>\n<|im_start|>assistant\n"
    assert problem.solution in tokenizer.decode(teacher) and problem.solution not in tokenizer.decode(student)
    response = response_ids(tokenizer, problem)
    assert response[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(response, skip_special_tokens=True) == problem.solution

    input_ids, attention_mask, labels = collate([(student, response), (teacher, response)], tokenizer.pad_token_id)
    for row, prompt in enumerate((student, teacher)):
        n = len(prompt) + len(response)
        assert input_ids[row, :n].tolist() == prompt + response
        assert (labels[row, : len(prompt)] == IGNORE).all() and (labels[row, n:] == IGNORE).all()
        assert labels[row, len(prompt) : n].tolist() == response
        assert attention_mask[row].sum().item() == n


def test_token_log_probs_match_unpadded_float64_reference():
    tokenizer, problems = small_tokenizer()
    model = build_model(tokenizer, None, hidden=32, layers=2, heads=2, kv_heads=1, seed=1).eval()
    contexts = [prompt_ids(tokenizer, p.prompt) + response_ids(tokenizer, p)[:k] for k, p in enumerate(problems[:6])]
    targets = [response_ids(tokenizer, p)[k] for k, p in enumerate(problems[:6])]
    got = token_log_probs(model, tokenizer, contexts, targets, batch_size=4)  # padded batches
    for context, target, value in zip(contexts, targets, got):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([context])).logits[0, -1].double()
        expected = logits[target].item() - math.log(torch.exp(logits).sum().item())
        assert abs(value - expected) < 1e-4


def test_first_wrong_position():
    assert first_wrong_position([1, 2, 3], [1, 2, 3, 4]) is None  # a prefix: nothing wrong yet
    assert first_wrong_position([1, 9, 3], [1, 2, 3]) == 1
    assert first_wrong_position([1, 2, 3, 4], [1, 2, 3]) == 3  # runs past the reference end


def test_short_warmup_lowers_the_loss(tmp_path):
    torch.set_num_threads(1)
    cfg = WarmupConfig(hidden=32, layers=1, heads=2, kv_heads=1, train_steps=40, batch_size=16, warmup_steps=5)
    model, tokenizer, seconds, losses = train(cfg, str(tmp_path), log_every=1000)
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert (tmp_path / "tokenizer.json").exists()
