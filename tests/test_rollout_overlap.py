"""bench/rollout_overlap.py: the generation-tail simulation of the two teacher placements, checked
against a float64 hand computation on the times a real (tiny, random) run recorded, and run the way
the GPU machine runs it (verl, ray, vLLM and the installed verl_avsd blocked from import)."""

from __future__ import annotations

import importlib
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "rollout_overlap.py"

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, json, runpy, sys

    BLOCKED = ("verl", "ray", "vllm", "omegaconf", "hydra", "verl_avsd")

    class Blocker(importlib.abc.MetaPathFinder):  # the GPU machine: torch + transformers only
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"blocked: {name}")

    sys.meta_path.insert(0, Blocker())
    sys.argv = sys.argv[1:]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as done:
        assert not done.code, done.code
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)))
    """
)


@pytest.fixture()
def overlap(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    return importlib.import_module("rollout_overlap")


def hand_rollout_placement(c: list[float], s: list[float], gen_end: float) -> tuple[float, float, list[float]]:
    """Blocking, hidden fraction and per-row hidden seconds, by the closed form of a FIFO single
    server (not the script's recursion): in order of c, row k finishes at
    max over j <= k of (c_j + s_j + ... + s_k)."""
    order = sorted(range(len(c)), key=lambda i: (c[i], i))
    ends, starts = {}, {}
    for k, row in enumerate(order):
        ends[row] = max(c[order[j]] + sum(s[order[i]] for i in range(j, k + 1)) for j in range(k + 1))
        starts[row] = ends[row] - s[row]
    hidden = [max(0.0, min(ends[i], gen_end) - starts[i]) for i in range(len(c))]
    return max(0.0, max(ends.values()) - gen_end), sum(hidden) / sum(s), hidden


def test_a_tiny_run_without_verl_matches_the_hand_computation(tmp_path):
    argv = ["--batch", "6", "--max-new-tokens", "40", "--prompt-tokens", "16", "--view-tokens", "24", "--repeats", "1"]
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER, str(SCRIPT), *argv, "--threads", "1", "--out", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []  # nothing of verl, ray, vllm, verl_avsd loaded
    report = json.loads((tmp_path / "gpu_overlap_cpu.json").read_text())
    assert (tmp_path / "gpu_overlap_cpu.md").read_text().count("\n") == 1

    gen = report["generation"]
    steps, end_steps, c = gen["step_s"], gen["end_steps"], gen["end_s"]
    assert end_steps == gen["targets"]  # the drawn lengths were imposed: each row ended at its step
    assert len(steps) == max(end_steps) and gen["gen_s"] == steps[-1]
    assert all(a < b for a, b in zip(steps, steps[1:]))  # step clock is monotonic
    assert c == [steps[e - 1] for e in end_steps]
    lengths = torch.tensor(end_steps, dtype=torch.float64)
    assert report["tail"]["max_over_mean"] == pytest.approx(float(lengths.max() / lengths.mean()))
    active = [(lengths >= step).sum().item() for step in range(1, len(steps) + 1)]
    assert report["tail"]["idle_slot_fraction"] == pytest.approx(1 - sum(active) / (6 * len(steps)))

    ratios = {}
    for m in ("3", "1"):
        views = report["views"][m]
        s = views["teacher"]["row_s"]
        assert len(s) == 6 and all(x > 0 for x in s)
        assert views["teacher"]["sequences"] == 6 * int(m)
        assert views["teacher"]["max_abs_diff_row_vs_packed"] < 1e-4  # per-row scoring = the packed pass
        blocking, hidden_fraction, hidden = hand_rollout_placement(c, s, gen["gen_s"])
        assert views["rollout"]["blocking_s"] == pytest.approx(blocking, rel=1e-12, abs=1e-12)
        assert views["rollout"]["hidden_fraction"] == pytest.approx(hidden_fraction, rel=1e-12)
        last = [i for i, e in enumerate(end_steps) if e == len(steps)]
        assert last and all(hidden[i] == 0.0 for i in last)  # rows ending at the last step never hide
        assert views["rollout"]["blocking_s"] >= max(s[i] for i in last)
        assert views["actor"]["blocking_s"] == views["teacher"]["pack_s"] > 0
        for placement in ("actor", "rollout"):
            expected = gen["gen_s"] + views[placement]["blocking_s"] + report["update"]["total_s"]
            assert views[placement]["step_s"] == pytest.approx(expected)
        ratios = {p: report["views"]["3"][p]["step_s"] / report["views"]["1"][p]["step_s"] for p in ("actor", "rollout")}
    for placement, ratio in ratios.items():
        assert report["step_ratio_avsd_over_opsd"][placement] == pytest.approx(ratio)


def test_simulation_is_the_trainers_metric_and_a_worked_example(overlap):
    from verl_avsd.teacher_placement import placement_timing

    # rows end at 1, 2, 5, 5; scoring 0.5, 3, 1, 1; generation ends at 5:
    # row 0 runs 1-1.5, row 1 2-5, rows 2 and 3 (ending last) 5-6 and 6-7 -> blocking 2, hidden 3.5 of 5.5
    sim = overlap.simulate_rollout_placement([1.0, 2.0, 5.0, 5.0], [0.5, 3.0, 1.0, 1.0], 5.0)
    assert sim["blocking_s"] == 2.0 and sim["hidden_fraction"] == pytest.approx(3.5 / 5.5)
    assert sim["hidden_s"] == [0.5, 3.0, 0.0, 0.0] and sim["serial_s"] == 5.5

    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(1, 12)
        c = [rng.uniform(0, 10) for _ in range(n)]
        s = [rng.uniform(0.01, 3) for _ in range(n)]
        sim = overlap.simulate_rollout_placement(c, s, max(c))
        blocking, fraction, hidden = hand_rollout_placement(c, s, max(c))
        assert sim["blocking_s"] == pytest.approx(blocking) and sim["hidden_fraction"] == pytest.approx(fraction)
        assert sim["hidden_s"] == pytest.approx(hidden)
        f64 = lambda xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
        metric = placement_timing(f64(c), f64(sim["start_s"]), f64(sim["end_s"]))
        assert metric["avsd/teacher_blocking_s"] == pytest.approx(sim["blocking_s"])
        assert metric["avsd/teacher_hidden_fraction"] == pytest.approx(sim["hidden_fraction"])

    with pytest.raises(ValueError, match="3 row end times but 2 scoring times"):
        overlap.simulate_rollout_placement([1.0, 2.0, 3.0], [1.0, 1.0], 3.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch", "0"], "--batch must be >= 1, got 0"),
        (["--length-sigma", "-1"], "--length-sigma >= 0"),
        (["--model", "/nonexistent/model"], "--model /nonexistent/model: no config.json there"),
    ],
)
def test_bad_arguments_get_a_clear_error(overlap, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        overlap.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cluster_estimate_hides_nothing_without_a_tail_and_most_with_one(overlap):
    common = {"engines": 2, "rows_per_engine": 8, "t_dec_s": 0.01, "prefill_tps": 10_000.0, "views": [70, 35, 4], "trials": 3}
    flat = overlap.cluster_estimate(median=100, sigma=0.0, cap=400, rest_s=1.0, **common)
    # all rows end together: every row's views are scored after generation, one engine's share each
    tokens = 8 * (109 + 3 * 100)
    assert flat["m3_rollout_s"] == pytest.approx(tokens / 10_000.0) == pytest.approx(flat["m3_actor_s"])
    assert flat["m3_hidden_fraction"] == 0.0 and flat["ratio_rollout"] == pytest.approx(flat["ratio_actor"])
    gen = 100 * 0.01
    assert flat["ratio_actor"] == pytest.approx((gen + tokens / 1e4 + 1.0) / (gen + 8 * (70 + 100) / 1e4 + 1.0))
    tail = overlap.cluster_estimate(median=100, sigma=1.0, cap=400, rest_s=1.0, **common)
    assert tail["m3_hidden_fraction"] > 0.5 and tail["m3_rollout_s"] < tail["m3_actor_s"]
    assert 1.0 <= tail["ratio_rollout"] < tail["ratio_actor"]


def test_a_real_model_folder_gets_chat_prompts_and_its_own_lengths(overlap, tmp_path):
    toy = ROOT / "verl_avsd" / "assets" / "toy_model"
    argv = ["--model", str(toy), "--batch", "4", "--max-new-tokens", "24", "--view-tokens", "16", "--repeats", "1"]
    assert overlap.main([*argv, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_overlap_cpu.json").read_text())
    assert report["config"]["prompts"] == "chat" and report["config"]["lengths"] == "natural"
    gen = report["generation"]
    assert gen["targets"] == [0] * 4 and all(1 <= e <= 24 for e in gen["end_steps"])  # the model's own EOS or the cap
    views = report["views"]["3"]
    blocking, fraction, _ = hand_rollout_placement(gen["end_s"], views["teacher"]["row_s"], gen["gen_s"])
    assert views["rollout"]["blocking_s"] == pytest.approx(blocking) and views["rollout"]["hidden_fraction"] == pytest.approx(
        fraction
    )


def test_gpu_checks_brings_its_results_back_as_one_tar(tmp_path):
    """The device tool returns at most 8 files: gpu_checks.sh packs its 9 results into one tar.
    Run with a stand-in interpreter that writes only rollout_overlap's two files where asked."""
    repo, out = tmp_path / "repo", tmp_path / "out"
    (repo / "bench").mkdir(parents=True)
    out.mkdir()
    (repo / "bench" / "gpu_checks.sh").write_text((ROOT / "bench" / "gpu_checks.sh").read_text())
    fake = tmp_path / "python3"
    fake.write_text(
        textwrap.dedent(
            """\
            #!/usr/bin/env bash
            if [ "${1:-}" = bench/rollout_overlap.py ]; then
                while [ $# -gt 0 ]; do if [ "$1" = --out ]; then dir=$2; fi; shift; done
                echo '{}' > "$dir/gpu_overlap_cuda.json"; echo 'line' > "$dir/gpu_overlap_cuda.md"
            fi
            exit 0
            """
        )
    )
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": str(fake), "GPU_CHECKS_SECONDS": "100"}
    result = subprocess.run(
        ["bash", str(repo / "bench" / "gpu_checks.sh")], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["gpu_checks.log", "gpu_results.tar"]
    listing = subprocess.run(["tar", "-tf", str(out / "gpu_results.tar")], capture_output=True, text=True, check=True)
    assert listing.stdout.split() == ["placement/gpu_overlap_cuda.json", "placement/gpu_overlap_cuda.md"]
    assert "rollout overlap" in (out / "gpu_checks.log").read_text()
