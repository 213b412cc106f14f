"""The credit metric's name follows algorithm.avsd.credit_top_k (verl_avsd.metrics.credit_metric_name):
in the metrics, the demo's progress line and figures, and the report, which reads each run's k
from its config.yaml (or, without one, from the name the run logged)."""

import json
import statistics

import pytest
import torch

from verl_avsd import demo
from verl_avsd.config import avsd_config
from verl_avsd.metrics import credit_metric_name, credit_metrics, credit_tokens_metric_name, wrong_rollout_positive_topk
from verl_avsd.plots import run_plots
from verl_avsd.report import main

TOP5 = "credit/wrong_rollout_positive_top5"  # written out once: the name users see
SHARES = [0.1, 0.2, 0.4, 0.8]


def test_credit_top_k_5_names_the_metrics_top5():
    k = avsd_config({"avsd": {"credit_top_k": 5}}).credit_top_k
    g = torch.Generator().manual_seed(0)
    adv, mask = torch.randn(6, 12, generator=g), torch.rand(6, 12, generator=g) > 0.2
    reward = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    m = credit_metrics(adv, mask, reward, 1.0, k)
    assert credit_metric_name(k) == TOP5 and credit_tokens_metric_name(k) == "credit/wrong_rollout_top5_tokens"
    share, counted = wrong_rollout_positive_topk(adv, mask, reward, 1.0, 5)
    assert m[TOP5] == share and m["credit/wrong_rollout_top5_tokens"] == counted
    assert not any("top20" in key for key in m)


def test_demo_progress_and_figures_follow_k(capsys):
    demo._progress(10, 5)(1, {"critic/score/mean": 0.5, TOP5: 0.125, "timing_s/step": 1.0})
    assert "wrong+ 0.125" in capsys.readouterr().out
    demo._progress(10, 20)(1, {"critic/score/mean": 0.5, TOP5: 0.125, "timing_s/step": 1.0})
    assert "wrong+" not in capsys.readouterr().out  # a top-20 run never logged the top-5 name
    credit = dict((f, series) for f, _, series in run_plots(5))["credit.png"]
    assert [metric for metric, _ in credit] == [TOP5]


def _run_dir(root, name, k_logged, config_k=None, with_config=True):
    run = root / name
    run.mkdir(parents=True)
    lines = [{"step": s + 1, "data": {"critic/score/mean": 0.5, credit_metric_name(k_logged): SHARES[s]}} for s in range(4)]
    (run / "verl_metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if with_config:
        avsd = f"  avsd:\n    credit_top_k: {config_k}\n" if config_k is not None else ""
        (run / "config.yaml").write_text(f"algorithm:\n  adv_estimator: avsd\n{avsd}")
    return run


def _table(out):
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in (out / "summary.md").read_text().splitlines()
        if line.startswith("| ")
    ]
    return {row[0]: row[1:] for row in rows}


@pytest.mark.parametrize("with_config", [True, False], ids=["k from config.yaml", "k from the logged name"])
def test_report_reads_the_runs_k(tmp_path, with_config):
    run = _run_dir(tmp_path, "r", 5, config_k=5, with_config=with_config)
    out = tmp_path / "out"
    assert main([str(run), "--output", str(out), "--last", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())["runs"]["r"]
    assert summary["credit_top_k"] == 5
    assert summary["last_n_mean"][TOP5] == pytest.approx(statistics.fmean(SHARES[-2:]))
    assert _table(out)["wrong-rollout positive top-5, last 2"] == [f"{statistics.fmean(SHARES[-2:]):.4g}"]
    assert (out / "credit.png").exists()  # drawn: the plot found the top-5 metric


def test_report_of_runs_with_different_k(tmp_path):
    five = _run_dir(tmp_path, "five", 5, config_k=5)
    twenty = _run_dir(tmp_path, "twenty", 20)  # no credit_top_k in its config: the default, 20
    out = tmp_path / "out"
    assert main([str(five), str(twenty), "--output", str(out), "--last", "1"]) == 0
    runs = json.loads((out / "summary.json").read_text())["runs"]
    assert (runs["five"]["credit_top_k"], runs["twenty"]["credit_top_k"]) == (5, 20)
    assert _table(out)["wrong-rollout positive top-k (k = 5, 20 by run), last 1"] == ["0.8", "0.8"]


@pytest.mark.parametrize("bad", ["abc", 0, -5, 2.5])
def test_report_names_a_bad_credit_top_k(tmp_path, capsys, bad):
    run = _run_dir(tmp_path, "r", 5, config_k=bad)
    assert main([str(run), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "algorithm.avsd.credit_top_k" in err and str(run) in err and "Traceback" not in err


def test_the_toy_study_reads_the_name_its_runs_log():
    """The study's runs keep the default credit_top_k; it pools the metric of that name."""
    import importlib.util
    from pathlib import Path

    from verl_avsd.config import default_config

    path = Path(__file__).resolve().parents[1] / "bench" / "toy_study.py"
    spec = importlib.util.spec_from_file_location("toy_study_top_k_under_test", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    assert study.TOP_K == default_config().credit_top_k
    credit = dict((f, series) for f, _, series in study.STUDY_PLOTS)["study_credit.png"]
    assert [metric for metric, _ in credit] == [credit_metric_name(study.TOP_K)]
