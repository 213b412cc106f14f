"""Benchmark: how much AVSD teacher work hides in the generation tail (`teacher_placement`), with
torch + transformers only (the GPU device machine has no verl, ray or vLLM).

One engine generates a batch of B rollouts with `transformers.generate` (sampling, up to
`--max-new-tokens`). Every decode step's wall-clock end tau_s (s = 1..S) is recorded by a logits
processor (CUDA-synchronised), and each row's end step e_i (the step that emitted its EOS, S if it
was cut at the limit). Row i's generation ends at c_i = tau_{e_i}; the batch's at T_gen = tau_S.
The response lengths R_i = e_i are the *generation tail* statistics: p50/p90/max over the mean, the
share of rows cut at the limit, and idle_slot_fraction = 1 - mean_s(k_s) / B (k_s: rows still
generating at step s), the share of the batch's decode slots a continuous-batching engine (vLLM)
would leave free.

Each row then gets M teacher sequences, as workers/teacher_context.py builds them:
context_m = prompt + header_m + view_m (view 0 "full": --view-tokens, view 1 "partial": half of it,
view 2 "answer": 8 tokens, further views: half), followed by the row's response. The M contexts
of a row share its prompt (the packed path feeds it once, as vLLM's prefix cache does). OPSD is
M = 1 (the full view). All log-probs come from the project's packed prefill
(workers/teacher_prefill.py::packed_response_logprobs), timed CUDA-synchronised:

  actor placement    T_pack(M): one packed pass over all B x M sequences after generation; all of
                     it blocks the step.
  rollout placement  s_i(M): row i's M sequences scored alone (one packed call per row), the work
                     a per-sample prompt-log-prob request costs. Simulated on one server that
                     scores the rows in order of c_i, one at a time, beside decode, without slowing
                     it ("ride-along": the tail's decode steps are memory-bound, so a prefill fits
                     in their idle compute; vLLM's chunked prefill mixes the two):
                         start_i = max(c_i, end_{i-1}),  end_i = start_i + s_i   (rows sorted by c_i)
                         blocking(M) = max(0, max_i end_i - T_gen)
                         hidden_i    = clamp(min(end_i, T_gen) - start_i, 0)
                         hidden_fraction = sum_i hidden_i / sum_i s_i
                     (the trainer's avsd/teacher_blocking_s and avsd/teacher_hidden_fraction,
                     verl_avsd/teacher_placement.py::placement_timing, from the same times). A row
                     ending at the last step (c_i = T_gen) never hides. The pessimistic bound
                     ("serial": the scoring steals engine time from decode) costs sum_i s_i on the
                     critical path, also reported.

The step estimate: step(M) = T_gen + teacher_blocking(M) + T_update, where T_update is measured on
the same model and rollouts: one forward (old log-probs) and one forward + backward (one update
epoch, no optimizer step) over the B sequences prompt + response, right-padded micro-batches within
--update-token-budget. Ratios AVSD/OPSD = step(M) / step(1) per placement. HF generate is slower
per token than vLLM, so T_gen here is larger than a cluster's: bench/README.md ("Expected step
ratio on a GPU cluster (on paper)") redoes the arithmetic with cluster proportions.

The model: `--model DIR` (any causal LM folder), or a random Qwen3-shaped one (`--shape tiny` or
`qwen3-1.7b`) saved to a temp dir and loaded back. A random model's own EOS is meaningless (about
1/V per step), so by default (`--lengths lognormal`, the default without --model) each row's length
is drawn log-normal (median --length-median-frac x max_new_tokens, sigma --length-sigma, cut at
the limit) and imposed by the logits processor (EOS masked before, forced at the drawn step);
`--lengths natural` (the default with --model) lets the model end when it samples EOS. Prompts:
with --model and a tokenizer with a chat template, arithmetic word problems in that template
(left-padded into one batch); otherwise --prompt-tokens random tokens.

  python bench/rollout_overlap.py                                     # CPU: tiny model, < 1 min
  python bench/rollout_overlap.py --device cuda --shape qwen3-1.7b --dtype bfloat16 --batch 64 \\
      --max-new-tokens 1024 --prompt-tokens 256 --view-tokens 512    # the GPU check (gpu_checks.sh)

Writes --out/gpu_overlap_<device>.json (config, versions, tail statistics, the per-row arrays
c_i, e_i, s_i, the timings and the simulated placements) and .md (one line).
`--on-paper` instead runs the same simulation on assumed cluster numbers (PAPER_SCENARIOS: published
reasoning-RL length tails, the H100 prefill rate) into gpu_overlap_paper.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
import teacher_prefill as prefill_bench  # noqa: E402 - bench/ sibling; falls back to workers/ loaded by path without the install

packed_response_logprobs = prefill_bench.packed_response_logprobs

VIEW_NAMES = ("full", "partial", "answer")
HEADER_TOKENS = 12  # "Reference (full):" and the like, different per view
ANSWER_TOKENS = 8
SHARE_PREFIX_MIN_TOKENS = 16  # the teacher worker's default


# --------------------------------------------------------------------------------------------
# The simulation (pure arithmetic on recorded times; the test recomputes it by hand)
# --------------------------------------------------------------------------------------------


def simulate_rollout_placement(end_times: list[float], scoring_times: list[float], gen_end: float) -> dict:
    """One server scores each row's views from its generation end c_i, in order of c_i (ties by
    row), one row at a time, beside decode (ride-along). Times in seconds from generation start.

    Returns blocking (teacher work after gen_end), hidden_fraction, per-row start/end/hidden and
    serial_s (sum of s_i: the cost if the scoring took engine time from decode instead).
    """
    if len(end_times) != len(scoring_times):
        raise ValueError(f"{len(end_times)} row end times but {len(scoring_times)} scoring times")
    order = sorted(range(len(end_times)), key=lambda i: (end_times[i], i))
    start, end, hidden = [0.0] * len(end_times), [0.0] * len(end_times), [0.0] * len(end_times)
    free_at = 0.0  # when the server finishes its previous row
    for i in order:
        start[i] = max(end_times[i], free_at)
        end[i] = free_at = start[i] + scoring_times[i]
        hidden[i] = max(min(end[i], gen_end) - start[i], 0.0)
    total = sum(scoring_times)
    return {
        "blocking_s": max(max(end, default=gen_end) - gen_end, 0.0),
        "hidden_fraction": sum(hidden) / total if total > 0 else 1.0,
        "serial_s": total,
        "start_s": start,
        "end_s": end,
        "hidden_s": hidden,
    }


def tail_statistics(lengths: list[int], max_new_tokens: int) -> dict:
    """Response-length distribution of one batch (the generation tail), relative to the mean."""
    ordered = sorted(lengths)
    mean = sum(ordered) / len(ordered)

    def quantile(q: float) -> float:  # nearest-rank
        return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])

    steps = max(ordered)
    active = [sum(1 for n in ordered if n >= s) for s in range(1, steps + 1)]  # rows generating at step s
    return {
        "mean": mean,
        "p50": quantile(0.5),
        "p90": quantile(0.9),
        "max": float(steps),
        "p50_over_mean": quantile(0.5) / mean,
        "p90_over_mean": quantile(0.9) / mean,
        "max_over_mean": steps / mean,
        "truncated_fraction": sum(1 for n in ordered if n >= max_new_tokens) / len(ordered),
        "idle_slot_fraction": 1.0 - sum(active) / (len(ordered) * steps),
        "steps_with_under_half_active_fraction": sum(1 for k in active if 2 * k < len(ordered)) / steps,
    }


# --------------------------------------------------------------------------------------------
# Model, generation with per-step times, teacher sequences
# --------------------------------------------------------------------------------------------


def random_model_dir(shape: str, directory: Path, device: torch.device, dtype: torch.dtype) -> Path:
    """A random Qwen3-shaped model saved with save_pretrained (loaded back like a real one); built
    on the device in its dtype (a 1.7B one initialised on the CPU in float32 takes half a minute)."""
    config = prefill_bench.qwen3_config(shape)
    config.eos_token_id = config.pad_token_id = 1
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(directory)
    del model
    return directory


def load_model(model_dir: Path, device: torch.device, dtype: torch.dtype):
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock(transformers.LogitsProcessor):
    """Records each decode step's end (its logits ready) and, given target lengths, imposes them:
    EOS masked before a row's drawn length, forced at it (targets[i] = 0: the model decides)."""

    def __init__(self, prompt_length: int, eos: int, targets: list[int], device: torch.device) -> None:
        self.prompt_length, self.eos, self.device = prompt_length, eos, device
        self.targets = torch.tensor(targets, dtype=torch.long, device=device)  # [B]
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        sync(self.device)
        self.times.append(time.perf_counter())
        step = input_ids.shape[1] - self.prompt_length + 1  # the step whose token is being sampled, 1-based
        imposed = self.targets > 0  # [B]
        before, at = imposed & (step < self.targets), imposed & (step >= self.targets)
        scores[before, self.eos] = -math.inf
        forced = torch.full_like(scores[0], -math.inf)
        forced[self.eos] = 0.0
        scores[at] = forced
        return scores


