"""`verl-avsd eval`: Avg@k and pass@k (math, toy) and pass@1 (code) of a model or verl checkpoint.

    verl-avsd eval --model MODEL --data eval_aime2024.parquet [--data ...] --output DIR

MODEL is a Hugging Face model folder or a verl FSDP checkpoint (`.../global_step_N/actor`), which
verl's own model merger turns into a HF folder once, cached beside it (`global_step_N/actor_hf`).
Each `--data` file (rows as `verl-avsd prep` writes them) is one benchmark, named by its file stem.

For every row the student's prompt is exactly the one verl trains on: the row's `prompt` messages
through verl's `apply_chat_template` with `add_generation_prompt=True` and the same template
kwargs (`--chat-template-kwargs` is `data.apply_chat_template_kwargs` of the training run, e.g.
'{"enable_thinking": false}'). Evaluating with another prompt or thinking mode than training
(the reference code appends its own instruction and switches thinking per task) measures
something else, so the kwargs and one rendered prompt per benchmark are recorded in the output.

k samples are drawn per problem (vLLM on a GPU, transformers `generate` otherwise) and scored by
data_source (`SCORERS`): math-verify for `math/*`, the sandboxed hidden tests for `code/*`, the toy
reward for `avsd_toy/arith`. Per benchmark:

    Avg@k   = mean over problems of c_i / k            (c_i = correct samples of problem i)
    pass@j  = mean over problems of 1 - C(n-c_i, j) / C(n, j)   (unbiased, n = samples drawn)

so pass@1 equals Avg@k; a code sample is correct when it passes every hidden test, and code
benchmarks also report the mean share of tests passed. Writes DIR/eval.json (settings, metrics,
per-problem correct counts), DIR/eval.md (a table per benchmark) and DIR/generations.jsonl
(every response with its score), and prints a short table.

Python use (the toy-scale study): `evaluate_hf_model(model_dir, data_file, max_new_tokens=48)`
returns one benchmark's metrics dict.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from verl_avsd import rewards
from verl_avsd.data_prep.errors import BadInputError
from verl_avsd.data_prep.records import InputFile
from verl_avsd.sandbox.judge import parse_tests
from verl_avsd.toy import task as toy_task

# Defaults of the AVSD authors' evaluation (github.com/duykhuongnguyen/AVSD): the paper reports
# Avg@8 on AIME24/25 and HMMT25; src/avsd/code/evaluation/eval_code.py samples 8 programs per
# problem at temperature 0.7, top-p 0.95, 4096 new tokens, and src/avsd/math/evaluate.py uses the
# same temperature, top-p and token limit (top-k off), matching their training rollouts
# (scripts/math/train_avsd_qwen3_8b.sh: --temperature 0.7 --top_p 0.95 --max_completion_length 4096).
# OPSD (github.com/siyan-zhao/OPSD, eval/run_eval.sh) evaluates 16 samples at temperature 1.0.
DEFAULT_K = 8
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.95
DEFAULT_MAX_NEW_TOKENS = 4096
DEFAULT_SEED = 0
HF_BATCH_SIZE = 16  # prompts per transformers `generate` call (each with its k samples)
SCORE_THREADS = 4  # responses scored at once (math-verify runs in its own process pool)
MERGED_FOLDER = "actor_hf"  # global_step_N/actor_hf: the merged HF model of global_step_N/actor
MERGE_RECORD = "merged_from.json"


# -- scoring: one small table, routed by data_source ---------------------------------------------


def _toy_score(data_source, solution_str, ground_truth, extra_info=None) -> dict:
    score = toy_task.compute_score(data_source, solution_str, ground_truth, extra_info)
    return {"score": score, "acc": score, "pass_rate": score}


# (data_source, or a prefix ending in "/"; kind of benchmark; verl-style compute_score -> dict with acc, pass_rate)
SCORERS: tuple[tuple[str, str, Callable[..., dict]], ...] = (
    ("math/", "math", rewards.compute_score),
    ("code/", "code", rewards.compute_score),
    (toy_task.DATA_SOURCE, "toy", _toy_score),
)
KNOWN_DATA_SOURCES = ", ".join(name + "<name>" if name.endswith("/") else name for name, _, _ in SCORERS)


def scorer_of(data_source: str) -> tuple[str, Callable[..., dict]] | None:
    """(kind, compute_score) for this data_source, or None when no scorer knows it."""
    for name, kind, score in SCORERS:
        if data_source == name or (name.endswith("/") and data_source.startswith(name)):
            return kind, score
    return None


# -- benchmark rows -------------------------------------------------------------------------------


@dataclass
class EvalRow:
    """One problem of a benchmark file, checked: what the student reads and what scores it."""

    file: str
    row: int  # 0-based row number in the file
    messages: list[dict]  # the row's `prompt`: the student's chat messages
    data_source: str
    kind: str  # "math", "code" or "toy" (SCORERS)
    ground_truth: str
    extra_info: dict


EVAL_COLUMNS = ("prompt", "data_source", "reward_model", "extra_info")  # all a benchmark row needs


def read_benchmark(path: str, limit: int | None = None) -> list[EvalRow]:
    """The first `limit` rows of a verl dataset file (parquet, or JSON/JSONL with the same fields);
    a bad row is a BadInputError naming the file, row and field."""
    rows = []
    for record in InputFile(path, columns=list(EVAL_COLUMNS)).records():
        if limit is not None and len(rows) >= limit:
            break
        if record.unreadable is not None:
            raise record.unreadable
        rows.append(_eval_row(path, record.row, record.data))
    if not rows:
        raise BadInputError(path, "has no rows")
    return rows


def _eval_row(path: str, i: int, record: dict) -> EvalRow:
    def bad(field_name: str, problem: str) -> BadInputError:
        return BadInputError(path, problem, row=i, field=field_name)

    messages = record.get("prompt")
    if messages is None:
        present = ", ".join(sorted(key for key, value in record.items() if value is not None))
        raise bad("prompt", f"missing (the row has: {present})")
    if not isinstance(messages, list) or not messages:
        raise bad("prompt", f"expected a non-empty list of chat messages, got {type(messages).__name__}")
    for m, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad(f"prompt[{m}]", "expected a chat message {role, content}")
        if not isinstance(message.get("content"), str):
            raise bad(f"prompt[{m}].content", f"expected text, got {type(message.get('content')).__name__}")
    reward_model = record.get("reward_model")
    ground_truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    if ground_truth is None:
        raise bad("reward_model.ground_truth", "missing: no answer to score against")
    data_source = record.get("data_source")
    if not isinstance(data_source, str) or not data_source:
        raise bad("data_source", f"missing; known data sources: {KNOWN_DATA_SOURCES}")
    found = scorer_of(data_source)
    if found is None:
        raise bad("data_source", f"unknown data_source {data_source!r}; known data sources: {KNOWN_DATA_SOURCES}")
    kind = found[0]
    if kind == "code":  # malformed hidden tests fail here, before hours of generation
        parse_tests(ground_truth, where=f"{path}: row {i}: field 'reward_model.ground_truth'")
    extra_info = record.get("extra_info")
    extra_info = extra_info if isinstance(extra_info, dict) else {}
    return EvalRow(path, i, messages, data_source, kind, str(ground_truth), extra_info)


def benchmark_name(path: str) -> str:
    return Path(path).name.split(".")[0]


# -- prompts: exactly verl's ----------------------------------------------------------------------


def render_prompt(tokenizer, messages: list[dict], chat_template_kwargs: dict) -> str:
    """The student's prompt text as verl's rollout builds it (verl.utils.tokenizer.chat_template, the
    function its agent loop tokenizes with, `add_generation_prompt=True` and `data.apply_chat_template_kwargs`).

    Generators tokenize it with `add_special_tokens=False`, which gives verl's token ids.
    """
    from verl.utils.tokenizer.chat_template import apply_chat_template

    return apply_chat_template(tokenizer, messages, tokenize=False, add_generation_prompt=True, **chat_template_kwargs)


# -- generation -----------------------------------------------------------------------------------


@dataclass
class Generation:
    """One sampled response."""

    text: str  # decoded without special tokens (what verl's reward sees)
    num_tokens: int  # response tokens, the EOS included (verl's response length)
    truncated: bool  # stopped by the token limit, not by EOS


# generate_fn(prompts, k) -> for each prompt, its k responses
GenerateFn = Callable[[list[str], int], list[list[Generation]]]


def hf_generator(
    model_dir: str,
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    batch_size: int = HF_BATCH_SIZE,
    progress: bool = True,
) -> GenerateFn:
    """transformers `generate`: batches of left-padded prompts, k samples each (greedy once when
    temperature == 0), every batch seeded with `seed` + its first prompt's position."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # CPU: float32 is the fast and exact one
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"  # every prompt ends at the same column, so generation starts together
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    greedy = temperature <= 0
    max_positions = getattr(model.config, "max_position_embeddings", None)

    @torch.no_grad()
    def generate(prompts: list[str], k: int) -> list[list[Generation]]:
        out: list[list[Generation]] = []
        bar = tqdm(total=len(prompts), desc="generating (hf)", unit="prompt", disable=not progress)
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(
                prompts[start : start + batch_size],
                add_special_tokens=False,  # the chat template already holds every special token verl's ids have
                padding=True,
                return_tensors="pt",
                return_token_type_ids=False,
            )
            width = batch["input_ids"].shape[1]  # P
            room = max_new_tokens if max_positions is None else max(1, min(max_new_tokens, max_positions - width))
            config = GenerationConfig(
                max_new_tokens=room,
                do_sample=not greedy,
                temperature=None if greedy else temperature,
                top_p=None if greedy else top_p,
                top_k=0,  # off, as vLLM's default (transformers would use 50)
                num_return_sequences=1 if greedy else k,
                eos_token_id=sorted(eos_ids),
                pad_token_id=pad_id,
            )
            torch.manual_seed(seed + start)
            sequences = model.generate(**batch.to(device), generation_config=config)  # [B * (k or 1), P + T]
            responses = []
            for tokens in sequences[:, width:].tolist():  # [T] each, padded after the EOS
                length = next((t + 1 for t, token in enumerate(tokens) if token in eos_ids), None)
                kept = tokens[: length or len(tokens)]
                text = tokenizer.decode(kept, skip_special_tokens=True)
                responses.append(Generation(text, num_tokens=len(kept), truncated=length is None))
            per_prompt = 1 if greedy else k
            for p in range(len(responses) // per_prompt):
                samples = responses[p * per_prompt : (p + 1) * per_prompt]
                out.append(samples * k if greedy else samples)  # greedy: the k samples are one response
            bar.update(len(responses) // per_prompt)
        bar.close()
        return out

    return generate


def vllm_generator(model_dir: str, *, temperature: float, top_p: float, max_new_tokens: int, seed: int) -> GenerateFn:
    """vLLM: all prompts in one `generate` call with n = k samples each (GPU)."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    llm = LLM(model=model_dir, seed=seed)

    def generate(prompts: list[str], k: int) -> list[list[Generation]]:
        params = SamplingParams(n=k, temperature=temperature, top_p=top_p, top_k=-1, max_tokens=max_new_tokens)
        # token ids, not text: vLLM would tokenize text with the special tokens (a BOS) verl never adds
        requests = [{"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        outputs = llm.generate(requests, params, use_tqdm=True)
        return [
            [Generation(o.text, len(o.token_ids), o.finish_reason == "length") for o in output.outputs]
            for output in outputs
        ]

    return generate


def choose_backend(backend: str) -> str:
    if backend != "auto":
        return backend
    import torch

    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None else "hf"


# -- metrics --------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct among n samples: 1 - C(n-c, k) / C(n, k).

    As the product 1 - prod_{i=n-c+1}^{n} (1 - k/i), which stays exact in float64 where the
    binomials overflow (n in the thousands).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


@dataclass
class BenchmarkResult:
    metrics: dict
    problems: list[dict]  # per problem: row, index, problem_id, correct, samples (and test_pass_rate for code)
    generations: list[list[Generation]]
    scores: list[list[dict]]


def evaluate(
    rows: list[EvalRow],
    prompts: list[str],
    generate_fn: GenerateFn,
    k: int,
    *,
    progress: bool = True,
) -> BenchmarkResult:
    """Generate k responses per row with `generate_fn`, score them, and compute the metrics."""
    generations = generate_fn(prompts, k)
    if len(generations) != len(rows) or any(len(samples) != k for samples in generations):
        counts = sorted({len(samples) for samples in generations})
        raise ValueError(
            f"the generator returned {len(generations)} prompts x {counts} samples, expected {len(rows)} x {k}"
        )
    scores = score_generations(rows, generations, progress=progress)
    correct = [sum(score["acc"] == 1.0 for score in row_scores) for row_scores in scores]  # c_i
    problems = []
    for row, c, row_scores in zip(rows, correct, scores):
        problem = {
            "row": row.row,
            "index": row.extra_info.get("index"),
            "problem_id": row.extra_info.get("problem_id"),
            "correct": int(c),
            "samples": k,
        }
        if row.kind == "code":
            problem["test_pass_rate"] = float(np.mean([score["pass_rate"] for score in row_scores]))
        problems.append(problem)
    lengths = [g.num_tokens for samples in generations for g in samples]
    metrics = {
        "num_problems": len(rows),
        "k": k,
        "avg_at_k": float(np.mean([c / k for c in correct])),
        "pass_at_1": float(np.mean([pass_at_k(k, c, 1) for c in correct])),
        "pass_at_k": float(np.mean([pass_at_k(k, c, k) for c in correct])),
        "mean_response_tokens": float(np.mean(lengths)),
        "truncated_share": float(np.mean([g.truncated for samples in generations for g in samples])),
    }
    code_rates = [p["test_pass_rate"] for p in problems if "test_pass_rate" in p]
    if code_rates:
        metrics["test_pass_rate"] = float(np.mean(code_rates))
    return BenchmarkResult(metrics, problems, generations, scores)


def score_generations(
    rows: list[EvalRow], generations: list[list[Generation]], *, progress: bool = True
) -> list[list[dict]]:
    """Every response scored by its row's scorer (a few at a time: code runs in the sandbox)."""

    def score_one(job: tuple[int, int]) -> dict:
        i, j = job
        row = rows[i]
        _, compute_score = scorer_of(row.data_source)
        try:
            return compute_score(row.data_source, generations[i][j].text, row.ground_truth, row.extra_info)
        except ValueError as error:  # a malformed ground truth or limit: name the row
            raise BadInputError(row.file, f"cannot be scored: {error}", row=row.row) from None

    jobs = [(i, j) for i in range(len(rows)) for j in range(len(generations[i]))]
    with ThreadPoolExecutor(max_workers=SCORE_THREADS) as pool:
        bar = tqdm(pool.map(score_one, jobs), total=len(jobs), desc="scoring", unit="response", disable=not progress)
        flat = list(bar)
    scores: list[list[dict]] = [[] for _ in rows]
    for (i, _), score in zip(jobs, flat):
        scores[i].append(score)
    return scores


# -- the model: a HF folder, or a verl checkpoint merged by verl's own merger ---------------------


class ModelPathError(ValueError):
    """--model is neither a HF model folder nor a verl checkpoint folder."""


def resolve_model(path: str) -> tuple[str, str | None]:
    """(HF model folder to load, verl checkpoint folder or None)."""
    folder = Path(path)
    for actor in (folder, folder / "actor"):
        if (actor / "fsdp_config.json").is_file():
            return str(merged_hf_folder(actor)), str(actor)
    if (folder / "config.json").is_file():
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
            raise ModelPathError(f"--model {path}: has config.json but no weights (*.safetensors, pytorch_model*.bin)")
        return str(folder), None
    raise ModelPathError(
        f"--model {path}: neither a Hugging Face model folder (config.json + weights) nor a verl FSDP checkpoint "
        "folder (.../global_step_N/actor with fsdp_config.json and model_world_size_*_rank_*.pt)"
        + ("" if folder.exists() else "; the path does not exist")
    )


def merged_hf_folder(actor: Path) -> Path:
    """The HF model of a verl FSDP checkpoint, merged once by `verl.model_merger` into
    global_step_N/actor_hf and reused while the checkpoint's shards are unchanged.

    A LoRA checkpoint comes out of the merger as base weights plus `lora_adapter/`; the adapter is
    folded into the weights (peft `merge_and_unload`) so that both backends load the trained model.
    """
    target = actor.parent / MERGED_FOLDER
    shards = sorted(actor.glob("model_world_size_*_rank_*.pt"))
    source = {shard.name: [shard.stat().st_size, shard.stat().st_mtime_ns] for shard in shards}
    record_file = target / MERGE_RECORD
    if record_file.is_file() and json.loads(record_file.read_text()).get("shards") == source:
        return target
    if target.exists() and not record_file.is_file():  # not a merge of ours: never delete it
        raise ModelPathError(f"{target} exists and was not written by verl-avsd eval (no {MERGE_RECORD}); move it away to merge {actor}")

    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    work = actor.parent / f".{MERGED_FOLDER}.tmp-{os.getpid()}"  # a merge cut short never looks like a cache
    shutil.rmtree(work, ignore_errors=True)
    print(f"merging verl checkpoint {actor} -> {target} (verl.model_merger, fsdp)", file=sys.stderr)
    config = ModelMergerConfig(
        operation="merge",
        backend="fsdp",
        local_dir=str(actor),
        target_dir=str(work),
        hf_model_config_path=str(actor / "huggingface"),
    )
    merger = FSDPModelMerger(config)
    merger.merge_and_save()
    merger.cleanup()
    lora_folded = (work / "lora_adapter").is_dir()
    if lora_folded:
        _fold_lora_adapter(work)
    record = {"checkpoint": str(actor), "shards": source, "lora_folded": lora_folded}
    (work / MERGE_RECORD).write_text(json.dumps(record))
    shutil.rmtree(target, ignore_errors=True)  # an older merge of ours (checked above)
    os.replace(work, target)
    return target


def _fold_lora_adapter(folder: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    PeftModel.from_pretrained(base, folder / "lora_adapter").merge_and_unload().save_pretrained(folder)


# -- a whole run ----------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    model: str
    data: list[str]
    output: str | None = None
    k: int = DEFAULT_K
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    seed: int = DEFAULT_SEED
    backend: str = "auto"
    limit: int | None = None
    chat_template_kwargs: dict = field(default_factory=dict)
    batch_size: int = HF_BATCH_SIZE
    progress: bool = True


def run_eval(config: EvalConfig) -> dict:
    """Read and check every benchmark, resolve the model, generate, score; write DIR/* when `output` is set."""
    if config.k < 1 or config.max_new_tokens < 1:
        raise ValueError(f"--k and --max-new-tokens must be >= 1, got {config.k} and {config.max_new_tokens}")
    names = [benchmark_name(path) for path in config.data]
    if len(set(names)) != len(names):
        raise ValueError(f"two --data files have the same name ({', '.join(names)}); a benchmark is named by its file")
    benchmarks = {name: read_benchmark(path, config.limit) for name, path in zip(names, config.data)}
    model_dir, checkpoint = resolve_model(config.model)
    backend = choose_backend(config.backend)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sampling = dict(
        temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens, seed=config.seed
    )
    if backend == "vllm":
        generate_fn = vllm_generator(model_dir, **sampling)
    else:
        generate_fn = hf_generator(model_dir, **sampling, batch_size=config.batch_size, progress=config.progress)

    start = time.monotonic()
    report = {
        "model": config.model,
        "model_dir": model_dir,
        "checkpoint": checkpoint,
        "backend": backend,
        "k": config.k,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.seed,
        "limit": config.limit,
        "chat_template_kwargs": config.chat_template_kwargs,
        "example_prompt": None,
        "benchmarks": {},
    }
    results = {}
    for (name, rows), path in zip(benchmarks.items(), config.data):
        prompts = [render_prompt(tokenizer, row.messages, config.chat_template_kwargs) for row in rows]
        results[name] = evaluate(rows, prompts, generate_fn, config.k, progress=config.progress)
        report["example_prompt"] = report["example_prompt"] or prompts[0]
        report["benchmarks"][name] = {
            "file": path,
            "data_sources": sorted({row.data_source for row in rows}),
            "metrics": results[name].metrics,
            "example_prompt": prompts[0],
            "problems": results[name].problems,
        }
    report["seconds"] = round(time.monotonic() - start, 1)
    if config.output:
        write_outputs(config.output, report, benchmarks, results)
    return report


def evaluate_hf_model(
    model_dir: str,
    data_file: str,
    *,
    max_new_tokens: int,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    seed: int = DEFAULT_SEED,
    limit: int | None = None,
    chat_template_kwargs: dict | None = None,
    batch_size: int = HF_BATCH_SIZE,
    progress: bool = False,
) -> dict:
    """Metrics of a local HF model folder (or verl checkpoint) on one parquet file, hf backend, no files written:
    {"num_problems", "k", "avg_at_k", "pass_at_1", "pass_at_k", "mean_response_tokens", "truncated_share"}.
    `max_new_tokens` has no default: a small model's budget is tiny next to the paper's 4096."""
    config = EvalConfig(
        model=model_dir,
        data=[data_file],
        k=k,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        backend="hf",
        limit=limit,
        chat_template_kwargs=dict(chat_template_kwargs or {}),
        batch_size=batch_size,
        progress=progress,
    )
    report = run_eval(config)
    return report["benchmarks"][benchmark_name(data_file)]["metrics"]


# -- outputs --------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def summary_table(report: dict) -> str:
    k = report["k"]
    lines = [
        f"| benchmark | problems | Avg@{k} | pass@1 | pass@{k} | test pass rate | mean tokens | hit max tokens |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, benchmark in report["benchmarks"].items():
        m = benchmark["metrics"]
        lines.append(
            f"| {name} | {m['num_problems']} | {_pct(m['avg_at_k'])} | {_pct(m['pass_at_1'])} | "
            f"{_pct(m['pass_at_k'])} | {_pct(m.get('test_pass_rate'))} | {m['mean_response_tokens']:.0f} | "
            f"{_pct(m['truncated_share'])} |"
        )
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    k = report["k"]
    merged = ""
    if report["checkpoint"]:
        merged = f", checkpoint `{report['checkpoint']}` (merged to `{report['model_dir']}`)"
    parts = [
        f"# Evaluation of `{report['model']}`",
        "",
        f"backend {report['backend']}, k = {k}, temperature {report['temperature']}, top-p {report['top_p']}, "
        f"max new tokens {report['max_new_tokens']}, seed {report['seed']}, "
        f"chat template kwargs `{json.dumps(report['chat_template_kwargs'])}`"
        + merged,
    ]
    for name, benchmark in report["benchmarks"].items():
        one = {**report, "benchmarks": {name: benchmark}}
        parts += [
            "",
            f"## {name}",
            "",
            f"`{benchmark['file']}` ({', '.join(benchmark['data_sources'])})",
            "",
            summary_table(one),
            "",
            "Student prompt of the first problem, as rendered:",
            "",
            "```text",
            benchmark["example_prompt"],
            "```",
        ]
    return "\n".join(parts) + "\n"


def write_outputs(out_dir: str, report: dict, benchmarks: dict, results: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "eval.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out_dir, "eval.md"), "w") as f:
        f.write(markdown_report(report))
    with open(os.path.join(out_dir, "generations.jsonl"), "w") as f:
        for name, rows in benchmarks.items():
            for row, samples, scores in zip(rows, results[name].generations, results[name].scores):
                line = {
                    "benchmark": name,
                    "row": row.row,
                    "ground_truth": row.ground_truth,
                    "responses": [asdict(g) for g in samples],
                    "scores": scores,
                }
                f.write(json.dumps(line) + "\n")


# -- command line ---------------------------------------------------------------------------------


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"enable_thinking\": false}}', got {text!r}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="verl-avsd eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="HF model folder, or verl checkpoint folder .../global_step_N/actor")
    p.add_argument("--data", action="append", required=True, help="benchmark parquet file (repeatable)")
    p.add_argument("--output", required=True, help="folder for eval.json, eval.md, generations.jsonl")
    p.add_argument("--k", type=int, default=DEFAULT_K, help="samples per problem (default %(default)s: Avg@8)")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0 = greedy (default %(default)s)")
    p.add_argument("--top-p", type=float, default=DEFAULT_TOP_P, help="(default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="(default %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--backend", choices=("auto", "vllm", "hf"), default="auto", help="auto: vllm on a GPU, else hf")
    p.add_argument("--limit", type=int, help="only the first N rows of each file")
    p.add_argument("--batch-size", type=int, default=HF_BATCH_SIZE, help="hf backend: prompts per generate call")
    p.add_argument(
        "--chat-template-kwargs",
        type=_json_object,
        default={},
        help="the training run's data.apply_chat_template_kwargs as JSON, e.g. '{\"enable_thinking\": false}'",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
    except SystemExit as exit_request:  # argparse: --help (0) or a usage error (2)
        return int(exit_request.code or 0)
    config = EvalConfig(
        model=args.model,
        data=args.data,
        output=args.output,
        k=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        backend=args.backend,
        limit=args.limit,
        chat_template_kwargs=args.chat_template_kwargs,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    try:
        report = run_eval(config)
    except (BadInputError, ModelPathError, ValueError, FileNotFoundError) as error:
        print(f"verl-avsd eval: error: {error}", file=sys.stderr)
        return 2
    print(summary_table(report))
    print(f"wrote {os.path.join(args.output, 'eval.json')}, eval.md, generations.jsonl ({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
