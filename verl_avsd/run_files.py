"""Reading a run folder: its metrics file (the demo's metrics.jsonl or verl's file logger's
verl_metrics.jsonl, also while the run still writes it), its resolved config.yaml, its label.

`ReportError` is the error of everything the report reads: its message names the file, line or field.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

# Not logged by verl: `load_run` adds it to every step that has both timings.
TEACHER_SHARE = "report/teacher_share"  # timing_s/teacher_views / timing_s/step
METRICS_FILES = ("metrics.jsonl", "verl_metrics.jsonl")  # the demo's, then verl's file logger's


class ReportError(ValueError):
    """A run directory or option the report cannot use; the message names the file, line or field."""


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
