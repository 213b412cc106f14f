"""Supervised warm-up of the tiny toy model, and the measurement shipped with it.

A model trained from scratch has never read privileged text, so as a teacher it would be
noise. The warm-up teaches both roles at once on a mix of examples:

    view-free        user: prompt                                  -> worked solution
    view-conditioned user: teacher_user_message(prompt, view)      -> worked solution

(the loss covers only the assistant's tokens, including the closing `<|im_end|>`), with views
only in the first `views_only_steps` steps, so the model learns to read them first. Training is
kept short, so that the model solves the task alone only sometimes (view-free accuracy between
10% and 60%: room for RL) while it reads a view well (full view close to 100%).

The measurement, on held-out (`val` split) problems:
  - greedy and sampled (temperature 1.0) accuracy, view-free and with each view;
  - the teacher check: on wrong view-free sampled rollouts, the log-prob that the student and
    the teacher (the same model with view m in context) give the first wrong token, i.e. the
    first response token that leaves the reference solution. A useful teacher puts less
    probability there than the student.

Rebuild the shipped checkpoint:

    python -m verl_avsd.toy.warmup --out verl_avsd/assets/toy_model
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from verl_avsd.toy.task import (
    DATA_SOURCE,
    DEFAULT_MAX_OPERAND,
    DEFAULT_NUM_STEPS,
    VIEW_NAMES,
    Problem,
    compute_score,
    generate_problems,
    random_problem,
    split_of_prompt,
    teacher_user_message,
)
from verl_avsd.toy.tiny_model import build_model, build_tokenizer, save_checkpoint

METRICS_FILE = "warmup_metrics.json"
IGNORE = -100  # label of tokens the loss skips (prompt, padding)


@dataclass
class WarmupConfig:
    # task difficulty
    num_steps: int = DEFAULT_NUM_STEPS
    max_operand: int = DEFAULT_MAX_OPERAND
    # model
    vocab_size: int = 320
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    # training
    train_steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    view_free_share: float = 0.4  # the rest is split evenly over the views
    # Curriculum: the first steps show a view in every example. A tiny model otherwise locks
    # into whichever skill it picks up first; if that is the arithmetic, it never learns to
    # read views (measured: full view no better than none after 400 steps).
    views_only_steps: int = 100
    seed: int = 0
    # measurement
    n_eval: int = 256
    threads: int = 1  # more threads lose badly when the 2 cores are shared (7.7 s vs 0.9 s a step)


# ----------------------------------------------------------------------------------------
# Encoding: the exact token layout verl uses (chat template, then response tokens + EOS)


def user_text(problem: Problem, view: dict | None) -> str:
    """The user turn: the bare prompt for the student, prompt + view for the teacher."""
    return problem.prompt if view is None else teacher_user_message(problem.prompt, view["name"], view["text"])


def prompt_ids(tokenizer, user: str) -> list[int]:
    """Chat-templated user turn with the assistant turn opened (verl's prompt layout)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def response_ids(tokenizer, problem: Problem) -> list[int]:
    """The reference response: solution tokens then EOS (`<|im_end|>`)."""
    return tokenizer(problem.solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def view_by_name(problem: Problem, name: str) -> dict:
    return next(v for v in problem.views() if v["name"] == name)


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-pad (prompt, response) pairs -> input_ids, attention_mask, labels, all [B, T]."""
    length = max(len(p) + len(r) for p, r in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for i, (p, r) in enumerate(examples):
        n = len(p) + len(r)
        input_ids[i, :n] = torch.tensor(p + r)
        labels[i, len(p) : n] = torch.tensor(r)
        attention_mask[i, :n] = 1
    return input_ids, attention_mask, labels


# ----------------------------------------------------------------------------------------
# Training


def train_problem_stream(rng: random.Random, cfg: WarmupConfig):
    """Endless `train`-split problems (never a held-out one)."""
    while True:
        problem = random_problem(rng, cfg.num_steps, cfg.max_operand)
        if split_of_prompt(problem.prompt) == "train":
            yield problem


def tokenizer_corpus(cfg: WarmupConfig, n: int = 2000) -> list[str]:
    """Texts the BPE is trained on: templated student and teacher turns plus solutions."""
    rng = random.Random(f"{cfg.seed}/tokenizer")
    texts = []
    for problem, _ in zip(train_problem_stream(rng, cfg), range(n)):
        texts.append(problem.prompt)
        texts.append(problem.solution)
        for view in problem.views():
            texts.append(teacher_user_message(problem.prompt, view["name"], view["text"]))
    return texts


def lr_at(step: int, cfg: WarmupConfig) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.train_steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(cfg: WarmupConfig, work_dir: str, log_every: int = 50):
    """Build tokenizer + model and run the warm-up; returns (model, tokenizer, train_seconds, losses)."""
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(tokenizer_corpus(cfg), work_dir, vocab_size=cfg.vocab_size)
    model = build_model(
        tokenizer, None, hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads, kv_heads=cfg.kv_heads, seed=cfg.seed
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    rng = random.Random(f"{cfg.seed}/warmup")
    stream = train_problem_stream(rng, cfg)
    model.train()
    losses = []
    start = time.time()
    for step in range(cfg.train_steps):
        examples = []
        for _ in range(cfg.batch_size):
            problem = next(stream)
            view_free_share = 0.0 if step < cfg.views_only_steps else cfg.view_free_share
            view = None if rng.random() < view_free_share else view_by_name(problem, rng.choice(VIEW_NAMES))
            examples.append((prompt_ids(tokenizer, user_text(problem, view)), response_ids(tokenizer, problem)))
        input_ids, attention_mask, labels = collate(examples, tokenizer.pad_token_id)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, T, V]
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == cfg.train_steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  lr {lr_at(step, cfg):.2e}  {time.time() - start:.0f}s", flush=True)
    model.eval()
    return model, tokenizer, time.time() - start, losses


# ----------------------------------------------------------------------------------------
# Measurement


@torch.no_grad()
def generate(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, sample: bool, batch_size: int = 128
) -> list[list[int]]:
    """Response token ids per prompt (up to and including EOS if produced; no padding).
    `sample=True` draws at temperature 1.0 from the full distribution (no top-k/top-p)."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(chunk):  # left padding, so every row continues at the end
            input_ids[i, width - len(p) :] = torch.tensor(p)
            attention_mask[i, width - len(p) :] = 1
        kwargs = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if sample else dict(do_sample=False)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )[:, width:]
        for row in generated.tolist():
            response = []
            for token in row:
                response.append(token)
                if token == tokenizer.eos_token_id:
                    break
            out.append(response)
    return out


def score(tokenizer, problem: Problem, response: list[int]) -> float:
    """Decode like verl's reward loop (special tokens dropped) and apply the task's checker."""
    text = tokenizer.decode(response, skip_special_tokens=True)
    return compute_score(DATA_SOURCE, text, str(problem.answer))


@torch.no_grad()
def token_log_probs(model, tokenizer, contexts: list[list[int]], targets: list[int], batch_size: int = 128) -> list[float]:
    """log p(targets[i] | contexts[i]) for each i (contexts right-padded, read at their last token)."""
    out = []
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start : start + batch_size]
        input_ids, attention_mask, _ = collate([(c, []) for c in chunk], tokenizer.pad_token_id)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.double()  # [B, T, V]
        last = torch.tensor([len(c) - 1 for c in chunk])
        log_probs = torch.log_softmax(logits[torch.arange(len(chunk)), last], dim=-1)  # [B, V]
        out.extend(log_probs[torch.arange(len(chunk)), torch.tensor(targets[start : start + len(chunk)])].tolist())
    return out


