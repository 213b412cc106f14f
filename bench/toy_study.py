"""The paper's analysis at toy scale: learning, credit reliability and gate behaviour (CPU).

Every run is the real trainer (`python -m verl.trainer.main_ppo`, `trainer.v1.trainer_mode=avsd_sync`,
CPU platform, `hf` rollout) training the shipped warmed-up toy model (verl_avsd/assets/toy_model)
on the toy arithmetic task, whose three views (worked solution, its first half, the answer) carry
real privileged information. All methods get the same budget: the same number of rollouts per
step (teacher methods: P prompts x 1 rollout, as in the paper; GRPO: P/4 prompts x 4 rollouts,
since it needs a group) and the same number of steps, learning rate and seeds.

Measured per method, over seeds (mean and spread):
  - held-out accuracy before and after training: verl's own validation, greedy, on toy problems
    from the `val` split (which never share a prompt with training);
  - credit reliability: the share of positive advantage among the 20 largest-|advantage| tokens
    of wrong rollouts (`credit/wrong_rollout_positive_top20`, pooled over steps by token count;
    paper: OPSD 12.3%, AVSD 2.9%), both on each method's own rollouts and, "paired", with every
    teacher estimator recomputed on the same dumped rollouts;
  - the share of GRPO groups whose rollouts all got the same reward (no signal; paper 29.6%);
  - AVSD's gate-open rate (gate >= 0.5; paper 21-27%);
  - the number of tokens where the arithmetic pool would have flipped the consensus sign.
  - epistemic verbalization (`epistemic/*`, verl_avsd/epistemic.py): markers per 1k response
    tokens over all, correct and wrong rollouts, and the response length, each the mean of its
    per-step values over the last LAST_STEPS training steps (length also at step 1).
And rows beyond the method comparison (all off with --no-sweep):
  - a view-count sweep for AVSD: views [full], [full, partial], [full, partial, answer];
  - AVSD with the optional epistemic term on (algorithm.avsd.epistemic_tau, --epistemic-tau),
    next to the plain AVSD row;
  - the `sibling` view (a correct rollout of the same prompt, built at train time) alone and next
    to the fixed views, against the fixed views, all at rollout.n = GROUP_SIZE (the GRPO budget:
    P/4 prompts x 4 rollouts), since a rollout of a group of one has no sibling. The toy model
    was warmed up to read a view under the header "Reference (full|partial|answer):" only, so the
    sibling alone runs twice: under its own name, and shown as "Reference (full):" (a correct
    rollout is written like the worked solution), which separates the view's information from
    the novelty of its header.

    python bench/toy_study.py                      # the whole study (~2 h on 2 cores)
    python bench/toy_study.py --seeds 0 --steps 4  # a quick look

Runs are kept in --out/runs/NAME and skipped when already finished, so an interrupted study
resumes where it stopped. Results: --out/toy_study.json, --out/toy_study.md and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import torch

from verl_avsd.estimators import token_advantages
from verl_avsd.metrics import credit_metric_name, credit_tokens_metric_name, wrong_rollout_positive_topk
from verl_avsd.output_dir import OutputDirError, claim_output_dir, is_previous_output
from verl_avsd.plots import plot_metrics
from verl_avsd.rollout_dumps import dump_tensors
from verl_avsd.run_files import read_metrics_file
from verl_avsd.toy import TOY_MODEL_DIR
from verl_avsd.toy_run import (
    GROUP_SIZE,
    TOY_VIEW_TEMPLATE,
    ToyRun,
    rollout_budget,
    run_main_ppo,
    toy_data,
)

METHODS = ("grpo", "opsd", "avsd_consensus", "avsd_arithmetic", "avsd")
TEACHER_METHODS = ("opsd", "avsd_consensus", "avsd_arithmetic", "avsd")
VIEW_SWEEP = {"M1": ("full",), "M2": ("full", "partial"), "M3": ("full", "partial", "answer")}
# The sibling-view block, each at rollout.n = GROUP_SIZE: label -> (views, the name the teacher's
# header shows for every view, None = each its own)
SIBLING_SWEEP = {
    "fixed": (VIEW_SWEEP["M3"], None),
    "sibling": (("sibling",), None),
    "sibling as full": (("sibling",), "full"),
    "fixed+sibling": ((*VIEW_SWEEP["M3"], "sibling"), None),
}
TOP_K = 20  # the paper's top-20 credit metric; the study's runs keep algorithm.avsd.credit_top_k's default, 20
LAST_STEPS = 5  # the end-of-training window of the train reward and the epistemic columns
# What the study and each of its runs write: an interrupted run is started over only in a folder
# the study made (verl_avsd.output_dir), and --out must be new, empty or a previous study.
STUDY_COMMAND, RUN_COMMAND = "toy study", "toy study run"
STUDY_OUTPUTS = ("toy_study.json", "toy_study.md", "study_*.png", "data", "runs", "report")
RUN_OUTPUTS = ("train.log", "verl_metrics.jsonl", "done.json", "checkpoints", "rollouts", "outputs")
VAL_KEY_PREFIX = "val-core/"  # verl: val-core/<data_source>/<reward var>/mean@1


# ---------------------------------------------------------------------------------------------
# One run


class StudyRun(ToyRun):
    """A ToyRun whose teacher header may show one name for every view: the toy template's
    "Reference ({view_name}):" with `header` in place of the view's name (None: its own).
    (Not a dataclass itself: the tests load this file without registering it as a module.)"""

    def __init__(self, *, header: str | None = None, **fields):
        super().__init__(**fields)
        self.header = header

    def overrides(self) -> list[str]:
        out = super().overrides()
        if self.header is None:
            return out
        shown = TOY_VIEW_TEMPLATE.replace("{view_name}", self.header)
        return [f"+algorithm.avsd.view_template='{shown}'" if o.startswith("+algorithm.avsd.view_template=") else o for o in out]


def toy_run_for(
    name: str,
    estimator: str,
    seed: int,
    views: tuple[str, ...],
    args,
    data: dict,
    rollouts_per_prompt: int | None = None,
    epistemic_tau: float = 0.0,
    header: str | None = None,
) -> ToyRun:
    """The ToyRun of one study run. `rollouts_per_prompt` None: the method's own budget split
    (rollout_budget); else that many rollouts per prompt at the same rollouts per step."""
    if rollouts_per_prompt is None:
        budget = rollout_budget(estimator, args.rollouts_per_step)
    elif args.rollouts_per_step % rollouts_per_prompt:
        raise ValueError(
            f"run {name}: --rollouts-per-step {args.rollouts_per_step} is not a multiple of {rollouts_per_prompt} rollouts per prompt"
        )
    else:
        budget = {"prompts_per_step": args.rollouts_per_step // rollouts_per_prompt, "rollouts_per_prompt": rollouts_per_prompt}
    return StudyRun(
        header=header,
        model_dir=str(args.model),
        train_file=data["train"],
        val_file=data["val"],
        run_dir=str(Path(args.out) / "runs" / name),
        estimator=estimator,
        steps=args.steps,
        **budget,
        views=views,
        lr=args.lr,
        seed=seed,
        val_before_train=True,
        test_freq=args.steps,
        dump_rollouts=estimator != "grpo",  # no teacher: nothing to dump
        extra_overrides=[f"+algorithm.avsd.epistemic_tau={epistemic_tau!r}"] if epistemic_tau else [],
    )


def run_one(
    name: str,
    estimator: str,
    seed: int,
    views: tuple[str, ...],
    args,
    data: dict,
    rollouts_per_prompt: int | None = None,
    epistemic_tau: float = 0.0,
    header: str | None = None,
) -> dict:
    """Train one (method, seed, views, ...) run unless RUN_DIR/done.json says it finished; returns its record."""
    run_dir = Path(args.out) / "runs" / name
    done = run_dir / "done.json"
    if done.exists():  # finished: its analysis (metrics file and dumps) is redone (cheap), so it follows this code
        previous = json.loads(done.read_text())
        record = summarize_run(name, estimator, seed, views, run_dir, read_metrics_file(run_dir / "verl_metrics.jsonl"))
        record.update(
            seconds=previous.get("seconds", 0.0),
            rollouts_per_prompt=previous["rollouts_per_prompt"],
            epistemic_tau=previous.get("epistemic_tau", 0.0),
            header=previous.get("header"),
        )
        return record
    if run_dir.exists() and not is_previous_output(run_dir, RUN_COMMAND, RUN_OUTPUTS):
        raise OutputDirError(f"{run_dir} holds files the toy study did not write; move them away or choose another --out")
    claim_output_dir(run_dir, RUN_COMMAND, RUN_OUTPUTS, overwrite=True)  # an interrupted run: start it over
    run = toy_run_for(name, estimator, seed, views, args, data, rollouts_per_prompt, epistemic_tau, header)
    print(
        f"[study] {name}: {estimator}, seed {seed}, views {list(views)}, {run.prompts_per_step} prompts x "
        f"{run.rollouts_per_prompt} rollouts, epistemic_tau {epistemic_tau:g}, {args.steps} steps",
        flush=True,
    )
    result = run_main_ppo(run.overrides(), run_dir, timeout_s=args.timeout)
    if result.returncode != 0:
        raise RuntimeError(f"run {name} failed (exit {result.returncode}); log {result.log_file}:\n{result.log_tail(3000)}")
    record = summarize_run(name, estimator, seed, views, run_dir, result.metrics)
    record.update(
        seconds=round(result.seconds, 1), rollouts_per_prompt=run.rollouts_per_prompt, epistemic_tau=epistemic_tau, header=header
    )
    done.write_text(json.dumps(record, indent=1))
    print(
        f"[study] {name}: acc {record['val_acc_before']:.3f} -> {record['val_acc_after']:.3f}, "
        f"wrong+ {record['wrong_positive_top20']:.3f}, {result.seconds:.0f}s",
        flush=True,
    )
    return record


def _val_accuracy(metrics: dict) -> float:
    keys = [k for k in metrics if k.startswith(VAL_KEY_PREFIX) and k.endswith("/mean@1")]
    if len(keys) != 1:
        raise KeyError(f"expected one {VAL_KEY_PREFIX}*/mean@1 metric, found {keys}")
    return float(metrics[keys[0]])


def summarize_run(name, estimator, seed, views, run_dir: Path, metrics: dict[int, dict]) -> dict:
    """The numbers the study reports for one run, from verl's per-step metrics and the rollout dumps."""
    train_steps = sorted(s for s in metrics if s >= 1 and "critic/score/mean" in metrics[s])
    last = metrics[max(s for s in metrics if any(k.startswith(VAL_KEY_PREFIX) for k in metrics[s]))]

    def pooled(share_key: str, count_key: str) -> float:
        shares = [(metrics[s][share_key], metrics[s][count_key]) for s in train_steps if count_key in metrics[s]]
        counted = sum(c for _, c in shares)
        return sum(v * c for v, c in shares) / counted if counted else float("nan")

    def mean_of(key: str, steps: list[int] = train_steps) -> float:
        values = [metrics[s][key] for s in steps if key in metrics[s]]  # a step without it (NaN) does not count
        return statistics.fmean(values) if values else float("nan")

    last_steps = train_steps[-LAST_STEPS:]

    record = {
        "name": name,
        "estimator": estimator,
        "seed": seed,
        "views": list(views),
        "steps": len(train_steps),
        "val_acc_before": _val_accuracy(metrics[0]),
        "val_acc_after": _val_accuracy(last),
        "train_reward_first": metrics[train_steps[0]]["critic/score/mean"],
        "train_reward_last5": mean_of("critic/score/mean", last_steps),
        "wrong_positive_top20": pooled(credit_metric_name(TOP_K), credit_tokens_metric_name(TOP_K)),
        "wrong_rollout_rate": mean_of("credit/wrong_rollout_rate"),
        "groups_without_signal": mean_of("grpo/groups_without_signal"),
        "gate_open_rate": mean_of("avsd/gate_open_rate"),
        "gate_mean": mean_of("avsd/gate_mean"),
        "sign_conflict_rate": mean_of("avsd/sign_conflict_rate"),
        "arithmetic_sign_flips": sum(metrics[s].get("avsd/arithmetic_sign_flips", 0.0) for s in train_steps),
        # epistemic verbalization at the end of training: each step's rate pools its rollouts
        "epistemic_rate": mean_of("epistemic/markers_per_1k_tokens", last_steps),
        "epistemic_rate_correct": mean_of("epistemic/markers_per_1k_tokens_correct", last_steps),
        "epistemic_rate_wrong": mean_of("epistemic/markers_per_1k_tokens_wrong", last_steps),
        "response_length_first": mean_of("epistemic/response_length_mean", train_steps[:1]),
        "response_length": mean_of("epistemic/response_length_mean", last_steps),
        # sibling view: share of the wrong rollouts that had a correct sibling to read
        "sibling_wrong_view_rate": mean_of("sibling/wrong_view_rate"),
        "step_seconds": mean_of("timing_s/step"),
        "teacher_seconds": mean_of("timing_s/teacher_views"),
    }
    if estimator != "grpo":
        record["paired"] = paired_credit(run_dir / "rollouts", views)
    return record


