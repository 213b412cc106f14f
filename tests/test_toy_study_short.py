"""The short version of the toy-scale study (bench/toy_study.py): one seed, AVSD only, 2 steps,
through the real trainer with the shipped warmed-up model. On the rollouts the reward calls
wrong, AVSD's advantage must mostly be negative: summed over the rollout, at the first token
where the rollout leaves the reference solution (where the error is made), and on the tokens
from there on. (The tokens before the error are correct, and a teacher that reads the solution
may rightly be more sure of them than the student: they can be positive. On ~33-token toy
responses the top-20 |advantage| tokens hold most of that correct prefix, so the paper's top-20
share is logged and reported, not asserted.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer

from verl_avsd.toy import TOY_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_short_study_avsd_blames_wrong_rollouts(tmp_path):
    out = tmp_path / "study"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "toy_study.py"),
        "--out",
        str(out),
        "--methods",
        "avsd",
        "--seeds",
        "0",
        "--steps",
        "2",
        "--n-val",
        "16",
        "--no-sweep",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "toy_study.json").read_text())
    run = result["runs"]["avsd"][0]
    assert run["steps"] == 2 and 0.0 <= run["val_acc_before"] <= 1.0
    assert 0.0 < run["wrong_rollout_rate"] < 1.0, "the warmed model must be wrong sometimes, right sometimes"
    # the paired recomputation on the dumped rollouts agrees with what the trainer logged
    assert abs(run["paired"]["avsd_wrong_positive_top20"] - run["wrong_positive_top20"]) < 0.05
    report_rows = [line for line in (out / "toy_study.md").read_text().splitlines() if line.startswith("| avsd | ")]
    assert len(report_rows) == 3, report_rows  # the method, paired-credit and epistemic tables
    # epistemic/* logged by the trainer and read: the toy model writes digits and "Answer:", never
    # a marker of the default list (a rate, 0, not a missing value), in ~33-token responses
    assert run["epistemic_rate"] == 0.0 and run["epistemic_rate_correct"] == 0.0
    assert 20 < run["response_length"] < 48 and run["rollouts_per_prompt"] == 1 and run["epistemic_tau"] == 0.0

    # the first wrong token: where the response stops following the reference solution
    tokenizer = AutoTokenizer.from_pretrained(TOY_MODEL_DIR)
    solutions = {
        e["index"]: e["views"][0]["text"] for e in pd.read_parquet(out / "data" / "train.parquet")["extra_info"]
    }  # "full"
    total_negative, first_negative, after_negative = [], [], []  # per wrong rollout / per token
    for dump in sorted((out / "runs" / "avsd_s0" / "rollouts").glob("*.jsonl")):
        for row in map(json.loads, dump.read_text().splitlines()):
            if row["is_padding"] or row["reward"] >= 1.0:
                continue
            n = sum(row["response_mask"])
            advantage = row["advantage"][:n]
            total_negative.append(sum(advantage) < 0)
            reference = tokenizer(solutions[row["index"]], add_special_tokens=False)["input_ids"]
            first = next((t for t in range(n) if t >= len(reference) or row["response_ids"][t] != reference[t]), None)
            if first is not None:
                first_negative.append(advantage[first] < 0)
                after_negative += [a < 0 for a in advantage[first:]]
    assert len(total_negative) >= 5 and len(first_negative) >= 5
    assert sum(total_negative) / len(total_negative) > 0.8, total_negative
    assert sum(first_negative) / len(first_negative) > 0.7, first_negative
    assert sum(after_negative) / len(after_negative) > 0.5
