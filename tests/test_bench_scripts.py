"""The performance benchmarks (bench/estimator_cost.py, bench/step_overhead.py, bench/gpu_checks.sh),
checked at tiny sizes and without running the trainer: they must produce right numbers when a
GPU session or a long CPU run finally executes them."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


@pytest.fixture()
def bench_module(monkeypatch):
    """Import a script of bench/ as a module (bench/ is not a package; the scripts import each other)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module


def test_estimator_cost_writes_positive_timings_and_the_share_of_a_given_step(bench_module, tmp_path):
    estimator_cost = bench_module("estimator_cost")
    argv = ["--device", "cpu", "--batch", "8", "--views", "3", "--length", "256", "--repeats", "2"]
    estimator_cost.main([*argv, "--step-seconds", "2.5", "--out", str(tmp_path)])

    report = json.loads((tmp_path / "estimator_cost_cpu.json").read_text())
    config = report["config"]
    assert (config["device"], config["batch"], config["views"], config["length"]) == ("cpu", 8, 3, 256)
    assert report["config"]["path"] == "verl_avsd.estimators.token_advantages"  # verl is installed here
    assert report["versions"]["torch"] == torch.__version__ and report["versions"]["cpu_threads"] == 1
    assert report["versions"]["device_name"]
    assert report["inputs"]["tensor_bytes"] > 0 and report["inputs"]["response_tokens"] > 0
    names = {"avsd", "opsd", "avsd_consensus", "avsd_arithmetic", "rlsd", "metrics"}
    assert set(report["calls"]) == names
    for entry in report["calls"].values():
        assert entry["ms"] > 0 and entry["cpu_ms"] > 0 and entry["peak_memory_bytes"] >= 0

    metrics_ms = report["calls"]["metrics"]["ms"]
    assert report["step_seconds"] == 2.5
    for name in names - {"metrics"}:
        expected = (report["calls"][name]["ms"] + metrics_ms) / 2500
        assert report["share_of_step"][name] == pytest.approx(expected)
    md = (tmp_path / "estimator_cost_cpu.md").read_text()
    assert md.count("\n") == 1 and "% of a 2.50 s step" in md


def test_step_share_is_estimator_plus_metrics_over_the_step(bench_module):
    estimator_cost = bench_module("estimator_cost")
    calls = {"avsd": {"ms": 10.0}, "opsd": {"ms": 4.0}, "metrics": {"ms": 2.0}}
    assert estimator_cost.step_shares(calls, step_seconds=1.2) == pytest.approx({"avsd": 0.01, "opsd": 0.005})


def test_estimator_inputs_are_realistic(bench_module):
    estimator_cost = bench_module("estimator_cost")
    inputs = estimator_cost.make_inputs(batch=16, views=4, length=1024, seed=0, device=torch.device("cpu"))
    resp = inputs["response_mask"].bool()  # [B, T]
    lengths = resp.sum(1)
    assert len(set(lengths.tolist())) > 4 and int(lengths.max()) == 1024  # ragged, some hit the limit
    student, teacher = inputs["student_logp"], inputs["view_logq"]
    assert float(student[resp].min()) >= -10 and float(student[resp].max()) <= 0
    assert (student[~resp] == 0).all() and (teacher.permute(0, 2, 1)[~resp] == 0).all()  # verl pads with 0
    finite = teacher[torch.isfinite(teacher)]
    assert float(finite.min()) >= -10 and float(finite.max()) <= 0
    assert inputs["view_mask"][:, 0].all() and not inputs["view_mask"].all()  # some views missing, never "full"
    assert inputs["stats"]["nonfinite_teacher_values"] > 0 and not torch.isfinite(teacher).all()


