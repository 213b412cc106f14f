"""Benchmark: M-view teacher prefill, packed vs padded, on one AVSD-shaped workload.

The workload is what the teacher-ref worker sees for one step: B rollouts x M views, each a
sequence `prompt + view + response` with realistic ragged lengths (math views: full worked
solution, half of it, only the answer). Every method computes the log-prob of every response
token under every view; they differ only in how the sequences are batched:

  (a) dense    equal-length sequences with the same total tokens, no padding: the ceiling
  (b) naive    one right-padded micro-batch per view (all B sequences of view m together)
  (c) sorted   all sequences sorted by length, right-padded micro-batches within the budget
  (d) packed   the project's `packed_response_logprobs` (one packed row per micro-batch), as the
               teacher worker runs it: a context prefix several sequences share is fed once
  (d') packed_noshare  the same, every sequence fed whole: the kernel against the ceiling

All four use the same chunked log-prob head, feed `context + response[:-1]` and run in
inference mode. Useful tokens = sum of (Lc + R - 1), the tokens each sequence has alone; tokens/s
counts only those (padding is overhead; shared prefixes let (d) feed fewer). Peak memory: CUDA max_memory_allocated above the
weights on GPU, peak RSS above the start on CPU.

  python bench/teacher_prefill.py --device cpu     # small, a few minutes on 2 cores
  python bench/teacher_prefill.py --device cuda    # Qwen3-1.7B shape, bf16, M=3, 64 rollouts

Needs only torch and transformers (random weights from a config, no download).
Writes bench/results/teacher_prefill_<device>.json and .md (one-line summary).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
import transformers

REPO = Path(__file__).resolve().parents[1]

try:  # installed project
    from verl_avsd.workers import prefill_attention, teacher_prefill
except ImportError:  # a bare checkout (the GPU machine has only torch + transformers): the same files,
    # with workers/ loaded as a package of its own so that the prefill modules' relative imports resolve
    _spec = importlib.util.spec_from_file_location(
        "workers", REPO / "workers" / "__init__.py", submodule_search_locations=[str(REPO / "workers")]
    )
    sys.modules["workers"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["workers"])
    prefill_attention = importlib.import_module("workers.prefill_attention")
    teacher_prefill = importlib.import_module("workers.teacher_prefill")
chunked_token_logprobs = teacher_prefill.chunked_token_logprobs
packed_response_logprobs = teacher_prefill.packed_response_logprobs


# --------------------------------------------------------------------------------------------
# Model and workload
# --------------------------------------------------------------------------------------------


def qwen3_config(size: str) -> transformers.Qwen3Config:
    if size == "qwen3-1.7b":  # the shape of Qwen/Qwen3-1.7B
        shape = {
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 151936,
        }
    elif size == "tiny":  # small enough for a 2-core CPU, same structure
        shape = {
            "hidden_size": 128,
            "intermediate_size": 384,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "vocab_size": 4096,
        }
    else:
        raise ValueError(f"unknown --model {size!r}")
    return transformers.Qwen3Config(
        max_position_embeddings=40960, rope_theta=1_000_000.0, tie_word_embeddings=True, rms_norm_eps=1e-6, **shape
    )


def build_model(size: str, device: torch.device, dtype: torch.dtype) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(qwen3_config(size), dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def make_workload(rollouts: int, views: int, target_tokens: int, vocab: int, seed: int, rollouts_per_prompt: int = 1):
    """B x M (context, response) pairs with ragged, AVSD-like lengths, scaled to target_tokens.

    Per prompt: 60-300 tokens + 24 template tokens; views full (200-1200 tokens), partial (half
    of full), answer (4-32); any view beyond the third 50-500. A view's context is the prompt's
    tokens followed by the view's, as the teacher worker builds them, so the M contexts of a
    rollout share the prompt and the `rollouts_per_prompt` rollouts of a prompt share all their
    contexts. Per rollout: a response drawn log-normal (median 800, clipped to 64-4096) shared by
    all its views. Sequences are ordered rollout-major, view-minor.
    """
    rng = random.Random(seed)
    prompts = []  # (prompt length, view lengths, response length per rollout)
    for start in range(0, rollouts, rollouts_per_prompt):
        n = min(rollouts_per_prompt, rollouts - start)
        prompt = rng.randint(60, 300) + 24
        full = rng.randint(200, 1200)
        view_lengths = [full, full // 2, rng.randint(4, 32)] + [rng.randint(50, 500) for _ in range(max(0, views - 3))]
        responses = [int(min(4096, max(64, rng.lognormvariate(math.log(800), 0.6)))) for _ in range(n)]
        prompts.append((prompt, view_lengths[:views], responses))
    raw_total = sum((prompt + view + response - 1) for prompt, vs, rs in prompts for view in vs for response in rs)
    scale = target_tokens / raw_total
    generator = torch.Generator().manual_seed(seed)

    def tokens(length: int) -> torch.Tensor:
        return torch.randint(0, vocab, (max(1, round(length * scale)),), generator=generator)

    sequences = []
    for prompt_length, view_lengths, response_lengths in prompts:
        prompt = tokens(prompt_length)
        contexts = [torch.cat([prompt, tokens(view)]) for view in view_lengths]
        for response_length in response_lengths:
            response = tokens(response_length)
            sequences += [(context, response) for context in contexts]
    return sequences


def fed_length(sequence) -> int:
    context, response = sequence
    return len(context) + len(response) - 1


# --------------------------------------------------------------------------------------------
# Baselines: right-padded micro-batches (the usual HF way) and the dense ceiling
# --------------------------------------------------------------------------------------------


def padded_logprobs(model, batch, chunk_tokens, device) -> list[torch.Tensor]:
    """One right-padded micro-batch [rows, Lmax] with a 2-D attention mask."""
    lengths = [fed_length(s) for s in batch]
    width = max(lengths)
    input_ids = torch.zeros(len(batch), width, dtype=torch.long)
    attention_mask = torch.zeros(len(batch), width, dtype=torch.long)
    rows, cols, targets = [], [], []
    for row, (context, response) in enumerate(batch):
        fed = torch.cat([context, response[:-1]])
        input_ids[row, : len(fed)] = fed
        attention_mask[row, : len(fed)] = 1
        rows.append(torch.full((len(response),), row))
        cols.append(len(context) - 1 + torch.arange(len(response)))
        targets.append(response)
    hidden = model.get_decoder()(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
    ).last_hidden_state  # [rows, Lmax, H]
    selected = hidden[torch.cat(rows).to(device), torch.cat(cols).to(device)]  # [N, H]
    del hidden
    logprobs = chunked_token_logprobs(model, selected, torch.cat(targets).to(device), chunk_tokens).cpu()
    return list(logprobs.split([len(r) for _, r in batch]))


def run_naive(model, sequences, views, chunk_tokens, device, **_):
    """(b) one padded micro-batch per view. Sequences are ordered rollout-major, view-minor."""
    out = [None] * len(sequences)
    for view in range(views):
        indices = list(range(view, len(sequences), views))
        for i, logprobs in zip(indices, padded_logprobs(model, [sequences[i] for i in indices], chunk_tokens, device)):
            out[i] = logprobs
    return out, sum(views_padded(sequences, views))


def views_padded(sequences, views):
    for view in range(views):
        lengths = [fed_length(s) for s in sequences[view::views]]
        yield len(lengths) * max(lengths)


def run_sorted(model, sequences, token_budget, chunk_tokens, device, **_):
    """(c) longest first, consecutive sequences while rows * Lmax stays within the budget."""
    order = sorted(range(len(sequences)), key=lambda i: -fed_length(sequences[i]))
    batches, current = [], []
    for i in order:
        width = fed_length(sequences[current[0]]) if current else fed_length(sequences[i])
        if current and (len(current) + 1) * width > token_budget:
            batches.append(current)
            current = []
        current.append(i)
    batches.append(current)
    out, padded = [None] * len(sequences), 0
    for batch in batches:
        padded += len(batch) * fed_length(sequences[batch[0]])
        for i, logprobs in zip(batch, padded_logprobs(model, [sequences[i] for i in batch], chunk_tokens, device)):
            out[i] = logprobs
    return out, padded


def run_dense(model, sequences, token_budget, chunk_tokens, device, **_):
    """(a) the same tokens as equal-length rows, no padding, no mask (is_causal sdpa): the ceiling.

    Rows go in micro-batches within the same token budget; each row scores as many positions
    as the workload's average response, so the log-prob head does the same work too.
    """
    total = sum(fed_length(s) for s in sequences)
    scored = sum(len(r) for _, r in sequences)
    rows, width = len(sequences), round(total / len(sequences))
    per_row = round(scored / rows)
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    rows_per_batch = max(1, token_budget // width)
    backbone = model.get_decoder()
    for start in range(0, rows, rows_per_batch):
        n = min(rows_per_batch, rows - start)
        input_ids = torch.randint(0, vocab, (n, width), generator=generator).to(device)
        hidden = backbone(input_ids=input_ids, use_cache=False).last_hidden_state  # [n, width, H]
        selected = hidden[:, width - per_row - 1 : width - 1].reshape(-1, hidden.shape[-1])  # [n * per_row, H]
        targets = input_ids[:, width - per_row :].reshape(-1)
        chunked_token_logprobs(model, selected, targets, chunk_tokens).cpu()
    return None, rows * width


def run_packed(model, sequences, token_budget, chunk_tokens, attn="auto", share_prefix_min_tokens=16, **_):
    """(d) the project's packed path, with the teacher worker's default prefix sharing."""
    stats = {}
    out = packed_response_logprobs(
        model,
        sequences,
        token_budget=token_budget,
        logprob_chunk_tokens=chunk_tokens,
        attn=attn,
        share_prefix_min_tokens=share_prefix_min_tokens,
        stats=stats,
    )
    return out, stats["fed_tokens"]


def run_packed_noshare(model, sequences, token_budget, chunk_tokens, attn="auto", **_):
    """(d') the packed path feeding every sequence whole: the kernel against the dense ceiling."""
    return run_packed(model, sequences, token_budget, chunk_tokens, attn, share_prefix_min_tokens=0)


# --------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------


class PeakRSS:
    """Samples this process's resident set size in a thread; reports the peak above the start."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.start = self.peak = self.rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def above_start(self) -> int:
        return self.peak - self.start


METHODS = {
    "dense": run_dense,
    "naive": run_naive,
    "sorted": run_sorted,
    "packed_noshare": run_packed_noshare,
    "packed": run_packed,
}


def measure(method: str, repeats: int, **kwargs) -> dict:
    """Warm up once, then `repeats` timed runs: median wall and process-CPU seconds, peak memory.

    GPU: peak = max_memory_allocated above the weights, over the timed runs. CPU: peak RSS above
    the start, warm-up included; call this in a fresh process (`measure_in_fresh_process`),
    since memory a previous method freed stays in the process and would hide the growth.
    """
    fn, device = METHODS[method], kwargs["device"]
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.inference_mode(), contextlib.ExitStack() as stack:
        rss = None if cuda else stack.enter_context(PeakRSS())
        out, processed = fn(**kwargs)  # warm-up (kernels, allocator, compile caches)
        sync()
        if cuda:
            torch.cuda.empty_cache()
            weights = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        wall, cpu = [], []
        for _ in range(repeats):
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn(**kwargs)
            sync()
            wall.append(time.perf_counter() - start_wall)
            cpu.append(time.process_time() - start_cpu)
    peak = torch.cuda.max_memory_allocated() - weights if cuda else (rss.above_start)
    return {
        "out": out,
        "processed": processed,
        "seconds": statistics.median(wall),
        "cpu_seconds": statistics.median(cpu),
        "peak_memory_bytes": peak,
    }


def _measure_child(setup: dict, method: str, repeats: int, overrides: dict, queue) -> None:
    try:
        torch.set_num_threads(setup["threads"])
        model, sequences = build_setup(setup)
        kwargs = dict(model=model, sequences=sequences, **{**setup["common"], **overrides})
        result = measure(method, repeats, device=torch.device(setup["device"]), **kwargs)
        # numpy, not tensors: a tensor would travel as a shared-memory handle that dies with us
        result["out"] = None if result["out"] is None else [t.numpy() for t in result["out"]]
        queue.put(result)
    except Exception as error:  # noqa: BLE001 - any failure goes back to the parent, which re-raises it
        queue.put(error)


def measure_in_fresh_process(setup: dict, method: str, repeats: int, overrides: dict) -> dict:
    """`measure` in a spawned interpreter that rebuilds the same model and workload (CPU RSS)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_measure_child, args=(setup, method, repeats, overrides, queue))
    child.start()
    result = queue.get()
    child.join()
    if isinstance(result, Exception):
        raise result
    result["out"] = None if result["out"] is None else [torch.from_numpy(a) for a in result["out"]]
    return result


