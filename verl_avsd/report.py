"""The `verl-avsd report` command: reads run folders, writes plots, a side-by-side summary and a
token-credit view (USAGE below is its help text).

Reading order: run_files.py (a run folder: metrics file, config.yaml, label), summary.py (the
side-by-side numbers, summary.md/.json), plots.py (the curves), rollout_dumps.py (the dump format:
writer, reader, resume), credit_view.py (one dumped rollout's token credit), then this driver.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from verl_avsd.credit_view import write_credit_view
from verl_avsd.output_dir import claim_output_dir
from verl_avsd.plots import plot_metrics, report_plots
from verl_avsd.rollout_dumps import dump_dir
from verl_avsd.run_files import ReportError, load_run
from verl_avsd.summary import summarize, summarize_runs, summary_markdown, validation_keys

__all__ = ["main", "summarize_runs"]  # summarize_runs: documented as verl_avsd.report.summarize_runs

USAGE = """\
`verl-avsd report RUN_DIR [RUN_DIR ...]`: plots, a side-by-side summary and a token-credit view of runs.

Reads what `verl-avsd demo` (or any verl run with the file logger) leaves in a run directory:
    metrics.jsonl        one object per line, {"step": N, <metric>: value, ...} (the demo's)
    verl_metrics.jsonl   verl's file logger, {"step": N, "data": {...}} per line (read when metrics.jsonl is absent)
    config.yaml          verl's resolved config (algorithm.adv_estimator, actor_rollout_ref.model.path, algorithm.avsd)
    rollouts/rollouts_step{N}.jsonl   optional: every rollout's token signals (+algorithm.avsd.dump_rollouts_dir)

Writes to --output DIR (default RUN_DIR/report for one run, report/ for several):
    reward.png gate.png signals.png credit.png teacher_share.png grpo_signal.png epistemic.png
                                one line per run
    summary.md, summary.json    one column per run: estimator, steps, final/best reward, means of the
                                last N logged values of the key metrics, step time, teacher share,
                                epistemic markers per 1k tokens next to the run's epistemic_tau
    credit_STEP_INDEX.html/.png one dumped rollout, each token coloured by the advantage avsd, opsd,
                                avsd_consensus and avsd_arithmetic give it (blue +, red -), and the gate

--rollout STEP:INDEX picks the rollout: INDEX is its 0-based line in rollouts_stepSTEP.jsonl. The
default is the first wrong rollout (reward < algorithm.avsd.wrong_below) of the last dumped step.
With several runs, every run with dumps gets its own credit view, named credit_LABEL_STEP_INDEX.
"""

# what a report writes: a previous report folder is written over, any other non-empty one needs --overwrite
REPORT_OUTPUTS = ("summary.md", "summary.json", "*.png", "credit_*.html")


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv):
    p = argparse.ArgumentParser(prog="verl-avsd report", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument(
        "--label",
        action="append",
        help="name of a run in plots and tables, once per RUN_DIR in order (default: its dir name)",
    )
    p.add_argument("--output", default=None, help="output folder (default RUN_DIR/report for one run, report/ for several)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --output that holds other files (nothing there is deleted)",
    )
    p.add_argument("--smooth", type=int, default=1, help="plot the moving average over N logged points (default 1: raw)")
    p.add_argument("--last", type=int, default=5, help="summary: mean of each metric's last N logged values (default 5)")
    p.add_argument(
        "--rollout",
        default=None,
        metavar="STEP:INDEX",
        help="the dumped rollout of the credit view (INDEX: 0-based line)",
    )
    p.add_argument("--tokenizer", default=None, help="tokenizer folder for the credit view (default: the run's model path)")
    args = p.parse_args(argv)
    if args.smooth < 1 or args.last < 1:
        p.error("--smooth and --last must be at least 1")
    if args.label is not None and len(args.label) != len(args.run_dirs):
        p.error(f"--label given {len(args.label)} times for {len(args.run_dirs)} run directories; give one per run or none")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_request:  # argparse: --help (0) or a usage error (2)
        return int(exit_request.code or 0)
    try:
        labels = args.label or [None] * len(args.run_dirs)
        runs = [load_run(d, label) for d, label in zip(args.run_dirs, labels)]
        summary = summarize(runs, args.last)
        out = Path(args.output) if args.output else (runs[0].run_dir / "report" if len(runs) == 1 else Path("report"))
        out = claim_output_dir(out, "verl-avsd report", REPORT_OUTPUTS, overwrite=args.overwrite, keep=True)

        curves = {run.label: run.metrics for run in runs}
        top_ks = [run_summary["credit_top_k"] for run_summary in summary["runs"].values()]
        plots = plot_metrics(curves, out, report_plots(validation_keys(runs), top_ks), smooth=args.smooth)

        with_dumps = [run for run in runs if dump_dir(run) is not None]
        if args.rollout is not None and not with_dumps:
            raise ReportError(
                f"--rollout {args.rollout}: no rollout dumps (rollouts/rollouts_step*.jsonl) in "
                + ", ".join(str(run.run_dir) for run in runs)
                + "; train with +algorithm.avsd.dump_rollouts_dir=RUN_DIR/rollouts"
            )
        credit_views = []
        for run in with_dumps:
            prefix = re.sub(r"[^\w.-]+", "_", run.label) + "_" if len(runs) > 1 else ""  # one file name per run
            credit_views.append(write_credit_view(run, out, args.rollout, args.tokenizer, prefix))

        summary["plots"] = [p.name for p in plots]
        summary["credit_views"] = credit_views
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        markdown = summary_markdown(summary)
        (out / "summary.md").write_text(markdown)
    except (ReportError, ValueError, OSError) as error:
        print(f"verl-avsd report: error: {error}", file=sys.stderr)
        return 2

    print(markdown)
    for run in runs:
        if run not in with_dumps:
            print(f"[report] {run.label}: no rollout dumps, so no credit view (+algorithm.avsd.dump_rollouts_dir)")
    for view in credit_views:
        print(f"[report] credit view: {view['about']}")
    written = ["summary.md", "summary.json", *summary["plots"]] + [v[kind] for v in credit_views for kind in ("html", "png")]
    print(f"[report] wrote {out}: " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