def test_the_path_without_verl_computes_what_token_advantages_computes(bench_module, monkeypatch):
    """Where verl is missing the script times verl_avsd.signals directly: it must be the same math."""
    estimator_cost = bench_module("estimator_cost")
    inputs = estimator_cost.make_inputs(batch=16, views=3, length=128, seed=1, device=torch.device("cpu"))
    with_verl = {name: call()[0] for name, call in estimator_cost.estimator_calls(inputs, 3).items()}
    monkeypatch.setattr(estimator_cost, "token_advantages", None)
    without_verl = {name: call()[0] for name, call in estimator_cost.estimator_calls(inputs, 3).items()}
    assert set(with_verl) == set(without_verl) == {"avsd", "opsd", "avsd_consensus", "avsd_arithmetic", "rlsd"}
    for name, advantages in with_verl.items():
        torch.testing.assert_close(without_verl[name].float(), advantages, atol=1e-5, rtol=1e-5, msg=name)


BLOCKER = textwrap.dedent(
    """
    import importlib.abc, json, runpy, sys

    BLOCKED = ("verl", "ray", "vllm", "omegaconf", "hydra")

    class Blocker(importlib.abc.MetaPathFinder):  # the GPU machine: torch + transformers only
        def find_spec(self, name, path=None, target=None):
            # verl_avsd.workers: only an installed project has it (setuptools maps workers/ there)
            if name.split(".")[0] in BLOCKED or name.startswith("verl_avsd.workers"):
                raise ModuleNotFoundError(f"blocked: {name}")

    sys.meta_path.insert(0, Blocker())
    sys.argv = [sys.argv[1], *sys.argv[2:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"loaded": loaded, "prefill": sys.modules["teacher_prefill"].teacher_prefill.__name__}))
    """
)


