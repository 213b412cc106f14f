"""Benchmark: the `hf` rollout scoring AVSD's view sequences (prompt-log-prob requests), with and
without its prefix cache (verl_avsd/cpu/prompt_logprobs.py).

Workload: one prompt, n rollouts sampled by the server itself, M teacher views; each rollout's M
sequences `view context + response` are sent as verl's teacher requests
(`{"max_tokens": 1, "prompt_logprobs": 0, "temperature": T}`). Two arrival orders:
  per_rollout   n rounds of M concurrent requests, as the agent loop scores each sample as it ends
  all_at_once   the n x M requests in one round
Scored tokens = sum of (L - 1) over the sequences (the positions whose log-prob comes back);
tokens/s counts those, whatever the cache saved, per second of process CPU time (the scoring runs
on --threads torch threads; CPU time is far steadier than wall time on a shared host, and both
are recorded). Each measurement starts from an empty cache and is the median of --repeats. The
cached and uncached log-probs are compared (max abs difference).

  python bench/hf_prompt_logprobs.py                      # shipped toy model, 4 views x 8 rollouts
  python bench/hf_prompt_logprobs.py --model DIR          # e.g. `verl-avsd prep-model smollm2` output

Writes bench/results/hf_prompt_logprobs_<model kind>.json and .md (one-line summary).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import torch
from verl.workers.config import HFModelConfig, RolloutConfig

from verl_avsd.cpu.hf_rollout import HFRolloutServer
from verl_avsd.toy import task as toy_task

ROOT = Path(__file__).resolve().parents[1]
TOY_MODEL_DIR = ROOT / "verl_avsd" / "assets" / "toy_model"


def make_server(model_dir: str, enable_prefix_caching: bool, response_tokens: int) -> HFRolloutServer:
    rollout = RolloutConfig(
        name="hf",
        prompt_length=384,
        response_length=response_tokens,
        dtype="float32",
        tensor_model_parallel_size=1,
        enable_prefix_caching=enable_prefix_caching,
    )
    return HFRolloutServer(
        rollout, HFModelConfig(path=model_dir, override_config={"attn_implementation": "sdpa"}), replica_rank=0
    )


def workload(server: HFRolloutServer, views: int, rollouts: int, temperature: float, seed: int) -> list[list[list[int]]]:
    """[rollout][view] token sequences: view context (chat turn with the problem and view m) + response."""
    tokenizer = server.model_config.tokenizer
    problem = toy_task.generate_problems(1, seed=seed, split="val")[0]
    steps = list(problem.steps)
    view_texts = [
        "A worked solution:\n" + problem.solution,
        "The first steps of a solution:\n" + "\n".join(steps[: max(1, len(steps) // 2)]),
        f"The answer is {problem.answer_text}.",
        "Your previous attempt was wrong; check every step.",
    ]
    view_texts = (view_texts * (views // len(view_texts) + 1))[:views]

    def chat(content: str) -> list[int]:
        encoded = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True)
        return list(encoded["input_ids"])

    student_prompt = chat(problem.prompt)
    contexts = [chat(problem.prompt + "\n\n" + text) for text in view_texts]

    async def sample():
        params = {"temperature": temperature, "seed": None}
        return await asyncio.gather(*[server.generate(student_prompt, dict(params), request_id=f"r{i}") for i in range(rollouts)])

    torch.manual_seed(seed)
    responses = [output.token_ids for output in asyncio.run(sample())]
    return [[context + response for context in contexts] for response in responses]


def score(server: HFRolloutServer, rounds: list[list[list[int]]], temperature: float) -> tuple[float, float, list]:
    """Wall and CPU seconds to score every round (each round's requests sent together), and the outputs."""
    params = {"max_tokens": 1, "prompt_logprobs": 0, "detokenize": False, "temperature": temperature}

    async def run():
        outputs = []
        for r, sequences in enumerate(rounds):
            outputs += await asyncio.gather(
                *[server.generate(s, dict(params), request_id=f"s{r}.{i}") for i, s in enumerate(sequences)]
            )
        return outputs

    start, start_cpu = time.perf_counter(), time.process_time()
    outputs = asyncio.run(run())
    return time.perf_counter() - start, time.process_time() - start_cpu, outputs


def measure(server: HFRolloutServer, rounds, temperature: float, repeats: int) -> dict:
    seconds, cpu_seconds, stats = [], [], None
    for _ in range(repeats):
        server.scorer.clear()
        before = dict(server.scorer.stats)
        elapsed, cpu, outputs = score(server, rounds, temperature)
        seconds.append(elapsed)
        cpu_seconds.append(cpu)
        stats = {key: server.scorer.stats[key] - before[key] for key in before}
    scored = sum(len(s) - 1 for round_ in rounds for s in round_)
    median = statistics.median(cpu_seconds)
    return {
        "cpu_seconds": median,
        "cpu_seconds_all": cpu_seconds,
        "wall_seconds_all": seconds,
        "scored_tokens": scored,
        "tokens_per_s": scored / median,  # per CPU second
        "fed_tokens": stats["fed_tokens"],
        "cached_tokens": stats["cached_tokens"],
        "cache_hits": stats["cache_hits"],
        "log_probs": [[entry[0] for entry in output.extra_fields["prompt_logprobs"][:-1]] for output in outputs],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(TOY_MODEL_DIR), help="model folder (default: the shipped toy model)")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--response-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady numbers on a shared host)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kind = "toy" if Path(args.model).resolve() == TOY_MODEL_DIR.resolve() else Path(args.model).name

    servers = {cached: make_server(args.model, cached, args.response_tokens) for cached in (True, False)}
    per_rollout = workload(servers[True], args.views, args.rollouts, args.temperature, args.seed)
    arrivals = {"per_rollout": per_rollout, "all_at_once": [[s for views in per_rollout for s in views]]}
    results: dict = {}
    for order, rounds in arrivals.items():
        results[order] = {
            name: measure(servers[cached], rounds, args.temperature, args.repeats)
            for name, cached in (("cache", True), ("no_cache", False))
        }
        cached, uncached = results[order]["cache"].pop("log_probs"), results[order]["no_cache"].pop("log_probs")
        results[order]["max_abs_diff"] = max(abs(a - b) for x, y in zip(cached, uncached) for a, b in zip(x, y))
        results[order]["speedup"] = results[order]["cache"]["tokens_per_s"] / results[order]["no_cache"]["tokens_per_s"]

    lengths = [len(s) for views in per_rollout for s in views]
    report = {
        "config": {**vars(args), "model_kind": kind, "sequences": len(lengths), "mean_length": sum(lengths) / len(lengths)},
        "versions": {"torch": torch.__version__, "cpu_threads": torch.get_num_threads()},
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"hf_prompt_logprobs_{kind}.json").write_text(json.dumps(report, indent=2) + "\n")
    line = (
        f"hf prompt log-probs ({kind}, {args.views} views x {args.rollouts} rollouts, mean {report['config']['mean_length']:.0f} tokens): "
        + "; ".join(
            f"{order} {r['cache']['tokens_per_s']:.0f} tok/CPU-s cached vs {r['no_cache']['tokens_per_s']:.0f} uncached "
            f"({r['speedup']:.2f}x, {r['cache']['fed_tokens']}/{r['cache']['scored_tokens']} fed, max diff {r['max_abs_diff']:.1e})"
            for order, r in results.items()
        )
    )
    (out / f"hf_prompt_logprobs_{kind}.md").write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