def paired_credit(dump_dir: Path, views: tuple[str, ...], k: int = 20) -> dict:
    """Every teacher estimator recomputed on the same dumped rollouts (the rollouts of this run):
    the pooled positive share of the top-k |advantage| tokens of wrong rollouts, per method, and
    the number of tokens where the arithmetic pool flips the consensus sign."""
    rows = [json.loads(line) for f in sorted(dump_dir.glob("rollouts_step*.jsonl")) for line in f.read_text().splitlines()]
    rows = [r for r in rows if not r["is_padding"]]
    # float32, as the trainer computed them: in float64 a near-zero consensus can change sign
    inputs = dump_tensors(rows, dtype=torch.float32)  # [B, T], [B, M, T], [B, M], [B, T]
    response_mask = inputs["response_mask"]
    reward = torch.tensor([r["reward"] for r in rows], dtype=torch.float32)  # [B]
    config = {"avsd": {"views": list(views), "opsd_view": views[0]}}
    out = {"rollouts": len(rows), "wrong_rollouts": int((reward < 1.0).sum())}
    # A rollout with every view masked (a `sibling` view alone, its group without another correct
    # rollout) gets advantage 0: its top-k tokens count as "not positive" and would flatter the
    # share, so the sibling comparison also reports it over the rollouts with a view.
    viewed = inputs["view_mask"].any(dim=1)  # [B]
    out["wrong_rollouts_viewed"] = int((viewed & (reward < 1.0)).sum())
    for method in TEACHER_METHODS:
        adv, signals = token_advantages(method, config, **inputs)
        out[f"{method}_wrong_positive_top{k}"] = wrong_rollout_positive_topk(adv, response_mask, reward, 1.0, k)[0]
        if method == "avsd":
            out[f"avsd_wrong_positive_top{k}_viewed"] = wrong_rollout_positive_topk(
                adv[viewed], response_mask[viewed], reward[viewed], 1.0, k
            )[0]
            mask = signals.token_mask
            flips = torch.sign(signals.arithmetic) != torch.sign(signals.consensus)
            out["arithmetic_sign_flips"] = int((flips & mask).sum())
            out["tokens"] = int(mask.sum())
            out["gate_open_rate"] = float(((signals.gate >= 0.5) & mask).sum() / mask.sum())
            out["sign_conflict_rate"] = float((signals.sign_conflict & mask).sum() / mask.sum())
    return out


