"""`verl-avsd report RUN_DIR [RUN_DIR ...]`: plots, a side-by-side summary and a token-credit view of runs.

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

from __future__ import annotations

import argparse
import html
import json
import math
import re
import statistics
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from verl_avsd.config import default_config
from verl_avsd.output_dir import claim_output_dir
from verl_avsd.plots import TEACHER_SHARE, plot_metrics, plt, report_plots

METRICS_FILES = ("metrics.jsonl", "verl_metrics.jsonl")  # the demo's, then verl's file logger's
VALIDATION_KEY = re.compile(r"^val-core/.+/(acc|reward)/mean@\d+$")  # verl's held-out accuracy
REWARD = "critic/score/mean"
EPISTEMIC_RATE = "epistemic/markers_per_1k_tokens"  # the summary shows the run's epistemic_tau after it

# What the summary averages over each run's last N logged values: (metric, row label)
SUMMARY_METRICS = [
    (REWARD, "reward"),
    ("avsd/gate_mean", "gate mean"),
    ("avsd/gate_open_rate", "gate open rate"),
    ("avsd/residual_mean", "residual mean"),
    ("avsd/alignment_mean", "alignment mean"),
    ("credit/wrong_rollout_positive_top20", "wrong-rollout positive top-20"),
    ("grpo/groups_without_signal", "GRPO groups without signal"),
    (EPISTEMIC_RATE, "epistemic markers per 1k tokens"),
    ("timing_s/step", "step time (s)"),
    (TEACHER_SHARE, "teacher share of step"),
]

CREDIT_METHODS = ("avsd", "opsd", "avsd_consensus", "avsd_arithmetic")
DUMP_FIELDS = ("views", "reward", "response_ids", "response_mask", "student_logp", "view_logq", "view_mask")
POSITIVE_RGB = (33, 102, 172)  # blue: the method raises this token's probability
NEGATIVE_RGB = (178, 24, 43)  # red: it lowers it
GATE_RGB = (27, 120, 55)  # green, intensity = gate in [0, 1]
PNG_TOKENS_PER_LINE = 24
PNG_MAX_TOKENS = 480  # the PNG is an overview; the HTML shows every token
# what a report writes: a previous report folder is written over, any other non-empty one needs --overwrite
REPORT_OUTPUTS = ("summary.md", "summary.json", "*.png", "credit_*.html")


class ReportError(ValueError):
    """A run directory or option the report cannot use; the message names the file, line or field."""


# ---------------------------------------------------------------------------------------------
# Reading a run


@dataclass(eq=False)  # a run is itself, not its values
class Run:
    label: str
    run_dir: Path
    metrics_file: Path
    metrics: dict[int, dict[str, float]]  # {step: {metric: value}}
    config: dict  # verl's resolved config (empty without config.yaml)


def read_metrics_file(path: str | Path, while_writing: bool = False) -> dict[int, dict[str, float]]:
    """{step: {metric: value}} from either line format; several lines of one step merge (verl logs
    the validation before training as its own line). `while_writing`: the file of a run still
    going, read while it polls: missing or empty gives {}, an unfinished last line is skipped
    without a word."""
    path = Path(path)
    if while_writing and not path.exists():
        return {}
    text = path.read_text()
    lines = text.split("\n")
    steps: dict[int, dict[str, float]] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines):  # no newline after it: a run still writing its last line
                if not while_writing:
                    print(f"[report] {where}: skipping the incomplete last line", file=sys.stderr)
                continue
            raise ReportError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise ReportError(f"{where}: expected a JSON object, got {type(record).__name__}")
        step = record.get("step")
        if isinstance(step, float) and step.is_integer():
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, int):
            raise ReportError(f"{where}: field 'step' must be an integer, got {step!r}")
        values = record["data"] if "data" in record else {k: v for k, v in record.items() if k != "step"}
        if not isinstance(values, dict):
            raise ReportError(f"{where}: field 'data' must be an object of metrics, got {type(values).__name__}")
        merged = steps.setdefault(step, {})
        for key, value in values.items():
            # numbers only; null and NaN mean "not measured at this step" (verl's logger writes NaN as null)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                merged[key] = float(value)
    if not steps and not while_writing:
        raise ReportError(f"{path}: no metrics (the file has no lines)")
    return steps


def load_run(run_dir: str | Path, label: str | None = None) -> Run:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run directory {run_dir} does not exist")
    found = [run_dir / name for name in METRICS_FILES if (run_dir / name).is_file()]
    if not found:
        raise ReportError(
            f"{run_dir}: no metrics file; looked for {run_dir / METRICS_FILES[0]} (verl-avsd demo) and "
            f"{run_dir / METRICS_FILES[1]} (verl's file logger, VERL_FILE_LOGGER_PATH)"
        )
    metrics = read_metrics_file(found[0])
    for values in metrics.values():
        if values.get("timing_s/step", 0) > 0 and "timing_s/teacher_views" in values:
            values[TEACHER_SHARE] = values["timing_s/teacher_views"] / values["timing_s/step"]
    config = {}
    # the demo's resolved config.yaml, else hydra's own record of a main_ppo run (launch/ recipes)
    config_file = next((f for f in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml") if f.is_file()), None)
    if config_file is not None:
        try:
            config = OmegaConf.to_container(OmegaConf.load(config_file))
        except Exception as e:  # yaml or omegaconf errors of a hand-edited file
            raise ReportError(f"{config_file}: cannot be read as YAML ({e})") from None
    return Run(label or run_dir.resolve().name, run_dir, found[0], metrics, config if isinstance(config, dict) else {})


def config_value(config: dict, dotted: str, default=None):
    """config["a"]["b"] for "a.b", or default where a key is missing."""
    for key in dotted.split("."):
        if not isinstance(config, dict) or key not in config:
            return default
        config = config[key]
    return config


# ---------------------------------------------------------------------------------------------
# Summary


def _series(metrics: dict[int, dict], key: str) -> list[tuple[int, float]]:
    return [(step, metrics[step][key]) for step in sorted(metrics) if key in metrics[step]]


def _final_and_best(series: list[tuple[int, float]]) -> dict:
    if not series:
        return {"final": None, "final_step": None, "best": None, "best_step": None}
    best_step, best = max(series, key=lambda sv: sv[1])
    return {"final": series[-1][1], "final_step": series[-1][0], "best": best, "best_step": best_step}


def validation_keys(runs: list[Run]) -> list[str]:
    return sorted({k for run in runs for values in run.metrics.values() for k in values if VALIDATION_KEY.match(k)})


def summarize_run(run: Run, last: int = 5) -> dict:
    """One run's numbers; a metric the run never logged is None (shown as n/a), never 0."""
    reward = _final_and_best(_series(run.metrics, REWARD))
    last_means = {}
    for key, _ in SUMMARY_METRICS:
        values = [v for _, v in _series(run.metrics, key)][-last:]
        last_means[key] = statistics.fmean(values) if values else None
    return {
        "run_dir": str(run.run_dir),
        "metrics_file": run.metrics_file.name,
        "estimator": config_value(run.config, "algorithm.adv_estimator"),
        "model": config_value(run.config, "actor_rollout_ref.model.path"),
        # the optional term that keeps exploratory tokens; a config without the key ran the default
        "epistemic_tau": config_value(run.config, "algorithm.avsd.epistemic_tau", default_config().epistemic_tau if run.config else None),
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
    for key, label in SUMMARY_METRICS:
        rows.append((f"{label}, last {n}", [_fmt(r["last_n_mean"][key]) for r in runs.values()]))
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
        lines += [
            f"- [{c['html']}]({c['html']}), [{c['png']}]({c['png']}): {c['about']}" for c in summary["credit_views"]
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Token-credit view of one dumped rollout


def dump_dir(run: Run) -> Path | None:
    """RUN_DIR/rollouts, else the run's algorithm.avsd.dump_rollouts_dir; None if neither exists."""
    configured = config_value(run.config, "algorithm.avsd.dump_rollouts_dir")
    for candidate in [run.run_dir / "rollouts"] + ([run.run_dir / configured] if configured else []):
        if candidate.is_dir() and any(candidate.glob("rollouts_step*.jsonl")):
            return candidate  # a relative dump_rollouts_dir is relative to the run (verl's cwd)
    return None


def dumped_steps(directory: Path) -> dict[int, Path]:
    """{step: rollouts_step{step}.jsonl} in step order."""
    files = {}
    for path in directory.glob("rollouts_step*.jsonl"):
        match = re.fullmatch(r"rollouts_step(\d+)\.jsonl", path.name)
        if match:
            files[int(match.group(1))] = path
    return dict(sorted(files.items()))


def read_dump(path: Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ReportError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
    return rows


def check_dump_row(row: dict, where: str) -> None:
    """The fields the credit view reads, with consistent lengths: M views, T positions."""
    missing = [f for f in DUMP_FIELDS if f not in row]
    if missing:
        raise ReportError(
            f"{where}: missing field(s) {missing} (AvsdTrainer._dump_rollouts writes {list(DUMP_FIELDS)})"
        )
    T, M = len(row["response_mask"]), len(row["views"])
    if len(row["student_logp"]) != T:
        raise ReportError(f"{where}: field 'student_logp' has {len(row['student_logp'])} values, response_mask has {T}")
    if len(row["view_mask"]) != M or len(row["view_logq"]) != M:
        raise ReportError(
            f"{where}: fields 'view_logq' ({len(row['view_logq'])} rows) and 'view_mask' "
            f"({len(row['view_mask'])}) must have one entry per view in 'views' ({M})"
        )
    for m, values in enumerate(row["view_logq"]):
        if len(values) != T:
            raise ReportError(
                f"{where}: field 'view_logq' row {m} ({row['views'][m]}) has {len(values)} values, not {T}"
            )
    last_position = max((t for t, on in enumerate(row["response_mask"]) if on), default=-1)
    if last_position >= len(row["response_ids"]):
        raise ReportError(
            f"{where}: field 'response_ids' has {len(row['response_ids'])} ids, "
            f"but response_mask reaches position {last_position}"
        )


def pick_rollout(directory: Path, spec: str | None, wrong_below: float) -> tuple[int, int, dict, str]:
    """(step, index, row, why this one) for --rollout STEP:INDEX, or the default rollout."""
    files = dumped_steps(directory)
    if spec is None:
        step = max(files)
        rows = read_dump(files[step])
        real = [i for i, r in enumerate(rows) if not r.get("is_padding", False)]
        if not real:
            raise ReportError(f"{files[step]}: no rollouts (every row is padding)")
        wrong = [i for i in real if rows[i].get("reward", math.inf) < wrong_below]
        if wrong:
            why = f"the first wrong rollout (reward < {wrong_below:g}) of the last dumped step"
            return step, wrong[0], rows[wrong[0]], why
        why = f"no wrong rollout (reward < {wrong_below:g}) at the last dumped step: its first rollout"
        return step, real[0], rows[real[0]], why
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", spec)
    if not match:
        raise ReportError(f"--rollout must be STEP:INDEX (e.g. {max(files)}:0), got {spec!r}")
    step, index = int(match.group(1)), int(match.group(2))
    if step not in files:
        raise ReportError(
            f"--rollout {spec}: no dump of step {step} in {directory}; dumped steps: {', '.join(map(str, files))}"
        )
    rows = read_dump(files[step])
    if index >= len(rows):
        raise ReportError(f"--rollout {spec}: {files[step]} has {len(rows)} rollouts, indices 0..{len(rows) - 1}")
    return step, index, rows[index], "chosen with --rollout"


def dump_tensors(rows: list[dict], dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """The estimator inputs of dumped rollouts (`AvsdTrainer._dump_rollouts` rows), right-padded to
    the longest: student_logp [B, T], view_logq [B, M, T] (a dumped None, non-finite, is NaN),
    view_mask [B, M], response_mask [B, T]; keyword arguments of `token_advantages`."""
    T = max(len(r["response_mask"]) for r in rows)

    def pad(values, fill=0.0):
        return list(values) + [fill] * (T - len(values))

    return dict(
        student_logp=torch.tensor([pad(r["student_logp"]) for r in rows], dtype=dtype),
        view_logq=torch.tensor(
            [[pad([math.nan if x is None else x for x in v]) for v in r["view_logq"]] for r in rows], dtype=dtype
        ),
        view_mask=torch.tensor([r["view_mask"] for r in rows], dtype=torch.bool),
        response_mask=torch.tensor([pad(r["response_mask"], 0) for r in rows], dtype=torch.bool),
    )


def credit_advantages(row: dict, avsd_options: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-token advantage [T] of each CREDIT_METHODS estimator on this rollout, and AVSD's gate [T],
    computed by the estimators training uses (so epistemic_tau and opsd_view apply as in the run)."""
    # imported here: it imports verl (several seconds), which only the credit view needs; verl warns
    # at import about optional training engines it does not find, which says nothing about a report
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from verl_avsd.estimators import token_advantages

    views = list(row["views"])
    options = {**avsd_options, "views": views}
    if options.get("opsd_view") not in views:
        options["opsd_view"] = views[0]
    inputs = dump_tensors([row])  # [1, T], [1, M, T], [1, M], [1, T]
    advantages, gate = {}, None
    for method in CREDIT_METHODS:
        adv, signals = token_advantages(method, {"avsd": options}, **inputs)
        advantages[method] = adv[0]
        if method == "avsd":
            gate = signals.gate[0]
    return advantages, gate


def token_strings(ids: list[int], tokenizer_path: str | None) -> tuple[list[str], str]:
    """Each id decoded on its own, and a note saying how (ids as text where no tokenizer loads)."""
    as_ids = [str(i) for i in ids]
    if not tokenizer_path:
        return as_ids, "token ids shown: the run's config.yaml has no actor_rollout_ref.model.path (use --tokenizer)"
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)  # a report never downloads
    except Exception as e:  # any failure to load means the same thing here: show ids, and say why
        return (
            as_ids,
            f"token ids shown: the tokenizer at {tokenizer_path} could not be loaded ({type(e).__name__}: {e})",
        )
    return [tokenizer.decode([i]) for i in ids], f"tokens decoded with the tokenizer at {tokenizer_path}"


def _rgba(value: float, scale: float) -> tuple[tuple[int, int, int], float]:
    """Colour of an advantage: blue if positive, red if negative, opacity |value| / scale."""
    rgb = POSITIVE_RGB if value > 0 else NEGATIVE_RGB
    return rgb, (min(abs(value) / scale, 1.0) if scale > 0 else 0.0)


def _visible(token: str) -> str:
    return token.replace("\n", "\u21b5").replace("\t", "\u21e5")


def write_credit_html(
    path: Path,
    title: str,
    notes: list[str],
    tokens: list[str],
    positions: list[int],
    advantages: dict[str, list[float]],
    gate: list[float],
    scale: float,
) -> None:
    """One row per method, a span per response token coloured by its advantage, and a gate row."""

    def span(kind: str, method: str, t: int, token: str, value: float, g: float, rgb, alpha: float) -> str:
        tip = f"position {positions[t]} | {token!r} | {method} {value:+.6f} | gate {g:.4f}"
        return (
            f'<span class="tok {kind}" data-method="{method}" data-pos="{positions[t]}" data-value="{value!r}" '
            f'style="background-color: rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {alpha:.3f})" title="{html.escape(tip)}">'
            f"{html.escape(_visible(token)) or '&#8203;'}</span>"
        )

    rows = []
    for method, values in advantages.items():
        spans = []
        for t, (token, value) in enumerate(zip(tokens, values)):
            rgb, alpha = _rgba(value, scale)
            spans.append(
                span(
                    "pos" if value > 0 else "neg" if value < 0 else "zero", method, t, token, value, gate[t], rgb, alpha
                )
            )
        rows.append(f'<tr><th>{method}</th><td class="tokens">{"".join(spans)}</td></tr>')
    gate_spans = [
        span("gate", "gate", t, token, g, g, GATE_RGB, min(max(g, 0.0), 1.0))
        for t, (token, g) in enumerate(zip(tokens, gate))
    ]
    rows.append(f'<tr><th>gate</th><td class="tokens">{"".join(gate_spans)}</td></tr>')
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
th {{ text-align: right; vertical-align: top; padding: 0.3em 0.8em 0.3em 0; font-weight: normal; white-space: nowrap; }}
td.tokens {{ font-family: monospace; line-height: 1.9; padding: 0.3em 0; border-bottom: 1px solid #ddd; }}
span.tok {{ white-space: pre; padding: 0.1em 0; }}
</style></head><body>
<h2>{html.escape(title)}</h2>
{"".join(f"<p>{html.escape(note)}</p>" for note in notes)}
<table>
{chr(10).join(rows)}
</table>
</body></html>
"""
    path.write_text(page)


def write_credit_png(
    path: Path, title: str, tokens: list[str], advantages: dict[str, list[float]], gate: list[float], scale: float
) -> None:
    """The same view as an image: lines of PNG_TOKENS_PER_LINE tokens, a row per method plus the gate."""
    shown = min(len(tokens), PNG_MAX_TOKENS)
    if shown < len(tokens):
        title += f" (first {shown} of {len(tokens)} tokens; the HTML has all)"
    row_names = [*advantages, "gate"]
    width = min(PNG_TOKENS_PER_LINE, max(shown, 1))  # tokens per line of the image
    chunks = [range(start, min(start + width, shown)) for start in range(0, max(shown, 1), width)]
    fig, axes = plt.subplots(len(chunks), 1, figsize=(2.5 + 0.45 * width, 0.6 + 1.9 * len(chunks)), squeeze=False)
    for ax, chunk in zip(axes[:, 0], chunks):
        image = torch.ones(len(row_names), width, 4)  # [rows, tokens, RGBA], white
        for col, t in enumerate(chunk):
            for r, method in enumerate(advantages):
                rgb, alpha = _rgba(advantages[method][t], scale)
                image[r, col] = torch.tensor([*(c / 255 for c in rgb), alpha])
            image[-1, col] = torch.tensor([*(c / 255 for c in GATE_RGB), min(max(gate[t], 0.0), 1.0)])
        ax.imshow(image.numpy(), aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(row_names)), row_names, fontsize=7)
        # "$" would start matplotlib's mathtext; a space token is drawn as an open box
        labels = [_visible(tokens[t]).replace("$", r"\$").replace(" ", "\u2423") for t in chunk]
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.tick_params(length=0)
    axes[0, 0].set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_credit_view(run: Run, out_dir: Path, spec: str | None, tokenizer_path: str | None, name_prefix: str) -> dict:
    """credit_{prefix}STEP_INDEX.html and .png for one dumped rollout of this run; returns what was written."""
    avsd_options = config_value(run.config, "algorithm.avsd", {}) or {}
    wrong_below = float(avsd_options.get("wrong_below", default_config().wrong_below))
    directory = dump_dir(run)
    step, index, row, why = pick_rollout(directory, spec, wrong_below)
    where = f"{dumped_steps(directory)[step]}, line {index + 1}"
    check_dump_row(row, where)

    advantages, gate = credit_advantages(row, avsd_options)
    positions = [t for t, on in enumerate(row["response_mask"]) if on]  # response tokens only
    tokens, token_note = token_strings(
        [row["response_ids"][t] for t in positions],
        tokenizer_path or config_value(run.config, "actor_rollout_ref.model.path"),
    )
    shown = {method: [float(adv[t]) for t in positions] for method, adv in advantages.items()}
    gate_shown = [float(gate[t]) for t in positions]
    scale = max((abs(v) for values in shown.values() for v in values), default=0.0)

    estimator = row.get("estimator")
    notes = [
        f"Rollout {index} of step {step} ({why}), reward {row['reward']:g}, {len(positions)} response tokens; "
        f"views {row['views']} present {[bool(v) for v in row['view_mask']]}; the run's estimator: {estimator}.",
        f"Blue: positive advantage, red: negative; opacity |advantage| / {scale:.4g} "
        "(the largest over the methods shown). "
        "Gate row: green opacity = gate. Hover a token for its values.",
        token_note + ".",
    ]
    if estimator in advantages and "advantage" in row and len(row["advantage"]) == len(row["response_mask"]):
        diff = max((abs(float(advantages[estimator][t]) - row["advantage"][t]) for t in positions), default=0.0)
        notes.append(
            f"Recomputed {estimator} advantage vs the one the run trained on (dumped): max |difference| {diff:.2g}."
        )

    stem = f"credit_{name_prefix}{step}_{index}"
    title = f"Token credit: {run.label}, step {step}, rollout {index} (reward {row['reward']:g})"
    write_credit_html(out_dir / f"{stem}.html", title, notes, tokens, positions, shown, gate_shown, scale)
    write_credit_png(out_dir / f"{stem}.png", title, tokens, shown, gate_shown, scale)
    return {
        "run": run.label,
        "step": step,
        "index": index,
        "html": f"{stem}.html",
        "png": f"{stem}.png",
        "about": f"{run.label}, step {step}, rollout {index} ({why}); {token_note}",
    }


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="verl-avsd report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument(
        "--label",
        action="append",
        help="name of a run in plots and tables, once per RUN_DIR in order (default: its dir name)",
    )
    p.add_argument(
        "--output", default=None, help="output folder (default RUN_DIR/report for one run, report/ for several)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --output that holds other files (nothing there is deleted)",
    )
    p.add_argument(
        "--smooth", type=int, default=1, help="plot the moving average over N logged points (default 1: raw)"
    )
    p.add_argument(
        "--last", type=int, default=5, help="summary: mean of each metric's last N logged values (default 5)"
    )
    p.add_argument(
        "--rollout",
        default=None,
        metavar="STEP:INDEX",
        help="the dumped rollout of the credit view (INDEX: 0-based line)",
    )
    p.add_argument(
        "--tokenizer", default=None, help="tokenizer folder for the credit view (default: the run's model path)"
    )
    args = p.parse_args(argv)
    if args.smooth < 1 or args.last < 1:
        p.error("--smooth and --last must be at least 1")
    if args.label is not None and len(args.label) != len(args.run_dirs):
        p.error(
            f"--label given {len(args.label)} times for {len(args.run_dirs)} run directories; give one per run or none"
        )
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
        plots = plot_metrics(curves, out, report_plots(validation_keys(runs)), smooth=args.smooth)

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
    written = ["summary.md", "summary.json", *summary["plots"]] + [
        v[kind] for v in credit_views for kind in ("html", "png")
    ]
    print(f"[report] wrote {out}: " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
