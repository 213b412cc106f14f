"""Benchmark: a whole AVSD training step against OPSD's (and GRPO's), through the real trainer.

AVSD's only extra work over single-view self-distillation (OPSD) is scoring each rollout under
M views instead of one. This script trains each method for a few steps on the CPU demo setup
(`python -m verl.trainer.main_ppo`, `trainer.v1.trainer_mode=avsd_sync`, CPU platform, `hf`
rollout, the toy task; `verl_avsd.toy_run`) and compares verl's own per-step timers:

    timing_s/step            the whole step (target: AVSD <= 1.05x OPSD)
    timing_s/teacher_views   the teacher scoring the rollouts under the views
    timing_s/gen             rollout generation
    timing_s/update_actor    the policy-gradient update
    timing_s/adv             the advantage step (teacher + estimator + metrics)

Methods (all with the same rollouts per step):
    avsd      AVSD with M=3 views [full, partial, answer]
    opsd      OPSD: the teacher reads the full solution only (views=[full], so it scores one view)
    grpo      verl's GRPO, prompts/4 prompts x 4 rollouts (no teacher)
    avsd_m1   AVSD with views [full] (M=1: the same computation as OPSD)
    avsd_m2   AVSD with views [full, partial]

Teacher placement (`algorithm.avsd.teacher_placement`, --placements): `actor` scores the views
after generation on the actor workers (the packed prefill); `rollout` scores each sample's views
on the rollout server as soon as its generation ends (workers/rollout_teacher.py). Each teacher
method runs once per placement (named `avsd`, `opsd` for actor and `avsd@rollout`,
`opsd@rollout`), GRPO once (it has no teacher); when --placements names `rollout`, every teacher
run uses `teacher: current` (the rollout servers' own weights, and the teacher the `hf` server
streams while generating), so the placements compare like with like (with `actor` alone, the
default teacher, `ref`). Per placement
the summary gives AVSD/OPSD, AVSD/GRPO and OPSD/GRPO step ratios, and per method the blocking
teacher time (`avsd/teacher_blocking_s`: what the step waited for the teacher after the last
generation ended) of `rollout` against `actor` (target: at most 1/4).

Runs go one after another (never in parallel: they would time each other), each in its own
directory; the first --warmup-steps steps of each run are dropped (compilation, allocator and
Ray warm-up) and the rest summarized by their median.

    python bench/step_overhead.py                                  # avsd, opsd, grpo; 8 steps x 16 prompts
    python bench/step_overhead.py --placements actor,rollout       # each teacher method under both placements
    python bench/step_overhead.py --methods avsd,opsd,avsd_m1,avsd_m2
    python bench/step_overhead.py --steps 2 --prompts-per-step 4 --methods avsd,opsd --model random  # smoke test

The model is the warmed-up toy model shipped in verl_avsd/assets/toy_model, or, where it is
missing (or with --model random), a random 2-layer model built in a temp dir; the JSON records
which. On a GPU the same script needs the full verl stack (verl, ray, vLLM), which the project's
GPU device machine does not have. Writes --out/step_overhead_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from verl_avsd.estimator_facts import needs_teacher
from verl_avsd.toy import TOY_MODEL_DIR
from verl_avsd.toy_run import (
    GROUP_SIZE,
    ToyRun,
    random_toy_model,
    rollout_budget,
    run_main_ppo,
    toy_data,
)

REPO = Path(__file__).resolve().parents[1]

# name -> (algorithm.adv_estimator, algorithm.avsd.views)
METHODS = {
    "avsd": ("avsd", ("full", "partial", "answer")),
    "opsd": ("opsd", ("full",)),
    "grpo": ("grpo", ("full",)),
    "avsd_m1": ("avsd", ("full",)),
    "avsd_m2": ("avsd", ("full", "partial")),
}
TIMING_KEYS = ("timing_s/step", "timing_s/teacher_views", "timing_s/gen", "timing_s/update_actor", "timing_s/adv")
TEACHER_TOKEN_KEYS = ("avsd/teacher_tokens", "avsd/teacher_fed_fraction")  # fed: after shared prefixes ran once
PLACEMENT_KEYS = ("avsd/teacher_blocking_s", "avsd/teacher_hidden_fraction")  # verl_avsd/teacher_placement.py
PLACEMENTS = ("actor", "rollout")
TARGET_STEP_RATIO = 1.05  # AVSD step / OPSD step
TARGET_BLOCKING_RATIO = 0.25  # blocking teacher time, rollout placement / actor placement


def run_name(method: str, placement: str) -> str:
    """`avsd` (actor placement, as before placements existed) or `avsd@rollout`."""
    return method if placement == "actor" else f"{method}@{placement}"


def split_name(name: str) -> tuple[str, str]:
    method, _, placement = name.partition("@")
    return method, placement or "actor"


def summarize(metrics_by_method: dict[str, dict[int, dict]], warmup_steps: int) -> dict:
    """Per method the median of each timer over the steps after the first `warmup_steps`
    (None where the method has no such timer, e.g. GRPO's teacher), and each method's ratios to
    OPSD for the step and the teacher."""
    methods = {}
    for name, steps in metrics_by_method.items():
        kept = [steps[s] for s in sorted(steps) if "timing_s/step" in steps[s]][warmup_steps:]
        medians = {}
        keys = TIMING_KEYS + TEACHER_TOKEN_KEYS + (PLACEMENT_KEYS if any(k in m for m in kept for k in PLACEMENT_KEYS) else ())
        for key in keys:
            values = [m[key] for m in kept if key in m]
            medians[key] = statistics.median(values) if values else None
        methods[name] = {"steps_measured": len(kept), **medians}

    ratios = {}  # each run against OPSD under the same placement (GRPO: against actor-placed OPSD)
    for name, timers in methods.items():
        placement = split_name(name)[1]
        baseline = run_name("opsd", placement)
        opsd = methods.get(baseline)
        if opsd is None or name == baseline:
            continue
        ratios[f"{name}/{baseline}"] = {
            "step": ratio(timers["timing_s/step"], opsd["timing_s/step"]),
            "teacher_views": ratio(timers["timing_s/teacher_views"], opsd["timing_s/teacher_views"]),
        }
    summary = {"methods": methods, "ratios": ratios}
    grpo = methods.get("grpo")
    if grpo is not None:  # the teacher methods against GRPO (no teacher), per placement
        summary["grpo_ratios"] = {
            f"{name}/grpo": ratio(timers["timing_s/step"], grpo["timing_s/step"])
            for name, timers in methods.items()
            if name != "grpo"
        }
    placements = {}  # rollout placement against actor, per teacher method
    for name, timers in methods.items():
        method, placement = split_name(name)
        actor = methods.get(method)
        if placement == "actor" or actor is None:
            continue
        blocking = ratio(timers.get("avsd/teacher_blocking_s"), actor.get("avsd/teacher_blocking_s"))
        placements[f"{name}/{method}"] = {
            "step": ratio(timers["timing_s/step"], actor["timing_s/step"]),
            "teacher_blocking": blocking,
            "blocking_within_target": None if blocking is None else blocking <= TARGET_BLOCKING_RATIO,
        }
    if placements:
        summary["placements"] = placements
    avsd_step = ratios.get("avsd/opsd", {}).get("step")
    summary["avsd_step_within_target"] = None if avsd_step is None else avsd_step <= TARGET_STEP_RATIO
    return summary


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def choose_model(requested: str, scratch: Path) -> tuple[str, str]:
    """(model folder, what it is) for --model shipped|random|PATH."""
    if requested == "shipped" and (TOY_MODEL_DIR / "config.json").exists():
        return str(TOY_MODEL_DIR), "shipped warmed-up toy model"
    if requested in ("shipped", "random"):
        reason = "requested" if requested == "random" else "the shipped model is missing"
        return random_toy_model(str(scratch / "random_model")), f"random tiny model ({reason})"
    return requested, "given path"


def markdown(report: dict) -> str:
    """One line: per method the median step (and teacher) seconds, then the ratios to OPSD."""
    parts = []
    for name, timers in report["summary"]["methods"].items():
        step, teacher = timers["timing_s/step"], timers["timing_s/teacher_views"]
        text = f"{name} {step:.2f} s/step" if step is not None else f"{name} no step measured"
        fed = timers.get("avsd/teacher_fed_fraction")
        fed_text = f", {fed:.0%} of its tokens fed" if fed is not None else ""
        parts.append(text + (f" (teacher {teacher:.2f} s{fed_text})" if teacher is not None else ""))
    for pair, values in report["summary"]["ratios"].items():
        step, teacher = values["step"], values["teacher_views"]
        text = f"{pair} step {step:.2f}x" if step is not None else f"{pair} step n/a"
        parts.append(text + (f", teacher {teacher:.2f}x" if teacher is not None else ""))
    for pair, step in report["summary"].get("grpo_ratios", {}).items() if report["summary"].get("placements") else ():
        parts.append(f"{pair} step {step:.2f}x" if step is not None else f"{pair} step n/a")
    for pair, values in report["summary"].get("placements", {}).items():
        blocking = values["teacher_blocking"]
        name = pair.split("/")[0]
        hidden = report["summary"]["methods"][name].get("avsd/teacher_hidden_fraction")
        parts.append(
            f"{pair} step {values['step']:.2f}x, blocking teacher "
            + (f"{blocking:.2f}x" if blocking is not None else "n/a")
            + (f" ({hidden:.0%} of teacher time hidden)" if hidden is not None else "")
        )
    config = report["config"]
    return (
        f"step overhead (cpu, {config['model_kind']}, {config['prompts_per_step']} rollouts/step, "
        f"median of steps {config['warmup_steps'] + 1}..{config['steps']}): " + "; ".join(parts)
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="avsd,opsd,grpo", help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--steps", type=int, default=8, help="training steps per method (default 8)")
    parser.add_argument("--warmup-steps", type=int, default=1, help="first steps left out of the medians (default 1)")
    parser.add_argument("--prompts-per-step", type=int, default=16, help="rollouts per step (GRPO: /4 prompts x 4)")
    parser.add_argument(
        "--placements", default="actor", help="comma-separated teacher placements, from actor, rollout (default actor)"
    )
    parser.add_argument("--model", default="shipped", help="shipped (default), random, or a model folder")
    parser.add_argument("--runs-dir", type=Path, help="where the runs go (default: a temp dir, removed)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per run before it is stopped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)

    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    for name in methods:  # a bad budget fails before any run starts
        try:
            rollout_budget(METHODS[name][0], args.prompts_per_step)
        except ValueError as e:
            raise SystemExit(f"--prompts-per-step: {e}") from None
    placements = args.placements.split(",")
    if not placements or any(p not in PLACEMENTS for p in placements):
        raise SystemExit(f"--placements {args.placements!r}: a comma-separated list from {', '.join(PLACEMENTS)}")
    if args.steps <= args.warmup_steps:
        raise SystemExit("--steps must be larger than --warmup-steps")

    with tempfile.TemporaryDirectory(prefix="step_overhead_") as scratch:
        runs_dir = args.runs_dir or Path(scratch) / "runs"
        model_dir, model_kind = choose_model(args.model, Path(scratch))
        data = toy_data(str(runs_dir / "data"), n_train=max(256, args.prompts_per_step * args.steps), seed=args.seed)
        metrics_by_method, wall = {}, {}
        runs = [  # a method without a teacher runs once; placement is about the teacher
            (method, placement)
            for method in methods
            for placement in (placements if needs_teacher(METHODS[method][0]) else ["actor"])
        ]
        for method, placement in runs:  # one at a time: parallel runs would time each other
            estimator, views = METHODS[method]
            name = run_name(method, placement)
            run = ToyRun(
                model_dir=model_dir,
                train_file=data["train"],
                val_file=data["val"],
                run_dir=str(runs_dir / name),
                estimator=estimator,
                steps=args.steps,
                **rollout_budget(estimator, args.prompts_per_step),
                views=views,
                seed=args.seed,
                teacher_placement=placement,
                teacher="current" if placements != ["actor"] else None,  # the rollout placement's teacher, for both
            )
            print(
                f"[step_overhead] {name}: {estimator}, views {list(views)}, {placement} placement, {args.steps} steps ...",
                flush=True,
            )
            result = run_main_ppo(run.overrides(), run.run_dir, timeout_s=args.timeout)
            if result.returncode != 0:
                print(result.log_tail(4000), file=sys.stderr)
                raise SystemExit(f"{name}: main_ppo failed (exit {result.returncode}); log {result.log_file}")
            metrics_by_method[name], wall[name] = result.metrics, result.seconds
            times = [m["timing_s/step"] for _, m in sorted(result.metrics.items()) if "timing_s/step" in m]
            print(f"[step_overhead] {name}: {result.seconds:.0f} s in all; timing_s/step {times}", flush=True)

    report = {
        "summary": summarize(metrics_by_method, args.warmup_steps),
        "config": {
            "methods": {name: {"estimator": METHODS[name][0], "views": list(METHODS[name][1])} for name in methods},
            "placements": placements,
            "teacher": "current" if len(placements) > 1 or placements != ["actor"] else "ref (the default)",
            "steps": args.steps,
            "warmup_steps": args.warmup_steps,
            "prompts_per_step": args.prompts_per_step,
            "grpo_group": GROUP_SIZE,
            "model": model_dir,
            "model_kind": model_kind,
            "seed": args.seed,
        },
        "versions": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
        },
        "run_seconds": wall,  # each run's wall clock, Ray and worker start-up included
        "per_step": {  # every step's timers, for a second look at the spread
            name: {step: {k: m[k] for k in TIMING_KEYS + PLACEMENT_KEYS if k in m} for step, m in sorted(steps.items())}
            for name, steps in metrics_by_method.items()
        },
    }
    report["line"] = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_overhead_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "step_overhead_cpu.md").write_text(report["line"] + "\n")
    print(report["line"], flush=True)
    return report


if __name__ == "__main__":
    main()
