"""The side-by-side summary of runs: final/best reward, validation, means of the last N logged values
of the key metrics, as summary.json (`summarize`, `summarize_runs`) and summary.md (`summary_markdown`).
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from verl_avsd.config import AvsdConfigError, avsd_config, default_config
from verl_avsd.metrics import credit_metric_name
from verl_avsd.run_files import TEACHER_SHARE, ReportError, Run, config_value, load_run

VALIDATION_KEY = re.compile(r"^val-core/.+/(acc|reward)/mean@\d+$")  # verl's held-out accuracy
REWARD = "critic/score/mean"
EPISTEMIC_RATE = "epistemic/markers_per_1k_tokens"  # the summary shows the run's epistemic_tau after it
# The row of credit_metric_name(k), k = each run's algorithm.avsd.credit_top_k (run_credit_top_k).
CREDIT_SHARE = "credit share"

# What the summary averages over each run's last N logged values: (metric, row label)
SUMMARY_METRICS = [
    (REWARD, "reward"),
    ("avsd/gate_mean", "gate mean"),
    ("avsd/gate_open_rate", "gate open rate"),
    ("avsd/residual_mean", "residual mean"),
    ("avsd/alignment_mean", "alignment mean"),
    (CREDIT_SHARE, "wrong-rollout positive top-{k}"),
    ("grpo/groups_without_signal", "GRPO groups without signal"),
    (EPISTEMIC_RATE, "epistemic markers per 1k tokens"),
    ("timing_s/step", "step time (s)"),
    (TEACHER_SHARE, "teacher share of step"),
]


def _series(metrics: dict[int, dict], key: str) -> list[tuple[int, float]]:
    return [(step, metrics[step][key]) for step in sorted(metrics) if key in metrics[step]]


def _final_and_best(series: list[tuple[int, float]]) -> dict:
    if not series:
        return {"final": None, "final_step": None, "best": None, "best_step": None}
    best_step, best = max(series, key=lambda sv: sv[1])
    return {"final": series[-1][1], "final_step": series[-1][0], "best": best, "best_step": best_step}


def validation_keys(runs: list[Run]) -> list[str]:
    return sorted({k for run in runs for values in run.metrics.values() for k in values if VALIDATION_KEY.match(k)})


def run_credit_top_k(run: Run) -> int:
    """The run's algorithm.avsd.credit_top_k (the k in its credit metric's name): from its
    config.yaml; a run without one, from the name it logged the metric under; else the default."""
    value = config_value(run.config, "algorithm.avsd.credit_top_k")
    if value is not None:
        try:
            return avsd_config({"avsd": {"credit_top_k": value}}).credit_top_k
        except AvsdConfigError as e:
            raise ReportError(f"{run.run_dir}: config.yaml: {e}") from None
    logged = set()
    for key in {key for values in run.metrics.values() for key in values}:
        k = re.search(r"\d+$", key)
        if k and key == credit_metric_name(int(k.group())):
            logged.add(int(k.group()))
    return logged.pop() if len(logged) == 1 else default_config().credit_top_k


def summarize_run(run: Run, last: int = 5) -> dict:
    """One run's numbers; a metric the run never logged is None (shown as n/a), never 0."""
    reward = _final_and_best(_series(run.metrics, REWARD))
    top_k = run_credit_top_k(run)
    last_means = {}
    for key, _ in SUMMARY_METRICS:
        metric = credit_metric_name(top_k) if key == CREDIT_SHARE else key
        values = [v for _, v in _series(run.metrics, metric)][-last:]
        last_means[metric] = statistics.fmean(values) if values else None
    return {
        "run_dir": str(run.run_dir),
        "metrics_file": run.metrics_file.name,
        "estimator": config_value(run.config, "algorithm.adv_estimator"),
        "model": config_value(run.config, "actor_rollout_ref.model.path"),
        # the optional term that keeps exploratory tokens; a config without the key ran the default
        "epistemic_tau": config_value(
            run.config, "algorithm.avsd.epistemic_tau", default_config().epistemic_tau if run.config else None
        ),
        "credit_top_k": top_k,
        "steps": max(run.metrics),
        "reward_final": reward["final"],
        "reward_final_step": reward["final_step"],
        "reward_best": reward["best"],
        "reward_best_step": reward["best_step"],
        "validation": {k: _final_and_best(_series(run.metrics, k)) for k in validation_keys([run])},
        "last_n_mean": last_means,
    }