def first_wrong_position(response: list[int], reference: list[int]) -> int | None:
    """Index of the first response token that differs from the reference, None if there is none
    (the response is a prefix of the reference: truncated, no wrong token to score)."""
    for t, token in enumerate(response):
        if t >= len(reference) or token != reference[t]:
            return t
    return None


def measure(model, tokenizer, problems: list[Problem], seed: int = 0) -> dict:
    """Accuracies (greedy and sampled; view-free and per view) and the teacher check."""
    model.eval()
    torch.manual_seed(seed)
    max_new = max(len(response_ids(tokenizer, p)) for p in problems) + 8
    conditions = {"view_free": None, **{name: name for name in VIEW_NAMES}}
    accuracy: dict[str, dict[str, float]] = {"greedy": {}, "sampled": {}}
    sampled_view_free: list[list[int]] = []
    for label, view_name in conditions.items():
        prompts = [
            prompt_ids(tokenizer, user_text(p, None if view_name is None else view_by_name(p, view_name))) for p in problems
        ]
        for mode in ("greedy", "sampled"):
            responses = generate(model, tokenizer, prompts, max_new, sample=(mode == "sampled"))
            accuracy[mode][label] = sum(score(tokenizer, p, r) for p, r in zip(problems, responses)) / len(problems)
            if label == "view_free" and mode == "sampled":
                sampled_view_free = responses

    # Teacher check on wrong view-free sampled rollouts.
    wrong = []  # (problem, response, first wrong position)
    truncated = 0
    for problem, response in zip(problems, sampled_view_free):
        if score(tokenizer, problem, response) == 1.0:
            continue
        t = first_wrong_position(response, response_ids(tokenizer, problem))
        if t is None:
            truncated += 1
        else:
            wrong.append((problem, response, t))
    check = {"n_wrong_rollouts": len(wrong), "n_wrong_without_wrong_token": truncated}
    if wrong:
        targets = [r[t] for _, r, t in wrong]
        student = token_log_probs(model, tokenizer, [prompt_ids(tokenizer, p.prompt) + r[:t] for p, r, t in wrong], targets)
        check["student_logp_mean"] = sum(student) / len(student)
        for name in VIEW_NAMES:
            contexts = [prompt_ids(tokenizer, user_text(p, view_by_name(p, name))) + r[:t] for p, r, t in wrong]
            teacher = token_log_probs(model, tokenizer, contexts, targets)
            check[f"teacher_{name}_logp_mean"] = sum(teacher) / len(teacher)
            check[f"teacher_{name}_below_student_share"] = sum(q < s for q, s in zip(teacher, student)) / len(wrong)
    return {"n_eval": len(problems), "accuracy": accuracy, "teacher_check": check}


# ----------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description="Warm up the tiny toy model and measure it.")
    parser.add_argument("--out", required=True, help="checkpoint folder (model + tokenizer + metrics JSON)")
    defaults = WarmupConfig()
    for field, value in asdict(defaults).items():
        parser.add_argument("--" + field.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    cfg = WarmupConfig(**{field: getattr(args, field) for field in asdict(defaults)})
    torch.set_num_threads(cfg.threads)

    model, tokenizer, train_seconds, losses = train(cfg, args.out)
    start = time.time()
    held_out = generate_problems(cfg.n_eval, cfg.seed, "val", cfg.num_steps, cfg.max_operand)
    metrics = measure(model, tokenizer, held_out, seed=cfg.seed)
    metrics.update(
        command="python -m verl_avsd.toy.warmup " + shlex.join(argv),
        config=asdict(cfg),
        parameters=sum(p.numel() for p in model.parameters()),
        train_seconds=round(train_seconds, 1),
        final_loss_mean_last_20=round(sum(losses[-20:]) / len(losses[-20:]), 4),
        measure_seconds=round(time.time() - start, 1),
        torch_version=torch.__version__,
    )
    save_checkpoint(model, tokenizer, args.out)
    with open(os.path.join(args.out, METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=2)
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
