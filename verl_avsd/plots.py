"""PNG plots of a run's per-step metrics (verl's names plus avsd/* and credit/*)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# One figure per question a user asks of a run: (file, title, [(metric, label), ...])
RUN_PLOTS = [
    ("reward.png", "Reward (mean score of the step's rollouts)", [("critic/score/mean", "reward")]),
    ("gate.png", "AVSD gate", [("avsd/gate_mean", "gate mean"), ("avsd/gate_open_rate", "open rate (gate >= 0.5)")]),
    (
        "credit.png",
        "Credit on wrong rollouts",
        [("credit/wrong_rollout_positive_top20", "positive share of top-20 |advantage| tokens")],
    ),
]


def plot_metrics(runs: dict[str, dict[int, dict]], out_dir: str | Path, plots=RUN_PLOTS) -> list[Path]:
    """One PNG per entry of `plots`, each with a line per (run, metric); runs = {label: {step: metrics}}.
    Returns the files written (a plot none of whose metrics any run logged is skipped)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, title, series in plots:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        drawn = 0
        for run_label, metrics in runs.items():
            for key, label in series:
                steps = [s for s in sorted(metrics) if key in metrics[s]]
                if steps:
                    name = label if len(runs) == 1 else f"{run_label}: {label}"
                    ax.plot(steps, [metrics[s][key] for s in steps], marker="o", markersize=3, label=name)
                    drawn += 1
        if drawn:
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out_dir / filename, dpi=110)
            written.append(out_dir / filename)
        plt.close(fig)
    return written
