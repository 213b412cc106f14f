"""Metrics of `verl-avsd eval`: score every response, then Avg@k and unbiased pass@k per benchmark.

One job: from the rows of one benchmark and their k generations, the per-problem correct counts
and the benchmark's metrics:

    Avg@k   = mean over problems of c_i / k            (c_i = correct samples of problem i)
    pass@j  = mean over problems of 1 - C(n-c_i, j) / C(n, j)   (unbiased, n = samples drawn)

so pass@1 equals Avg@k; a code sample is correct when it passes every hidden test, and code
benchmarks also report the mean share of tests passed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from verl_avsd.data_prep.errors import BadInputError
from verl_avsd.eval_backends import GenerateFn, Generation
from verl_avsd.eval_benchmarks import EvalRow, scorer_of

SCORE_THREADS = 4  # responses scored at once (math-verify runs in its own process pool)


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
        raise ValueError(f"the generator returned {len(generations)} prompts x {counts} samples, expected {len(rows)} x {k}")
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


def score_generations(rows: list[EvalRow], generations: list[list[Generation]], *, progress: bool = True) -> list[list[dict]]:
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