def summarize(runs: list[Run], last: int = 5) -> dict:
    labels = [run.label for run in runs]
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise ReportError(f"several runs are labelled {duplicated}; give each run its own --label")
    return {"last_n": last, "runs": {run.label: summarize_run(run, last) for run in runs}}


def summarize_runs(run_dirs: list[str | Path], labels: list[str] | None = None, last: int = 5) -> dict:
    """{"last_n": N, "runs": {label: numbers}} for these run directories (what summary.json holds,
    less the file lists)."""
    labels = labels or [None] * len(run_dirs)
    return summarize([load_run(d, label) for d, label in zip(run_dirs, labels, strict=True)], last)


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _at(value, step) -> str:
    return "n/a" if value is None else f"{_fmt(value)} (step {step})"


def summary_markdown(summary: dict) -> str:
    runs = summary["runs"]
    n = summary["last_n"]
    rows = [
        ("run directory", [f"`{r['run_dir']}`" for r in runs.values()]),
        ("metrics file", [r["metrics_file"] for r in runs.values()]),
        ("estimator", [_fmt(r["estimator"]) for r in runs.values()]),
        ("model", [_fmt(r["model"]) for r in runs.values()]),
        ("steps", [_fmt(r["steps"]) for r in runs.values()]),
        ("final reward", [_at(r["reward_final"], r["reward_final_step"]) for r in runs.values()]),
        ("best reward", [_at(r["reward_best"], r["reward_best_step"]) for r in runs.values()]),
    ]
    for key in sorted({k for r in runs.values() for k in r["validation"]}):
        name = key.removeprefix("val-core/")
        vals = [r["validation"].get(key) for r in runs.values()]
        rows.append((f"final val {name}", [_at(v["final"], v["final_step"]) if v else "n/a" for v in vals]))
        rows.append((f"best val {name}", [_at(v["best"], v["best_step"]) if v else "n/a" for v in vals]))
    top_ks = sorted({r["credit_top_k"] for r in runs.values()})
    for key, label in SUMMARY_METRICS:
        if key == CREDIT_SHARE:  # each run's own k
            label = label.format(k=top_ks[0] if len(top_ks) == 1 else f"k (k = {', '.join(map(str, top_ks))} by run)")
            cells = [_fmt(r["last_n_mean"][credit_metric_name(r["credit_top_k"])]) for r in runs.values()]
        else:
            cells = [_fmt(r["last_n_mean"][key]) for r in runs.values()]
        rows.append((f"{label}, last {n}", cells))
        if key == EPISTEMIC_RATE:
            rows.append(("epistemic_tau", [_fmt(r.get("epistemic_tau")) for r in runs.values()]))

    lines = ["# Run report", "", "| | " + " | ".join(runs) + " |", "| --- |" + " --- |" * len(runs)]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    lines += [
        "",
        f"`last {n}`: mean of the run's last {n} logged values of that metric. "
        "Teacher share: timing_s/teacher_views / timing_s/step of each step. n/a: the run did not log it.",
    ]
    if summary.get("plots"):
        lines += ["", "## Plots", ""] + [f"- [{p}]({p})" for p in summary["plots"]]
    if summary.get("credit_views"):
        lines += ["", "## Token credit", ""]
        lines += [f"- [{c['html']}]({c['html']}), [{c['png']}]({c['png']}): {c['about']}" for c in summary["credit_views"]]
    return "\n".join(lines) + "\n"
