"""PNG plots of a run's per-step metrics (verl's names plus avsd/* and credit/*)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from verl_avsd.metrics import credit_metric_name  # noqa: E402
from verl_avsd.run_files import TEACHER_SHARE  # noqa: E402

# One figure per question a user asks of a run: (file, title, [(metric, label), ...])
REWARD_PLOT = ("reward.png", "Reward (mean score of the step's rollouts)", [("critic/score/mean", "reward")])
GATE_PLOT = ("gate.png", "AVSD gate", [("avsd/gate_mean", "gate mean"), ("avsd/gate_open_rate", "open rate (gate >= 0.5)")])


def credit_plot(top_ks: list[int]) -> tuple:
    """The credit figure: one line per algorithm.avsd.credit_top_k the runs logged under (its metric
    name carries k)."""
    series = [(credit_metric_name(k), f"positive share of top-{k} |advantage| tokens") for k in sorted(set(top_ks))]
    return ("credit.png", "Credit on wrong rollouts", series)


def run_plots(credit_top_k: int) -> list:
    """The demo's figures of a run whose credit metrics are at top-`credit_top_k`."""
    return [REWARD_PLOT, GATE_PLOT, credit_plot([credit_top_k])]


# `verl-avsd report`: the demo's figures plus the signals, the teacher's cost and GRPO's dead groups.
# The reward and credit figures are built by `report_plots` (the validation keys depend on the data
# sources, the credit metric's name on each run's credit_top_k).
SIGNALS_PLOT = (
    "signals.png",
    "AVSD residual and alignment",
    [("avsd/residual_mean", "residual J (mean)"), ("avsd/alignment_mean", "alignment C (mean)")],
)
REPORT_PLOTS_AFTER_CREDIT = [
    (
        "teacher_share.png",
        "Teacher share of the step time",
        [(TEACHER_SHARE, "timing_s/teacher_views / timing_s/step")],
    ),
    ("grpo_signal.png", "GRPO groups without signal", [("grpo/groups_without_signal", "groups whose rollouts tie")]),
    # verl_avsd/epistemic.py: hedges and self-checks ("wait", "hmm", ...), which self-distillation can suppress
    (
        "epistemic.png",
        "Epistemic markers per 1k response tokens",
        [("epistemic/markers_per_1k_tokens", "epistemic markers per 1k tokens")],
    ),
]


def report_plots(validation_keys: list[str], credit_top_ks: list[int]) -> list:
    """The report's figures; the reward figure also draws each validation accuracy the runs logged
    (verl: `val-core/<data_source>/<acc|reward>/mean@N`), the credit figure each run's top-k."""
    reward = [("critic/score/mean", "train reward")] + [(k, "val " + k.removeprefix("val-core/")) for k in validation_keys]
    return [
        ("reward.png", "Reward (train) and validation accuracy", reward),
        GATE_PLOT,
        SIGNALS_PLOT,
        credit_plot(credit_top_ks),
        *REPORT_PLOTS_AFTER_CREDIT,
    ]


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` points (fewer at the start); window 1 = unchanged."""
    out = []
    for i in range(len(values)):
        recent = values[max(0, i - window + 1) : i + 1]
        out.append(sum(recent) / len(recent))
    return out


def plot_metrics(runs: dict[str, dict[int, dict]], out_dir: str | Path, plots: list, smooth: int = 1) -> list[Path]:
    """One PNG per entry of `plots`, each with a line per (run, metric); runs = {label: {step: metrics}}.
    With several runs each run keeps one colour and each metric one line style. `smooth` > 1 draws
    the trailing moving average over that many logged points.
    Returns the files written (a plot none of whose metrics any run logged is skipped)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    styles = ["-", "--", ":", "-."]
    written = []
    for filename, title, series in plots:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        drawn = 0
        for r, (run_label, metrics) in enumerate(runs.items()):
            for s, (key, label) in enumerate(series):
                steps = [step for step in sorted(metrics) if key in metrics[step]]
                if not steps:
                    continue
                values = moving_average([metrics[step][key] for step in steps], smooth)
                one_run = len(runs) == 1
                style = {} if one_run else {"color": f"C{r % 10}", "linestyle": styles[s % len(styles)]}
                name = label if one_run else f"{run_label}: {label}"
                ax.plot(steps, values, marker="o", markersize=3, label=name, **style)
                drawn += 1
        if drawn:
            ax.set_title(title + (f" (moving average of {smooth})" if smooth > 1 else ""))
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out_dir / filename, dpi=110)
            written.append(out_dir / filename)
        plt.close(fig)
    return written