def generate(model, prompts: list[torch.Tensor], max_new_tokens: int, targets: list[int], eos: int, device, seed: int):
    """Sampled generation of the prompts (left-padded into one batch); returns responses (each up to
    and including its EOS), end steps e_i, end times c_i and step times tau_s (seconds from the call)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), eos, dtype=torch.long)  # [B, P]
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :], attention_mask[row, width - len(prompt) :] = prompt, 1
    clock = StepClock(width, eos, targets, device)
    torch.manual_seed(seed)
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=eos,
            logits_processor=transformers.LogitsProcessorList([clock]),
        )
    sync(device)
    generated = out[:, width:].cpu()  # [B, S]
    steps = [t - start for t in clock.times]  # tau_1..tau_S
    responses, end_steps = [], []
    for row in generated:
        hits = (row == eos).nonzero()
        length = int(hits[0]) + 1 if len(hits) else len(row)
        responses.append(row[:length].clone())
        end_steps.append(length)
    return responses, end_steps, [steps[e - 1] for e in end_steps], steps


def chat_prompts(model_dir: Path, batch: int, seed: int) -> list[torch.Tensor] | None:
    """Arithmetic word problems in the model's chat template (a real model's lengths vary with the
    problem and the sampling), or None where the folder has no tokenizer with a chat template."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError):
        return None
    if not getattr(tokenizer, "chat_template", None):
        return None
    generator = torch.Generator().manual_seed(seed)
    prompts = []
    for _ in range(batch):
        a, b, c = (int(x) for x in torch.randint(2, 100, (3,), generator=generator))
        question = (
            f"A shop sells {a} boxes of {b} apples and then {c} more apples. How many apples is that? Explain step by step."
        )
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
        )
        ids = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
        prompts.append(torch.tensor(list(ids), dtype=torch.long))
    return prompts


