"""The toy study's plan and tables, without training (bench/toy_study.py): the epistemic_tau row
and the sibling-view block become the runs they promise (views, rollout.n, the tau override), and
the `epistemic/*` and sibling columns are computed from verl's per-step metrics as documented
(mean over the last LAST_STEPS steps, a step without the value left out). The trainer itself is
exercised by tests/test_toy_study_short.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("toy_study_report_under_test", ROOT / "bench" / "toy_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DATA = {"train": "train.parquet", "val": "val.parquet"}


def _overrides(study, args, name, spec) -> dict[str, str]:
    estimator, seed, views, extra = spec
    run = study.toy_run_for(name, estimator, seed, views, args, DATA, **extra)
    return dict(o.split("=", 1) for o in run.overrides())


def test_plan_has_the_tau_row_and_the_sibling_block_at_rollout_n_4(study, tmp_path):
    args = study.parse_args(["--out", str(tmp_path), "--seeds", "0", "1", "2", "--epistemic-tau", "0.2"])
    plan = study.study_plan(args)
    groups = {}
    for group, name, spec in plan:
        groups.setdefault(group, []).append((name, spec))
    assert [n for n, _ in groups["avsd tau=0.2"]] == ["avsd_tau0.2_s0", "avsd_tau0.2_s1", "avsd_tau0.2_s2"]
    sibling_groups = {
        "avsd n=4 fixed": "[full,partial,answer]",
        "avsd n=4 sibling": "[sibling]",
        "avsd n=4 sibling as full": "[sibling]",
        "avsd n=4 fixed+sibling": "[full,partial,answer,sibling]",
    }
    for group, views in sibling_groups.items():
        assert len(groups[group]) == 3  # three seeds each
        for name, spec in groups[group]:
            o = _overrides(study, args, name, spec)
            # the same 16 rollouts a step as every other run, as 4 prompts x 4 rollouts
            assert o["actor_rollout_ref.rollout.n"] == "4" and o["data.train_batch_size"] == "4"
            assert o["+algorithm.avsd.views"] == views and "+algorithm.avsd.epistemic_tau" not in o
            # the toy template names each view in its header; "as full" shows the sibling as the worked solution
            header = "Reference (full):" if group.endswith("as full") else "Reference ({view_name}):"
            assert o["+algorithm.avsd.view_template"] == f"'{header}\\n{{view}}\\n\\n{{prompt}}'", o[
                "+algorithm.avsd.view_template"
            ]
    tau = _overrides(study, args, *groups["avsd tau=0.2"][1])
    plain = _overrides(study, args, *groups["avsd"][1])
    assert tau.pop("+algorithm.avsd.epistemic_tau") == "0.2"
    assert "+algorithm.avsd.epistemic_tau" not in plain and plain["actor_rollout_ref.rollout.n"] == "1"
    # otherwise the tau run is the plain avsd run of the same seed (its own folder aside)
    differ = {k for k in plain if plain[k] != tau.get(k)}
    assert differ == {"trainer.default_local_dir", "+algorithm.avsd.dump_rollouts_dir"}, differ

    # --no-sweep: the methods only; --epistemic-tau 0 / --no-sibling drop one block each
    only = study.study_plan(study.parse_args(["--out", str(tmp_path), "--no-sweep"]))
    assert {g for g, _, _ in only} == set(study.METHODS)
    some = study.study_plan(study.parse_args(["--out", str(tmp_path), "--epistemic-tau", "0", "--no-sibling"]))
    assert not any("tau" in g or "n=4" in g for g, _, _ in some)
    # --baseline-seeds: fewer seeds for the other methods, the AVSD rows keep --seeds
    fewer = study.study_plan(study.parse_args(["--out", str(tmp_path), "--baseline-seeds", "0", "1", "--no-sweep"]))
    assert [n for g, n, _ in fewer if g == "opsd"] == ["opsd_s0", "opsd_s1"]
    assert [n for g, n, _ in fewer if g == "avsd"] == ["avsd_s0", "avsd_s1", "avsd_s2"]


def test_a_group_size_the_budget_cannot_split_is_a_clear_error(study, tmp_path):
    args = study.parse_args(["--out", str(tmp_path), "--rollouts-per-step", "6"])
    with pytest.raises(ValueError, match="run avsd_n4_sibling_s0: --rollouts-per-step 6 is not a multiple of 4"):
        study.toy_run_for("avsd_n4_sibling_s0", "avsd", 0, ("sibling",), args, DATA, rollouts_per_prompt=4)


def _metrics(steps: int) -> dict[int, dict]:
    """verl's per-step metrics of a fake run: step s has rate s, length 10 + s, no wrong rollout at step 7."""
    metrics = {0: {"val-core/avsd_toy/arith/acc/mean@1": 0.5}}
    for s in range(1, steps + 1):
        metrics[s] = {
            "critic/score/mean": 0.1 * s,
            "epistemic/markers_per_1k_tokens": float(s),
            "epistemic/markers_per_1k_tokens_correct": 2.0 * s,
            "epistemic/response_length_mean": 10.0 + s,
            "sibling/wrong_view_rate": 0.5,
            "credit/wrong_rollout_positive_top20": 0.25,
            "credit/wrong_rollout_top20_tokens": 40.0,
        }
        if s != 7:  # a step where every rollout was right: verl logs no wrong-rollout rate (NaN)
            metrics[s]["epistemic/markers_per_1k_tokens_wrong"] = 3.0 * s
    metrics[steps]["val-core/avsd_toy/arith/acc/mean@1"] = 0.75
    return metrics