# Where the packed path's time goes: aten ops by their own (self) device time, in categories.
PROFILE_CATEGORIES = (  # first match wins; names are lower-cased aten/custom op names
    ("attention", ("attn", "attention", "flash", "fmha")),
    ("matmul (projections, MLP, output head)", ("mm", "matmul", "linear", "gemm")),
    ("gathers and copies (packing, kv/hidden selection)", ("index", "copy", "cat", "to_copy", "contiguous", "memcpy")),
)


def profile_packed(model, sequences, token_budget, chunk_tokens, attn, device) -> dict:
    """One packed call (after a warm-up) under torch.profiler: self time per op category, so a
    result short of the ceiling says where the rest goes."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    kwargs = dict(token_budget=token_budget, logprob_chunk_tokens=chunk_tokens, attn=attn)
    with torch.inference_mode():
        packed_response_logprobs(model, sequences, **kwargs)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        start = time.perf_counter()
        with profile(activities=activities) as prof:
            packed_response_logprobs(model, sequences, **kwargs)
            if cuda:
                torch.cuda.synchronize()
        wall = time.perf_counter() - start
    totals: dict[str, float] = {}
    regions: dict[str, float] = {}  # the prefill's named ranges, ms (on CUDA the kernels they launched)
    for event in prof.key_averages():
        if event.key.startswith("avsd_teacher/"):
            us = getattr(event, "device_time_total", 0) if cuda else event.cpu_time_total
            regions[event.key.removeprefix("avsd_teacher/")] = us / 1e3
            continue
        us = getattr(event, "self_device_time_total", 0) if cuda else event.self_cpu_time_total
        if not us:
            continue
        name = event.key.lower()
        category = next((c for c, keys in PROFILE_CATEGORIES if any(k in name for k in keys)), "other (norms, rope, activations)")
        totals[category] = totals.get(category, 0.0) + us / 1e3
    busy = sum(totals.values())
    return {
        "clock": "device self time" if cuda else "CPU self time",
        "wall_ms": wall * 1e3,  # with the profiler's own overhead
        "busy_ms": busy,  # on CUDA: wall - busy is the device idling (launches, host syncs)
        "regions_ms": regions,  # layout (host), backbone (decoder layers), logprob_head (lm_head + log-softmax)
        "ms": dict(sorted(totals.items(), key=lambda kv: -kv[1])),
        "share": {c: ms / busy for c, ms in sorted(totals.items(), key=lambda kv: -kv[1])} if busy else {},
    }


def build_setup(setup: dict):
    """Deterministic model + workload from plain settings (so a child process rebuilds them)."""
    device = torch.device(setup["device"])
    model = build_model(setup["model"], device, getattr(torch, setup["dtype"]))
    sequences = make_workload(
        setup["rollouts"],
        setup["views"],
        setup["target_tokens"],
        model.config.vocab_size,
        setup["seed"],
        setup["rollouts_per_prompt"],
    )
    return model, sequences


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b) if len(x))


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--model", choices=["qwen3-1.7b", "tiny"], help="default: qwen3-1.7b on cuda, tiny on cpu")
    parser.add_argument("--rollouts", type=int, help="default: 64 on cuda, 12 on cpu")
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument(
        "--rollouts-per-prompt", type=int, default=1, help="rollouts sharing a prompt (and so whole contexts); default 1"
    )
    parser.add_argument("--target-tokens", type=int, help="useful tokens; default 287000 on cuda, 12000 on cpu")
    parser.add_argument("--token-budget", type=int, help="tokens per micro-batch; default 32768 on cuda, 2048 on cpu")
    parser.add_argument("--logprob-chunk-tokens", type=int, default=4096)
    parser.add_argument("--attn", default="auto", help="backend of the packed method (d); default auto")
    parser.add_argument("--repeats", type=int, help="timed runs after one warm-up; default 3 on cuda, 2 on cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads on --device cpu (default 1: stabler on a shared box)")
    parser.add_argument(
        "--sweep",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="then sweep chunk size, token budget and attention backends of the packed path",
    )
    parser.add_argument(
        "--sweep-attn",
        help="comma-separated backends to sweep; default "
        "varlen,sdpa_varlen,sdpa_block,flash_attn,flex on cuda (flex last: it compiles), "
        "sdpa_varlen,sdpa_block on cpu",
    )
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="profile one packed call: self time by op category (attention, matmul, head, gathers, other)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    setup = {
        "device": args.device,
        "model": args.model or ("qwen3-1.7b" if cuda else "tiny"),
        "dtype": "bfloat16" if cuda else "float32",
        "rollouts": args.rollouts or (64 if cuda else 12),
        "views": args.views,
        "rollouts_per_prompt": args.rollouts_per_prompt,
        "target_tokens": args.target_tokens or (287_000 if cuda else 12_000),
        "seed": args.seed,
        "threads": args.threads,
    }
    budget = args.token_budget or (32768 if cuda else 2048)
    chunk = args.logprob_chunk_tokens
    repeats = args.repeats or (3 if cuda else 2)
    sweep_attn = (
        args.sweep_attn or ("varlen,sdpa_varlen,sdpa_block,flash_attn,flex" if cuda else "sdpa_varlen,sdpa_block")
    ).split(",")
    if not cuda:
        torch.set_num_threads(args.threads)

    model, sequences = build_setup(setup)
    attn = prefill_attention.resolve_attn_backend(model, args.attn)
    setup["common"] = {"views": args.views, "token_budget": budget, "chunk_tokens": chunk, "attn": attn}
    useful = sum(fed_length(s) for s in sequences)
    fed = [fed_length(s) for s in sequences]
    print(
        f"{setup['model']} {setup['dtype']} on {args.device}: {len(sequences)} sequences ({setup['rollouts']} rollouts "
        f"x {args.views} views), {useful} useful tokens, lengths {min(fed)}..{max(fed)}, budget {budget}, "
        f"chunk {chunk}, packed attn {attn}",
        flush=True,
    )

    def run_measurement(method: str, repeats: int, **overrides) -> dict:
        if cuda:  # in this process: CUDA memory stats are per measurement already
            return measure(
                method,
                repeats,
                model=model,
                sequences=sequences,
                device=torch.device("cuda"),
                **{**setup["common"], **overrides},
            )
        return measure_in_fresh_process(setup, method, repeats, overrides)

    report = {
        "summary": None,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if cuda else None,
            "cpu_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        },
        "config": {
            **{k: v for k, v in setup.items() if k != "common"},
            "token_budget": budget,
            "logprob_chunk_tokens": chunk,
            "packed_attn": attn,
            "repeats": repeats,
        },
        "workload": {
            "sequences": len(sequences),
            "useful_tokens": useful,
            "scored_tokens": sum(len(r) for _, r in sequences),
            "min_length": min(fed),
            "max_length": max(fed),
            "mean_length": useful / len(sequences),
        },
        "methods": {},
        "max_abs_diff": {},
        "sweeps": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"teacher_prefill_{args.device}.json"

    def save():  # after every measurement, so a run cut short still leaves its numbers
        json_path.write_text(json.dumps(report, indent=2) + "\n")

    methods, outputs = report["methods"], {}
    for name in METHODS:
        result = run_measurement(name, repeats)
        outputs[name] = result.pop("out")
        methods[name] = {
            **result,
            "useful_tokens_per_s": useful / result["seconds"],
            "useful_tokens_per_cpu_s": useful / result["cpu_seconds"],
            # > 1: padding; < 1: shared prefixes fed once
            "processed_per_useful_token": result["processed"] / useful,
        }
        print(
            f"  {name:14s} {result['seconds']:8.3f} s (cpu {result['cpu_seconds']:7.3f} s) "
            f"{useful / result['seconds']:10.0f} useful tok/s  processed {result['processed']}  "
            f"peak {result['peak_memory_bytes'] / 2**20:8.1f} MiB",
            flush=True,
        )
        save()
    for r in methods.values():
        for rate in ("useful_tokens_per_s", "useful_tokens_per_cpu_s"):
            suffix = "" if rate == "useful_tokens_per_s" else "_cpu_time"
            r["ratio_vs_dense" + suffix] = r[rate] / methods["dense"][rate]
            r["ratio_vs_naive" + suffix] = r[rate] / methods["naive"][rate]
    diffs = report["max_abs_diff"]
    diffs.update(
        packed_vs_naive=max_abs_diff(outputs["packed"], outputs["naive"]),
        packed_vs_sorted=max_abs_diff(outputs["packed"], outputs["sorted"]),
        packed_vs_packed_noshare=max_abs_diff(outputs["packed"], outputs["packed_noshare"]),
        sorted_vs_naive=max_abs_diff(outputs["sorted"], outputs["naive"]),
    )
    print(f"  max |log p| diff: {diffs}", flush=True)
    # On a shared CPU the wall clock mostly measures the neighbours: compare process CPU time there.
    rate, ratio, clock = (
        ("useful_tokens_per_s", "ratio_vs_{}", "wall")
        if cuda
        else ("useful_tokens_per_cpu_s", "ratio_vs_{}_cpu_time", "process CPU time")
    )
    p, q, d, n = methods["packed"], methods["packed_noshare"], methods["dense"], methods["naive"]
    report["summary"] = (
        f"teacher prefill ({args.device}, {setup['model']}, {setup['dtype']}, {setup['rollouts']}x{args.views} views"
        f"{'' if args.rollouts_per_prompt == 1 else f', {args.rollouts_per_prompt} rollouts a prompt'}, "
        f"{useful} useful tokens, budget {budget}, {clock}): dense {d[rate]:.0f} tok/s; "
        f"naive {n[ratio.format('dense')]:.2f}x, sorted {methods['sorted'][ratio.format('dense')]:.2f}x, "
        f"packed[{attn}] every sequence whole {q[ratio.format('dense')]:.2f}x of dense "
        f"({q[ratio.format('naive')]:.2f}x naive), "
        f"with shared prefixes fed once ({p['processed_per_useful_token']:.0%} of the tokens) "
        f"{p[ratio.format('dense')]:.2f}x of dense ({p[ratio.format('naive')]:.2f}x naive); "
        f"peak MiB "
        + "/".join(METHODS)
        + " "
        + "/".join(f"{methods[m]['peak_memory_bytes'] / 2**20:.0f}" for m in METHODS)
        + f"; max |diff| packed vs padded {diffs['packed_vs_naive']:.1e}"
    )
    save()
    (args.out / f"teacher_prefill_{args.device}.md").write_text(report["summary"] + "\n")
    print(report["summary"], flush=True)

    if args.profile:
        try:
            report["profile"] = profile_packed(model, sequences, budget, chunk, attn, torch.device(args.device))
            shares = ", ".join(f"{c} {v:.0%}" for c, v in report["profile"]["share"].items())
            regions = ", ".join(f"{r} {ms:.0f} ms" for r, ms in report["profile"]["regions_ms"].items())
            print(f"  profile of packed ({report['profile']['clock']}): {shares}; {regions}", flush=True)
        except Exception as error:  # noqa: BLE001 - a profiler failure must not cost the sweeps
            report["profile"] = {"error": f"{type(error).__name__}: {error}"[:300]}
            print(f"  profile: {report['profile']['error']}", flush=True)
        save()

    if args.sweep:
        sweep_repeats = max(1, repeats - 1)
        report["sweep_baseline"] = {  # each sweep compares against methods.packed, measured at these
            "method": "packed", "logprob_chunk_tokens": chunk, "token_budget": budget,
            "share_prefix_min_tokens": 16, "attn": attn,
        }  # fmt: skip
        # The main table already has the packed path at its chunk, budget and backend with
        # share_prefix_min_tokens 16 (packed) and 0 (packed_noshare): the sweeps add only the other
        # values, to fit the GPU script's time.
        grid = [("logprob_chunk_tokens", c, {"chunk_tokens": c}) for c in (1024, 4096, 16384) if c != chunk]
        grid += [("token_budget", b, {"token_budget": b}) for b in (budget // 4, budget // 2, budget * 2)]
        grid += [("share_prefix_min_tokens", t, {"share_prefix_min_tokens": t}) for t in (4, 128)]
        grid += [("attn", a, {"attn": a}) for a in sweep_attn if a != attn]  # last: flex compiles for a minute or more
        for knob, value, override in grid:
            entry = {"value": value}
            try:
                result = run_measurement("packed", sweep_repeats, **override)
                entry.update(
                    {k: v for k, v in result.items() if k != "out"},
                    useful_tokens_per_s=useful / result["seconds"],
                    useful_tokens_per_cpu_s=useful / result["cpu_seconds"],
                )
                print(
                    f"  sweep {knob}={value}: {entry['useful_tokens_per_s']:10.0f} tok/s "
                    f"({entry['useful_tokens_per_cpu_s']:.0f} per CPU s)  "
                    f"peak {entry['peak_memory_bytes'] / 2**20:8.1f} MiB",
                    flush=True,
                )
            except Exception as error:  # noqa: BLE001 - e.g. flash-attn missing, OOM: record it, keep sweeping
                entry["error"] = f"{type(error).__name__}: {error}"[:300]
                print(f"  sweep {knob}={value}: {entry['error']}", flush=True)
                if cuda:
                    torch.cuda.empty_cache()
            report["sweeps"].setdefault(knob, []).append(entry)
            save()
    return report


if __name__ == "__main__":
    main()