def test_estimator_cost_runs_without_verl_ray_or_vllm(tmp_path):
    argv = ["--batch", "8", "--views", "2", "--length", "64", "--repeats", "2", "--out", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER, str(BENCH / "estimator_cost.py"), *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["loaded"] == []
    # bench/teacher_prefill.py (imported for its RSS sampler) fell back to workers/ loaded by path
    assert probe["prefill"] == "workers.teacher_prefill"
    report = json.loads((tmp_path / "estimator_cost_cpu.json").read_text())
    assert report["config"]["path"] == "verl_avsd.signals"
    assert "blocked" in report["config"]["verl_missing"]
    assert all(entry["ms"] > 0 for entry in report["calls"].values()) and len(report["calls"]) == 6


def test_gpu_checks_script_parses():
    result = subprocess.run(["bash", "-n", str(BENCH / "gpu_checks.sh")], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_step_overhead_summary_medians_and_ratios(bench_module):
    step_overhead = bench_module("step_overhead")
    # step 0 holds validation only; step 1 is the warm-up and must not count
    opsd = {
        0: {"val-core/acc": 0.1},
        1: {"timing_s/step": 30.0, "timing_s/teacher_views": 9.0, "timing_s/gen": 10.0, "timing_s/update_actor": 5.0},
        2: {"timing_s/step": 2.0, "timing_s/teacher_views": 0.2, "timing_s/gen": 1.0, "timing_s/update_actor": 0.5},
        3: {"timing_s/step": 4.0, "timing_s/teacher_views": 0.4, "timing_s/gen": 1.2, "timing_s/update_actor": 0.7},
        4: {"timing_s/step": 3.0, "timing_s/teacher_views": 0.3, "timing_s/gen": 1.1, "timing_s/update_actor": 0.6},
    }
    avsd = {
        1: {"timing_s/step": 40.0, "timing_s/teacher_views": 20.0},
        2: {"timing_s/step": 3.0, "timing_s/teacher_views": 0.9},
        3: {"timing_s/step": 3.6, "timing_s/teacher_views": 1.2},
        4: {"timing_s/step": 3.3, "timing_s/teacher_views": 0.6, "avsd/teacher_fed_fraction": 0.8},
    }
    avsd[3]["avsd/teacher_fed_fraction"] = 0.9
    grpo = {1: {"timing_s/step": 9.0}, 2: {"timing_s/step": 2.0}, 3: {"timing_s/step": 2.4}}
    summary = step_overhead.summarize({"opsd": opsd, "avsd": avsd, "grpo": grpo}, warmup_steps=1)

    methods = summary["methods"]
    assert methods["opsd"] == {
        "steps_measured": 3,
        "timing_s/step": 3.0,
        "timing_s/teacher_views": 0.3,
        "timing_s/gen": 1.1,
        "timing_s/update_actor": 0.6,
        "timing_s/adv": None,
        "avsd/teacher_tokens": None,
        "avsd/teacher_fed_fraction": None,
    }
    assert methods["avsd"]["avsd/teacher_fed_fraction"] == pytest.approx(0.85)  # median of the steps after warm-up
    assert methods["avsd"]["timing_s/step"] == 3.3 and methods["avsd"]["timing_s/teacher_views"] == 0.9
    assert methods["avsd"]["timing_s/gen"] is None
    assert methods["grpo"]["steps_measured"] == 2 and methods["grpo"]["timing_s/step"] == pytest.approx(2.2)
    assert methods["grpo"]["timing_s/teacher_views"] is None

    ratios = summary["ratios"]
    assert ratios["avsd/opsd"] == pytest.approx({"step": 1.1, "teacher_views": 3.0})
    assert ratios["grpo/opsd"]["step"] == pytest.approx(2.2 / 3.0) and ratios["grpo/opsd"]["teacher_views"] is None
    assert "opsd/opsd" not in ratios
    assert summary["avsd_step_within_target"] is False  # 1.1 > 1.05

    report = {
        "summary": summary,
        "config": {"model_kind": "random", "prompts_per_step": 4, "warmup_steps": 1, "steps": 4},
    }
    line = step_overhead.markdown(report)
    assert "avsd/opsd step 1.10x, teacher 3.00x" in line and "grpo 2.20 s/step" in line and "\n" not in line
    assert "avsd 3.30 s/step (teacher 0.90 s, 85% of its tokens fed)" in line


def test_teacher_prefill_benchmark_end_to_end_at_a_tiny_size(tmp_path):
    """The script a GPU session runs, at CPU size: every method, the sharing accounting, the
    packed-vs-padded agreement and the profile land in the JSON and the summary line."""
    command = [sys.executable, str(BENCH / "teacher_prefill.py"), "--device", "cpu", "--rollouts", "4",
               "--rollouts-per-prompt", "2", "--target-tokens", "1500", "--repeats", "1", "--no-sweep",
               "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "teacher_prefill_cpu.json").read_text())
    methods = report["methods"]
    assert list(methods) == ["dense", "naive", "sorted", "packed_noshare", "packed"]
    assert methods["naive"]["processed_per_useful_token"] > 1  # padding
    assert methods["packed_noshare"]["processed_per_useful_token"] == 1
    # 2 rollouts a prompt x 3 views: the prompt is shared by 6 sequences, each context by 2
    assert methods["packed"]["processed_per_useful_token"] < 0.9
    assert all(m["useful_tokens_per_cpu_s"] > 0 and m["ratio_vs_dense_cpu_time"] > 0 for m in methods.values())
    diffs = report["max_abs_diff"]
    assert diffs["packed_vs_naive"] < 1e-4 and diffs["packed_vs_packed_noshare"] < 1e-4
    profile = report["profile"]
    assert set(profile["regions_ms"]) == {"layout", "backbone", "logprob_head"}
    assert profile["busy_ms"] > 0 and abs(sum(profile["share"].values()) - 1) < 1e-6
    assert "attention" in profile["ms"] and any(k.startswith("matmul") for k in profile["ms"])
    summary = (tmp_path / "teacher_prefill_cpu.md").read_text()
    assert "with shared prefixes fed once" in summary and "2 rollouts a prompt" in summary