def test_epistemic_columns_are_the_mean_over_the_last_steps(study, tmp_path):
    record = study.summarize_run("grpo_s0", "grpo", 0, ("full",), tmp_path, _metrics(8))
    assert study.LAST_STEPS == 5  # steps 4..8
    assert record["epistemic_rate"] == pytest.approx((4 + 5 + 6 + 7 + 8) / 5)
    assert record["epistemic_rate_correct"] == pytest.approx(2 * 6.0)
    assert record["epistemic_rate_wrong"] == pytest.approx(3 * (4 + 5 + 6 + 8) / 4)  # step 7 has none
    assert record["response_length_first"] == 11.0
    assert record["response_length"] == pytest.approx(16.0)
    assert record["sibling_wrong_view_rate"] == 0.5
    assert (record["val_acc_before"], record["val_acc_after"]) == (0.5, 0.75)


def test_report_shows_tau_next_to_the_rates_and_the_sibling_rows(study, tmp_path):
    def record(name, estimator, views, n, tau, rate):
        r = study.summarize_run(name, estimator, 0, views, tmp_path, _metrics(6))
        r.update(epistemic_rate=rate, rollouts_per_prompt=n, epistemic_tau=tau, seconds=1.0)
        return r

    groups = {
        "grpo": [record("grpo_s0", "grpo", ("full",), 4, 0.0, 1.0)],
        "avsd": [record("avsd_s0", "grpo", ("full", "partial", "answer"), 1, 0.0, 2.0)],
        "avsd tau=0.1": [record("avsd_tau0.1_s0", "grpo", ("full", "partial", "answer"), 1, 0.1, 3.0)],
        "avsd n=4 sibling": [record("avsd_n4_sibling_s0", "grpo", ("sibling",), 4, 0.0, 0.0)],
    }
    groups["avsd n=4 sibling"][0]["estimator"] = "avsd"
    args = study.parse_args(["--out", str(tmp_path), "--seeds", "0", "--steps", "6"])
    study.write_report(tmp_path, groups, args, 60.0)
    md = (tmp_path / "toy_study.md").read_text().splitlines()
    epistemic = md[md.index(next(line for line in md if line.startswith("| run | epistemic_tau |"))) :]
    assert epistemic[2].startswith("| grpo | 0 | 1.00 ± 0.00 |")
    assert epistemic[4].startswith("| avsd tau=0.1 | 0.1 | 3.00 ± 0.00 | ")
    sibling = [line for line in md if line.startswith("| avsd n=4 sibling | sibling | ")]
    assert len(sibling) == 1 and "| 50.0% ± 0.0 |" in sibling[0]  # wrong rollouts with a sibling
    assert any(line.startswith("| grpo | - | ") for line in md)  # GRPO at the same n, for reference
    assert not any(line.startswith("| avsd | full, partial, answer |") for line in md)  # n = 1: not in the sibling table
    saved = json.loads((tmp_path / "toy_study.json").read_text())
    assert saved["methods"]["avsd tau=0.1"]["epistemic_rate"]["mean"] == 3.0
    assert saved["runs"]["avsd tau=0.1"][0]["epistemic_tau"] == 0.1


def test_paired_credit_also_reports_the_wrong_rollouts_that_had_a_view(study, tmp_path):
    """A wrong rollout with its only view masked (sibling alone, no correct sibling) gets advantage 0:
    counted, its tokens are "not positive" and halve the share here; over the viewed ones it is 1."""

    def row(view_ok: bool, reward: float) -> dict:
        return {
            "is_padding": False,
            "reward": reward,
            "response_mask": [1, 1, 1],
            "student_logp": [-2.0, -2.0, -2.0],
            "view_logq": [[-0.5, -0.5, -0.5] if view_ok else [None, None, None]],
            "view_mask": [view_ok],
        }

    dumps = tmp_path / "rollouts"
    dumps.mkdir()
    rows = [row(True, 0.0), row(False, 0.0), row(True, 1.0)]
    (dumps / "rollouts_step1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paired = study.paired_credit(dumps, ("sibling",))
    assert (paired["wrong_rollouts"], paired["wrong_rollouts_viewed"]) == (2, 1)
    assert paired["avsd_wrong_positive_top20"] == pytest.approx(0.5)
    assert paired["avsd_wrong_positive_top20_viewed"] == pytest.approx(1.0)