# ---------------------------------------------------------------------------------------------
# The study


def aggregate(records: list[dict], key: str) -> dict:
    values = [r[key] for r in records if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


PAIRED_SIGNALS = ("arithmetic_sign_flips", "tokens", "gate_open_rate", "sign_conflict_rate")
REPORTED = (
    "val_acc_before",
    "val_acc_after",
    "train_reward_first",
    "train_reward_last5",
    "wrong_positive_top20",
    "groups_without_signal",
    "gate_open_rate",
    "sign_conflict_rate",
    "arithmetic_sign_flips",
    "epistemic_rate",
    "epistemic_rate_correct",
    "epistemic_rate_wrong",
    "response_length_first",
    "response_length",
    "sibling_wrong_view_rate",
    "step_seconds",
)


def write_report(out: Path, groups: dict[str, list[dict]], args, seconds: float) -> None:
    table = {name: {key: aggregate(records, key) for key in REPORTED} for name, records in groups.items()}
    paired = {}
    for name, records in groups.items():
        pairs = [r["paired"] for r in records if "paired" in r]
        if pairs:
            keys = [k for k in pairs[0] if k.endswith("_top20") or k in PAIRED_SIGNALS]
            paired[name] = {k: aggregate(pairs, k) for k in keys}
    result = {
        "settings": {
            "model": str(args.model),
            "steps": args.steps,
            "rollouts_per_step": args.rollouts_per_step,
            "grpo_group": GROUP_SIZE,
            "lr": args.lr,
            "seeds": args.seeds,
            "baseline_seeds": args.baseline_seeds if args.baseline_seeds is not None else args.seeds,
            "n_val": args.n_val,
            "epistemic_window_steps": LAST_STEPS,
            "epistemic_markers": "algorithm.avsd.epistemic_markers (default list, verl_avsd/config/avsd.yaml)",
            "torch": torch.__version__,
        },
        "seconds": round(seconds),
        "methods": table,
        "paired_credit": paired,
        "runs": {name: records for name, records in groups.items()},
    }
    (out / "toy_study.json").write_text(json.dumps(result, indent=1))
    plot_bars(out, result)

    def fmt(cell, pct=False, digits=3):
        if cell["mean"] is None:
            return "-"
        if pct:
            return f"{100 * cell['mean']:.1f}% ± {100 * cell['std']:.1f}"
        return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"

    lines = [
        "# Toy-scale study: AVSD vs OPSD, ablations and GRPO (CPU, real verl trainer)",
        "",
        f"{args.steps} steps x {args.rollouts_per_step} rollouts per step (GRPO: groups of {GROUP_SIZE}), lr {args.lr}, "
        f"seeds {args.seeds}, held-out accuracy = greedy on {args.n_val} `val` problems (verl validation). "
        f"Mean ± std over seeds. Runs took {seconds / 60:.0f} min in all."
        + (
            f" Seeds of {', '.join(m for m in groups if m in METHODS and m != 'avsd')}: {args.baseline_seeds}."
            if args.baseline_seeds is not None
            else ""
        ),
        "",
        "| run | acc before | acc after | train reward (last 5) | wrong-rollout top-20 positive | "
        "GRPO groups w/o signal | gate open | sign conflict | arith. sign flips | s/step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in table.items():
        lines.append(
            f"| {name} | {fmt(row['val_acc_before'], True)} | {fmt(row['val_acc_after'], True)} | "
            f"{fmt(row['train_reward_last5'], True)} | {fmt(row['wrong_positive_top20'], True)} | "
            f"{fmt(row['groups_without_signal'], True)} | {fmt(row['gate_open_rate'], True)} | "
            # sign conflict recomputed from the dumps (the current definition), else as logged
            f"{fmt(paired.get(name, row)['sign_conflict_rate'], True)} | {fmt(row['arithmetic_sign_flips'], digits=0)} | "
            f"{fmt(row['step_seconds'], digits=1)} |"
        )
    lines += [
        "",
        "Paired credit: every teacher estimator recomputed on the same rollouts (those of the run named in the row):",
        "share of positive advantage among the top-20 |advantage| tokens of wrong rollouts (paper: OPSD 12.3%, AVSD 2.9%).",
        "",
        "| rollouts of | " + " | ".join(TEACHER_METHODS) + " | arith. sign flips / tokens | gate open | sign conflict |",
        "| --- | " + " | ".join("---" for _ in TEACHER_METHODS) + " | --- | --- | --- |",
    ]
    for name, row in paired.items():
        cells = [fmt(row[f"{m}_wrong_positive_top20"], True) for m in TEACHER_METHODS]
        flips = f"{row['arithmetic_sign_flips']['mean']:.0f} / {row['tokens']['mean']:.0f}"
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {flips} | {fmt(row['gate_open_rate'], True)} | {fmt(row['sign_conflict_rate'], True)} |"
        )
    lines += epistemic_lines(table, groups, fmt) + sibling_lines(table, groups, fmt)
    lines += ["", "Plots: " + ", ".join(p.name for p in sorted(out.glob("*.png"))), ""]
    (out / "toy_study.md").write_text("\n".join(lines))


def _first(records: list[dict], key: str, default):
    return records[0].get(key, default) if records else default


def epistemic_lines(table: dict, groups: dict[str, list[dict]], fmt) -> list[str]:
    """The `epistemic/*` table: every run, its epistemic_tau next to its marker rates."""
    lines = [
        "",
        f"Epistemic verbalization (`epistemic/*`, the default `algorithm.avsd.epistemic_markers`: wait, hmm, perhaps, "
        f"let me check, ...): markers per 1k response tokens and response tokens per rollout, each the mean of its "
        f"per-step values over the last {LAST_STEPS} training steps (a step's rate pools its rollouts; a step with no "
        f"correct or no wrong rollout does not count for that column); response length also at step 1.",
        "",
        "| run | epistemic_tau | markers / 1k tokens | on correct | on wrong | response tokens, step 1 | "
        f"response tokens, last {LAST_STEPS} |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in table.items():
        lines.append(
            f"| {name} | {_first(groups[name], 'epistemic_tau', 0.0):g} | {fmt(row['epistemic_rate'], digits=2)} | "
            f"{fmt(row['epistemic_rate_correct'], digits=2)} | {fmt(row['epistemic_rate_wrong'], digits=2)} | "
            f"{fmt(row['response_length_first'], digits=1)} | {fmt(row['response_length'], digits=1)} |"
        )
    return lines


def sibling_lines(table: dict, groups: dict[str, list[dict]], fmt) -> list[str]:
    """The sibling-view table: the runs at rollout.n > 1 (the sibling block and GRPO, same budget)."""
    names = [n for n in table if _first(groups[n], "rollouts_per_prompt", 1) > 1]
    if not any("sibling" in _first(groups[n], "views", []) for n in names):
        return []
    lines = [
        "",
        f"Sibling view vs the fixed views, all at rollout.n = {GROUP_SIZE} (same rollouts per step as above, "
        f"{GROUP_SIZE} per prompt; GRPO for reference). `sibling` = a correct rollout of the same prompt, "
        "masked when the group has none; credit = positive share of the top-20 |advantage| tokens of wrong "
        "rollouts (lower is better), on each run's own rollouts: as logged, and recomputed from the dumps over "
        "the wrong rollouts that had at least one view (a rollout with every view masked gets advantage 0, "
        "whose tokens count as not positive).",
        "",
        "| run | views | acc before | acc after | train reward (last 5) | wrong-rollout top-20 positive | "
        "same, wrong rollouts with a view | wrong rollouts with a sibling | gate open |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        row = table[name]
        views = ", ".join(_first(groups[name], "views", [])) if groups[name][0]["estimator"] != "grpo" else "-"
        if _first(groups[name], "header", None):
            views += f" (header: Reference ({_first(groups[name], 'header', None)}))"
        viewed = aggregate([r["paired"] for r in groups[name] if "paired" in r], "avsd_wrong_positive_top20_viewed")
        lines.append(
            f"| {name} | {views} | {fmt(row['val_acc_before'], True)} | {fmt(row['val_acc_after'], True)} | "
            f"{fmt(row['train_reward_last5'], True)} | {fmt(row['wrong_positive_top20'], True)} | {fmt(viewed, True)} | "
            f"{fmt(row['sibling_wrong_view_rate'], True)} | {fmt(row['gate_open_rate'], True)} |"
        )
    return lines


def mean_curves(out: Path, groups: dict[str, list[dict]]) -> dict[str, dict[int, dict]]:
    """Per-step metrics averaged over a group's seeds, for the plots."""
    curves = {}
    for name, records in groups.items():
        per_seed = [read_metrics_file(Path(out) / "runs" / r["name"] / "verl_metrics.jsonl") for r in records]
        steps = sorted(set.intersection(*(set(m) for m in per_seed)))
        curves[name] = {
            s: {
                k: statistics.fmean(m[s][k] for m in per_seed)
                for k in per_seed[0][s]
                if all(k in m[s] and isinstance(m[s][k], (int, float)) for m in per_seed)
            }
            for s in steps
            if s >= 1
        }
    return curves


def plot_bars(out: Path, result: dict) -> None:
    """study_accuracy.png (held-out accuracy after training, mean ± std over seeds, the start as a
    line) and study_credit_bars.png (wrong-rollout top-20 positive share on own rollouts)."""
    import matplotlib.pyplot as plt

    table = result["methods"]
    names = list(table)
    for filename, key, title in (
        ("study_accuracy.png", "val_acc_after", "Held-out accuracy after training (greedy, mean ± std over seeds)"),
        ("study_credit_bars.png", "wrong_positive_top20", "Wrong rollouts: positive share of the top-20 |advantage| tokens"),
    ):
        cells = [table[n][key] for n in names]
        fig, ax = plt.subplots(figsize=(7, 3.6))
        ax.bar(names, [c["mean"] or 0.0 for c in cells], yerr=[c["std"] or 0.0 for c in cells], capsize=4, color="#4a7ab0")
        if key == "val_acc_after":
            ax.axhline(table[names[0]]["val_acc_before"]["mean"], color="black", linestyle="--", label="before training")
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / filename, dpi=110)
        plt.close(fig)


STUDY_PLOTS = [
    ("study_reward.png", "Train reward (mean over seeds)", [("critic/score/mean", "reward")]),
    ("study_credit.png", "Wrong-rollout top-20 positive share", [(credit_metric_name(TOP_K), "positive share")]),
    ("study_gate.png", "AVSD gate open rate", [("avsd/gate_open_rate", "open rate")]),
]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/results/toy_study", type=lambda x: Path(x).resolve())
    p.add_argument("--model", default=TOY_MODEL_DIR, type=lambda x: Path(x).resolve())
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument(
        "--baseline-seeds",
        nargs="+",
        type=int,
        default=None,
        help="seeds of the methods other than avsd (default: --seeds); the AVSD rows keep --seeds",
    )
    p.add_argument("--sweep-seeds", nargs="*", type=int, default=None, help="seeds of the view sweep (default: the first seed)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rollouts-per-step", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-5, help="one for all methods; at 2e-4 GRPO collapsed (held-out 58%% -> 5%%)")
    p.add_argument("--n-val", type=int, default=128)
    p.add_argument(
        "--no-sweep", action="store_true", help="the methods only: no view-count sweep, epistemic_tau row or sibling block"
    )
    p.add_argument(
        "--epistemic-tau", type=float, default=0.1, help="the AVSD row with algorithm.avsd.epistemic_tau on (0: no such row)"
    )
    p.add_argument("--no-sibling", action="store_true", help="no sibling-view block")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    p.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty --out the study did not make (deletes nothing there)"
    )
    p.add_argument("--parallel", type=int, default=2, help="runs at once (default 2, one per core)")
    return p.parse_args(argv)


def method_seeds(method: str, args) -> list[int]:
    return args.seeds if method == "avsd" or args.baseline_seeds is None else args.baseline_seeds


def study_plan(args) -> list[tuple[str, str, tuple]]:
    """(group, run name, (estimator, seed, views, run_one keywords)) of every run, in the order they
    start. A run in two groups is trained once: the M3 sweep point and the plain AVSD row are one run."""
    plan = [(m, f"{m}_s{seed}", (m, seed, VIEW_SWEEP["M3"], {})) for m in args.methods for seed in method_seeds(m, args)]
    if args.no_sweep:
        return plan
    if args.epistemic_tau > 0:
        tau = args.epistemic_tau
        plan += [
            (f"avsd tau={tau:g}", f"avsd_tau{tau:g}_s{seed}", ("avsd", seed, VIEW_SWEEP["M3"], {"epistemic_tau": tau}))
            for seed in args.seeds
        ]
    if not args.no_sibling:
        for label, (views, header) in SIBLING_SWEEP.items():
            extra = {"rollouts_per_prompt": GROUP_SIZE, **({"header": header} if header else {})}
            name = label.replace("+", "_").replace(" ", "_")
            plan += [
                (f"avsd n={GROUP_SIZE} {label}", f"avsd_n{GROUP_SIZE}_{name}_s{seed}", ("avsd", seed, views, extra))
                for seed in args.seeds
            ]
    sweep_seeds = args.sweep_seeds if args.sweep_seeds is not None else args.seeds[:1]
    for label, views in VIEW_SWEEP.items():
        for seed in sweep_seeds:
            name = f"avsd_s{seed}" if label == "M3" else f"avsd_{label}_s{seed}"
            plan.append((f"avsd {label}", name, ("avsd", seed, views, {})))
    return plan


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not (args.model / "config.json").exists():
        raise SystemExit(f"no model at {args.model}: build it with `python -m verl_avsd.toy.warmup --out {args.model}`")
    try:  # absolute (parse_args): the runs execute in their own folders; a previous study resumes
        out = claim_output_dir(args.out, STUDY_COMMAND, STUDY_OUTPUTS, overwrite=args.overwrite, keep=True)
    except OutputDirError as error:
        raise SystemExit(f"toy_study: error: {error}") from None
    data = toy_data(str(out / "data"), n_train=args.steps * args.rollouts_per_step, n_val=args.n_val, seed=0)
    start = time.monotonic()
    plan = study_plan(args)
    unique = {name: spec for _, name, spec in plan}
    # Runs are independent processes (each its own Ray instance); two at a time keep both cores
    # busy through the phases where one run waits (Ray start-up, weight sync, validation).
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {pool.submit(run_one, name, *spec[:3], args, data, **spec[3]): name for name, spec in unique.items()}
        records = {}
        for future in as_completed(futures):
            if future.exception() is not None:  # stop at the first failed run, start no other
                for pending in futures:
                    pending.cancel()
                if isinstance(future.exception(), OutputDirError):  # a folder it will not touch: say so, no traceback
                    raise SystemExit(f"toy_study: error: {future.exception()}")
                raise future.exception()
            records[futures[future]] = future.result()
    groups: dict[str, list[dict]] = {}
    for group, name, _ in plan:
        groups.setdefault(group, []).append(records[name])
    # wall time of all runs, including those finished by an earlier, interrupted invocation
    seconds = sum(r.get("seconds", 0.0) for records in groups.values() for r in records)
    print(f"[study] {len(groups)} groups in {time.monotonic() - start:.0f}s (runs: {seconds:.0f}s in all)", flush=True)
    # curves of the five methods (the sweep has one seed), smoothed over 8 steps: one step is 16 rollouts
    curves = {name: c for name, c in mean_curves(out, groups).items() if name in METHODS}
    plot_metrics(curves, out, plots=STUDY_PLOTS, smooth=8)
    write_report(out, groups, args, seconds)
    print((out / "toy_study.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