def view_contexts(prompts: list[torch.Tensor], views: int, view_tokens: int, vocab: int, seed: int) -> list[list[torch.Tensor]]:
    """[row][view] context token ids: the row's prompt + a view header + the view's text."""
    generator = torch.Generator().manual_seed(seed + 1)
    lengths = [view_tokens, max(1, view_tokens // 2), ANSWER_TOKENS] + [max(1, view_tokens // 2)] * max(0, views - 3)

    def tokens(n: int) -> torch.Tensor:
        return torch.randint(2, vocab, (n,), generator=generator)  # never EOS (1) or pad

    headers = [tokens(HEADER_TOKENS) for _ in range(views)]  # the same template for every row
    return [[torch.cat([prompt, headers[m], tokens(lengths[m])]) for m in range(views)] for prompt in prompts]


# --------------------------------------------------------------------------------------------
# Timed work
# --------------------------------------------------------------------------------------------


def timed(device, fn, *args, **kwargs):
    sync(device)
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    sync(device)
    return time.perf_counter() - start, result


def teacher_times(model, sequences_by_row, views: int, token_budget: int, repeats: int, device) -> dict:
    """T_pack (all rows' first `views` sequences, one packed call; median of repeats) and s_i
    (each row's alone), plus the largest |difference| between the two answers."""
    rows = [[pair for pair in row[:views]] for row in sequences_by_row]
    everything = [pair for row in rows for pair in row]
    kwargs = {"token_budget": token_budget, "share_prefix_min_tokens": SHARE_PREFIX_MIN_TOKENS}
    packed_response_logprobs(model, everything, **kwargs)  # warm-up: this workload's shapes and allocations
    packed_runs, packed = [], None
    for _ in range(repeats):
        seconds, packed = timed(device, packed_response_logprobs, model, everything, **kwargs)
        packed_runs.append(seconds)
    per_row, diff = [], 0.0
    for r, row in enumerate(rows):
        seconds, out = timed(device, packed_response_logprobs, model, row, **kwargs)
        per_row.append(seconds)
        for m, logprobs in enumerate(out):
            if len(logprobs):
                diff = max(diff, float((logprobs - packed[r * views + m]).abs().max()))
    return {
        "pack_s": statistics.median(packed_runs),
        "pack_s_all": packed_runs,
        "row_s": per_row,
        "sequences": len(everything),
        "tokens": sum(len(c) + len(r) - 1 for c, r in everything),
        "max_abs_diff_row_vs_packed": diff,
    }


def update_time(model, prompts: list[torch.Tensor], responses: list[torch.Tensor], token_budget: int, device) -> dict:
    """One forward (old log-probs) + one forward/backward (an update epoch, no optimizer step) over
    the B sequences prompt + response, in right-padded micro-batches of <= token_budget tokens."""
    sequences = [torch.cat([prompt, response]) for prompt, response in zip(prompts, responses)]
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * len(sequences[current[0]]) > token_budget:
            batches.append(current)
            current = []
        current.append(i)
    batches.append(current)

    def response_logprob_sum(batch: list[int]) -> torch.Tensor:
        width = len(sequences[batch[0]])
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        scored = torch.zeros(len(batch), width - 1)  # [b, L - 1]: 1 where position t + 1 is a response token
        for row, i in enumerate(batch):
            ids[row, : len(sequences[i])], mask[row, : len(sequences[i])] = sequences[i], 1
            scored[row, len(prompts[i]) - 1 : len(sequences[i]) - 1] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()  # [b, L - 1, V]
        logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # [b, L - 1]
        return (logp * scored.to(device)).sum()

    def old_logprobs():
        with torch.no_grad():
            for batch in batches:
                response_logprob_sum(batch)

    def one_epoch():
        model.train()
        for batch in batches:
            (-response_logprob_sum(batch)).backward()
        model.zero_grad(set_to_none=True)
        model.eval()

    forward_s, _ = timed(device, old_logprobs)
    backward_s, _ = timed(device, one_epoch)
    return {
        "old_logprob_s": forward_s,
        "update_epoch_s": backward_s,
        "total_s": forward_s + backward_s,
        "microbatches": len(batches),
    }


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def draw_lengths(batch: int, max_new_tokens: int, median_frac: float, sigma: float, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed + 2)
    normal = torch.randn(batch, generator=generator, dtype=torch.float64)
    lengths = (math.log(median_frac * max_new_tokens) + sigma * normal).exp()
    return [int(min(max_new_tokens, max(2, round(float(n))))) for n in lengths]


def placements(gen: dict, teacher: dict, update_s: float) -> dict:
    """Blocking teacher time and step estimate per placement for one M."""
    sim = simulate_rollout_placement(gen["end_s"], teacher["row_s"], gen["gen_s"])
    actor_step = gen["gen_s"] + teacher["pack_s"] + update_s
    rollout_step = gen["gen_s"] + sim["blocking_s"] + update_s
    return {
        "actor": {"blocking_s": teacher["pack_s"], "hidden_fraction": 0.0, "step_s": actor_step},
        "rollout": {
            "blocking_s": sim["blocking_s"],
            "hidden_fraction": sim["hidden_fraction"],
            "step_s": rollout_step,
            "serial_s": sim["serial_s"],
            "serial_step_s": gen["gen_s"] + sim["serial_s"] + update_s,
            "start_s": sim["start_s"],
            "end_s": sim["end_s"],
        },
        "teacher": teacher,
    }


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory(prefix="rollout_overlap_") as tmp:
        model_dir = Path(args.model) if args.model else random_model_dir(args.shape, Path(tmp), device, dtype)
        model = load_model(model_dir, device, dtype)
    config = model.config.get_text_config()
    vocab = config.vocab_size
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    if eos is None:
        raise ValueError(f"{model_dir}: the model names no eos_token_id (config.json or generation_config.json)")
    lengths_mode = args.lengths or ("natural" if args.model else "lognormal")
    targets = (
        draw_lengths(args.batch, args.max_new_tokens, args.length_median_frac, args.length_sigma, args.seed)
        if lengths_mode == "lognormal"
        else [0] * args.batch
    )
    prompts = chat_prompts(model_dir, args.batch, args.seed) if args.model else None
    prompt_kind = "chat" if prompts is not None else "random"
    if prompts is None:  # random tokens, never EOS
        generator = torch.Generator().manual_seed(args.seed)
        prompts = list(torch.randint(2, vocab, (args.batch, args.prompt_tokens), generator=generator).unbind(0))  # B x [P]
        prompts = [torch.where(p == eos, (eos + 1) % vocab, p) for p in prompts]

    # warm-up: kernels, allocator, the packed path's attention check
    generate(model, prompts[:2], 4, [0, 0], eos, device, args.seed)
    responses, end_steps, end_s, step_s = generate(model, prompts, args.max_new_tokens, targets, eos, device, args.seed)
    gen = {"gen_s": step_s[-1], "end_s": end_s, "end_steps": end_steps, "step_s": step_s}
    decode_steps = [b - a for a, b in zip(step_s, step_s[1:])] or [step_s[0]]

    contexts = view_contexts(prompts, args.views, args.view_tokens, vocab, args.seed)
    sequences = [[(context, response) for context in row] for row, response in zip(contexts, responses)]
    teacher = {m: teacher_times(model, sequences, m, args.token_budget, args.repeats, device) for m in (args.views, 1)}
    update = update_time(model, prompts, responses, args.update_token_budget, device)

    results = {m: placements(gen, teacher[m], update["total_s"]) for m in (args.views, 1)}
    avsd, opsd = results[args.views], results[1]
    ratios = {placement: avsd[placement]["step_s"] / opsd[placement]["step_s"] for placement in ("actor", "rollout")}
    ratios["rollout_serial"] = avsd["rollout"]["serial_step_s"] / opsd["rollout"]["serial_step_s"]
    return {
        "config": {
            **vars(args),
            "lengths": lengths_mode,
            "prompts": prompt_kind,
            "model_kind": str(args.model or f"random {args.shape}"),
            "eos": eos,
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "cpu_threads": torch.get_num_threads(),
            "attn_backend": prefill_bench.prefill_attention.resolve_attn_backend(model, "auto"),
        },
        "tail": tail_statistics(end_steps, args.max_new_tokens),
        "generation": {
            **gen,
            "targets": targets,
            "decode_step_median_s": statistics.median(decode_steps),
            "steps": len(step_s),
        },
        "update": update,
        "views": {str(m): results[m] for m in (args.views, 1)},
        "step_ratio_avsd_over_opsd": ratios,
    }


# --------------------------------------------------------------------------------------------
# On paper: a GPU cluster's step from assumed tail statistics (bench/README.md shows the arithmetic)
# --------------------------------------------------------------------------------------------

# Two workloads for bench/README.md's "Expected step ratio on a GPU cluster (on paper)". Common:
# 8 engines (one GPU each) x 64 rollouts, decode step t_dec = 8 ms whatever the rows in flight
# (memory-bound), teacher prefill P = 85.1k tokens/s per GPU (the packed path measured on an H100,
# Qwen3-1.7B shape, as the project spec VERL.md quotes), view tokens full 700, partial 350, answer 16
# (prompt cached), lengths log-normal cut at the cap.
PAPER_SCENARIOS = {
    "reasoning": {"median": 1000, "sigma": 1.0, "cap": 8192, "rest_s": 10.0},  # p99/median ~10
    "short_answers": {"median": 300, "sigma": 0.5, "cap": 1024, "rest_s": 3.0},
    "no_tail": {"median": 300, "sigma": 0.0, "cap": 1024, "rest_s": 3.0},  # every row ends at the same step (the CPU toy)
}
PAPER_COMMON = {"engines": 8, "rows_per_engine": 64, "t_dec_s": 0.008, "prefill_tps": 85_100.0, "views": [700, 350, 16]}


def cluster_estimate(median, sigma, cap, rest_s, engines, rows_per_engine, t_dec_s, prefill_tps, views, trials=200, seed=0):
    """Mean over `trials` steps: row i of engine e ends at R_i * t_dec; its M-view teacher costs
    (sum of view tokens + M * R_i) / P. Actor: every engine's teacher tokens after the slowest
    engine ends (spread over all GPUs). Rollout: `simulate_rollout_placement` per engine; the step
    waits for the slowest engine's generation + blocking. step = gen + teacher + rest_s."""
    generator = torch.Generator().manual_seed(seed)
    sums: dict = {}
    for _ in range(trials):
        normal = torch.randn(engines, rows_per_engine, generator=generator, dtype=torch.float64)
        lengths = (math.log(median) + sigma * normal).exp().round().clamp(16, cap).long().tolist()  # [E][B]
        gen = max(max(rows) for rows in lengths) * t_dec_s
        tails = [tail_statistics(rows, cap) for rows in lengths]
        row = {
            f"tail_{k}": statistics.mean(t[k] for t in tails)
            for k in ("p50_over_mean", "p90_over_mean", "max_over_mean", "idle_slot_fraction", "truncated_fraction")
        }
        row["gen_s"] = gen
        for m in (len(views), 1):
            view_tokens = sum(views[:m])
            actor = sum(view_tokens + m * r for rows in lengths for r in rows) / (prefill_tps * engines)
            ends, hidden, total = [], 0.0, 0.0
            for rows in lengths:
                c = [r * t_dec_s for r in rows]
                s = [(view_tokens + m * r) / prefill_tps for r in rows]
                sim = simulate_rollout_placement(c, s, max(c))
                ends.append(max(c) + sim["blocking_s"])
                hidden, total = hidden + sum(sim["hidden_s"]), total + sum(s)
            row[f"m{m}_actor_s"], row[f"m{m}_rollout_s"], row[f"m{m}_hidden_fraction"] = actor, max(ends) - gen, hidden / total
        for key, value in row.items():
            sums[key] = sums.get(key, 0.0) + value / trials
    M = len(views)
    for placement in ("actor", "rollout"):
        avsd = sums["gen_s"] + sums[f"m{M}_{placement}_s"] + rest_s
        opsd = sums["gen_s"] + sums[f"m1_{placement}_s"] + rest_s
        sums[f"step_{placement}_avsd_s"], sums[f"step_{placement}_opsd_s"] = avsd, opsd
        sums[f"ratio_{placement}"] = avsd / opsd
    return sums


def on_paper(out: Path) -> None:
    report = {"common": PAPER_COMMON, "scenarios": {}}
    lines = []
    for name, scenario in PAPER_SCENARIOS.items():
        r = cluster_estimate(**scenario, **PAPER_COMMON)
        report["scenarios"][name] = {"assumed": scenario, "estimate": r}
        lines.append(
            f"{name}: tail p50/p90/max over mean {r['tail_p50_over_mean']:.2f}/{r['tail_p90_over_mean']:.2f}/"
            f"{r['tail_max_over_mean']:.2f}, idle slots {r['tail_idle_slot_fraction']:.0%}, cut {r['tail_truncated_fraction']:.1%}; "
            f"gen {r['gen_s']:.1f} s; teacher M=3 actor {r['m3_actor_s']:.2f} s vs rollout blocking {r['m3_rollout_s']:.2f} s "
            f"({r['m3_hidden_fraction']:.0%} hidden), M=1 {r['m1_actor_s']:.2f} vs {r['m1_rollout_s']:.2f} s; "
            f"AVSD/OPSD actor {r['ratio_actor']:.3f}x, rollout {r['ratio_rollout']:.3f}x"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_overlap_paper.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_overlap_paper.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def summary(report: dict) -> str:
    c, tail, views = report["config"], report["tail"], report["views"]
    avsd, opsd = views[str(c["views"])], views["1"]
    r = report["step_ratio_avsd_over_opsd"]
    return (
        f"rollout overlap ({report['versions']['device_name']}, {c['model_kind']}, {c['prompts']} prompts, B={c['batch']}, M={c['views']}, "
        f"lengths {c['lengths']}: p50/p90/max over mean {tail['p50_over_mean']:.2f}/{tail['p90_over_mean']:.2f}/"
        f"{tail['max_over_mean']:.2f}, idle slots {tail['idle_slot_fraction']:.0%}): gen {report['generation']['gen_s']:.2f} s, "
        f"update {report['update']['total_s']:.2f} s; blocking teacher AVSD actor {avsd['actor']['blocking_s']:.3f} s vs "
        f"rollout {avsd['rollout']['blocking_s']:.3f} s ({avsd['rollout']['hidden_fraction']:.0%} hidden), OPSD "
        f"{opsd['actor']['blocking_s']:.3f} vs {opsd['rollout']['blocking_s']:.3f} s; step AVSD/OPSD actor {r['actor']:.3f}x, "
        f"rollout {r['rollout']:.3f}x (serial bound {r['rollout_serial']:.3f}x)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a causal-LM folder (default: a random --shape model)")
    parser.add_argument("--shape", default="tiny", choices=["tiny", "qwen3-1.7b"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=16, help="rollouts B generated together")
    parser.add_argument("--views", type=int, default=3, help="AVSD's M (OPSD: 1)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=48)
    parser.add_argument("--view-tokens", type=int, default=96, help="the full view's tokens (partial: half, answer: 8)")
    parser.add_argument("--lengths", choices=["lognormal", "natural"], default=None)
    parser.add_argument("--length-median-frac", type=float, default=0.3)
    parser.add_argument("--length-sigma", type=float, default=0.7)
    parser.add_argument("--token-budget", type=int, default=8192, help="packed teacher micro-batch tokens")
    parser.add_argument("--update-token-budget", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3, help="timings of the packed pass (median)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 on cpu, steady on a shared host; torch's on cuda)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(BENCH / "results" / "placement"))
    parser.add_argument("--on-paper", action="store_true", help="only the cluster estimate of bench/README.md (no model)")
    args = parser.parse_args(argv)
    if args.on_paper:
        on_paper(Path(args.out))
        return 0
    for name in (
        "batch",
        "views",
        "max_new_tokens",
        "prompt_tokens",
        "view_tokens",
        "token_budget",
        "update_token_budget",
        "repeats",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (0 < args.length_median_frac <= 1 and args.length_sigma >= 0):
        parser.error("--length-median-frac must be in (0, 1] and --length-sigma >= 0")
    if args.model and not (Path(args.model) / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json there (a folder saved with save_pretrained is needed)")
    if args.threads is None and torch.device(args.device).type == "cpu":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"gpu_overlap_{torch.device(args.device).type}"
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    line = summary(report)
    (out / f"{name}.md").write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
