"""`verl-avsd demo` (what `make demo` runs): a real AVSD training run on the CPU.

The tiny warmed-up model shipped in `verl_avsd/assets/toy_model` trains on the toy arithmetic
task (three views per problem: the worked solution, its first half, the answer) through verl's
own trainer, `python -m verl.trainer.main_ppo`, with the CPU platform and the `hf` rollout.
Everything is local: no model or data is downloaded.

Writes to --output DIR:
    metrics.jsonl     one JSON object per step: {"step": N, <verl metric>: value, ..., "avsd/...": ...}
    config.yaml       verl's resolved config of the run
    reward.png, gate.png, credit.png
    train.log         verl's own output
    data/             the toy parquet files

DIR must be new or empty; a DIR holding a previous demo run is replaced only with --overwrite
(which removes the demo's own files there and nothing else), and a DIR the demo did not make is
never emptied: with --overwrite the demo writes into it, replacing only files of the same name.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from verl_avsd.config import avsd_config
from verl_avsd.estimator_facts import demo_estimators
from verl_avsd.metrics import credit_metric_name
from verl_avsd.output_dir import OutputDirError, claim_output_dir
from verl_avsd.plots import plot_metrics, run_plots
from verl_avsd.toy import TOY_MODEL_DIR
from verl_avsd.toy_run import ToyRun, random_toy_model, run_main_ppo, toy_data

# what a demo run writes in its folder (verl runs there: hydra's outputs/, checkpoints/ if saved)
DEMO_OUTPUTS = (
    "metrics.jsonl",
    "verl_metrics.jsonl",
    "config.yaml",
    "train.log",
    "reward.png",
    "gate.png",
    "credit.png",
    "data",
    "model",
    "outputs",
    "checkpoints",
    "rollouts",
)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="verl-avsd demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--estimator", choices=demo_estimators(), default="avsd")
    p.add_argument(
        "--teacher-placement", choices=("actor", "rollout"), default="actor",
        help="where the teacher scores the views (algorithm.avsd.teacher_placement): actor = after generation on the "
        "actor workers (default); rollout = on the rollout server as each sample finishes (teacher: current)",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=20, help="training steps (default 20, about 5 minutes on 2 cores)")
    p.add_argument("--prompts-per-step", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="model folder (default: the shipped warmed-up toy model)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a previous demo run in --output (or write into a non-empty folder)"
    )
    p.add_argument("--timeout", type=int, default=1800, help="seconds before the run is stopped")
    return p.parse_args(argv)


def _progress(total: int, credit_top_k: int):
    start = time.monotonic()
    credit = credit_metric_name(credit_top_k)

    def on_step(step: int, m: dict) -> None:
        parts = [f"step {step:3d}/{total}", f"reward {m.get('critic/score/mean', float('nan')):.3f}"]
        if "avsd/gate_mean" in m:
            parts += [f"gate {m['avsd/gate_mean']:.3f}", f"open {m['avsd/gate_open_rate']:.2f}"]
        if credit in m:
            parts.append(f"wrong+ {m[credit]:.3f}")
        parts.append(f"{m.get('timing_s/step', 0):.1f}s/step ({time.monotonic() - start:.0f}s)")
        print("  ".join(parts), flush=True)

    return on_step


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = claim_output_dir(args.output, "verl-avsd demo", DEMO_OUTPUTS, overwrite=args.overwrite)
    except OutputDirError as error:
        print(f"verl-avsd demo: error: {error}", file=sys.stderr)
        return 2

    model_dir = args.model or str(TOY_MODEL_DIR)
    if not (Path(model_dir) / "config.json").exists():
        print(f"[demo] no model at {model_dir}; building an untrained tiny model (rewards will stay near 0)")
        model_dir = random_toy_model(str(out / "model"))
    data = toy_data(str(out / "data"), n_train=max(256, args.prompts_per_step * args.steps), n_val=64, seed=args.seed)
    run = ToyRun(
        model_dir=model_dir,
        train_file=data["train"],
        val_file=data["val"],
        run_dir=str(out),
        estimator=args.estimator,
        teacher_placement=args.teacher_placement,
        steps=args.steps,
        prompts_per_step=args.prompts_per_step,
        lr=args.lr,
        seed=args.seed,
    )
    overrides = run.overrides()

    from verl_avsd.verl_config import compose_verl_config

    config = compose_verl_config(overrides)
    OmegaConf.save(config, out / "config.yaml", resolve=True)
    credit_top_k = avsd_config(config.algorithm).credit_top_k  # the k in the credit metric's name
    print(f"[demo] {args.estimator} on the toy task, {args.steps} steps x {args.prompts_per_step} prompts, model {model_dir}")
    print(f"[demo] verl's output goes to {out / 'train.log'}; starting Ray and the workers takes a minute ...", flush=True)

    result = run_main_ppo(overrides, out, timeout_s=args.timeout, on_step=_progress(args.steps, credit_top_k))
    with open(out / "metrics.jsonl", "w") as f:
        for step in sorted(result.metrics):
            f.write(json.dumps({"step": step, **result.metrics[step]}) + "\n")
    plots = plot_metrics({args.estimator: result.metrics}, out, run_plots(credit_top_k))
    if result.returncode != 0:
        print(result.log_tail(4000), file=sys.stderr)
        print(f"[demo] main_ppo failed (exit {result.returncode}); full log: {out / 'train.log'}", file=sys.stderr)
        return 1
    print(
        f"[demo] done in {result.seconds:.0f}s: {out / 'metrics.jsonl'}, {out / 'config.yaml'}, "
        + ", ".join(p.name for p in plots)
    )
    return 0
