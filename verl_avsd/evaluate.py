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

# Reading order of the evaluation modules (this one is the driver and the command line):
# 1. eval_benchmarks.py  a benchmark file -> checked rows, and the scorer of each data_source
# 2. eval_backends.py    the student's prompt as verl renders it; k samples from vLLM or transformers
# 3. eval_metrics.py     every response scored; Avg@k and unbiased pass@k
# 4. eval_checkpoint.py  --model: a HF folder, or a verl checkpoint merged by verl.model_merger
# 5. this module         one run (`run_eval`, `evaluate_hf_model`), its output files, `main`

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

from verl_avsd.data_prep.errors import BadInputError
from verl_avsd.eval_backends import HF_BATCH_SIZE, choose_backend, hf_generator, render_prompt, vllm_generator
from verl_avsd.eval_benchmarks import benchmark_name, read_benchmark
from verl_avsd.eval_checkpoint import ModelPathError, resolve_model
from verl_avsd.eval_metrics import evaluate

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
    sampling = dict(temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens, seed=config.seed)
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
        f"chat template kwargs `{json.dumps(report['chat_template_kwargs'])}`" + merged,
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
    p = argparse.ArgumentParser(prog="verl-avsd eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
