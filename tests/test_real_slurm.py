"""A real SLURM cluster of one node on this machine (launch/local_slurm.sh: Debian's slurm-wlm and
munge, private config, state, ports and munge socket): launch/slurm_avsd.sbatch in CPU mode
runs the CPU toy recipe inside an allocation, as a user would submit it (its srun step starts
the Ray head, the recipe's driver joins it through RAY_ADDRESS), and the run's metrics are
checked. CI starts the cluster first (`make slurm-up` in .ci/run); when it is not up, this test
starts it and stops it afterwards."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from verl_avsd.run_files import read_metrics_file

REPO = Path(__file__).resolve().parents[1]
LOCAL_SLURM = REPO / "launch" / "local_slurm.sh"
SLURM_DIR = os.environ.get("AVSD_SLURM_DIR", "/tmp/avsd-slurm")
STEPS = 3
# Private Ray ports for the job's Ray (the README's "SLURM on this machine" uses the same).
RAY_PORT, RAY_CLIENT_PORT, RAY_DASHBOARD_PORT = 6396, 6397, 8276
RAY_AGENT_PORTS = (52378, 52379)


def local_slurm(action: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(LOCAL_SLURM), action, "--dir", SLURM_DIR],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def slurm_conf():
    """SLURM_CONF of the local cluster, started here if it is not up (and then stopped here)."""
    started = False
    if local_slurm("status", timeout=60).returncode != 0:
        up = local_slurm("up", timeout=1800)  # may install slurm-wlm and munge first
        assert up.returncode == 0, f"launch/local_slurm.sh up failed:\n{up.stdout}{up.stderr}"
        started = True
    try:
        yield str(Path(SLURM_DIR) / "slurm.conf")
    finally:
        if started:
            local_slurm("down", timeout=120)


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (the job's private Ray temp dir: only its Ray has it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow
def test_sbatch_runs_the_cpu_toy_recipe_to_completion(slurm_conf, tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="avsd-sl-", dir="/tmp")  # Ray's socket paths: keep it short
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVSD_", "SLURM_", "RAY_")) and k != "RECIPE"}
    env["SLURM_CONF"] = slurm_conf
    env["AVSD_VENV"] = str(Path(sys.executable).parent.parent)  # the job activates this test's environment
    settings = {
        "AVSD_CPU": "1",
        # two data-parallel ranks (placeholder GPUs) on the one node: the teacher's rank grouping
        # (avsd/teacher_grouped_by_prompt) only happens with more than one
        "AVSD_GPUS_PER_NODE": "2",
        "RECIPE": "launch/recipes/cpu_toy.sh",
        "AVSD_OUTPUT_DIR": str(tmp_path / "runs"),
        "AVSD_EXPERIMENT": "slurm_toy",
        "AVSD_TIMEOUT_S": "900",
        "AVSD_RAY_WAIT_S": "120",
        "RAY_PORT": str(RAY_PORT),
        "RAY_DASHBOARD_PORT": str(RAY_DASHBOARD_PORT),
        "AVSD_RAY_START_FLAGS": f"--temp-dir={ray_tmp} --dashboard-agent-listen-port={RAY_AGENT_PORTS[0]}"
        f" --dashboard-agent-grpc-port={RAY_AGENT_PORTS[1]} --min-worker-port=20000 --max-worker-port=20999",
        "AVSD_RAY_HEAD_FLAGS": f"--ray-client-server-port={RAY_CLIENT_PORT}",
    }
    env.update(settings)
    output = tmp_path / "slurm-%j.out"
    start = time.monotonic()
    try:
        # --export=ALL: the settings above travel to the job; --wait: return when it ended, with its status
        sbatch = subprocess.run(
            ["timeout", "-k", "30", "1500", "sbatch", "--wait", "--parsable", "--nodes=1", "--cpus-per-task=16",
             "--time=30", f"--output={output}", "--export=ALL", "launch/slurm_avsd.sbatch",
             f"trainer.total_training_steps={STEPS}"],
            cwd=REPO, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        seconds = time.monotonic() - start
        job_id = sbatch.stdout.strip().split(";")[0]
        outputs = list(tmp_path.glob("slurm-*.out"))
        log = outputs[0].read_text(errors="replace") if outputs else ""
        assert sbatch.returncode == 0, f"sbatch failed ({sbatch.returncode}): {sbatch.stderr}\n{log[-6000:]}"
        assert re.fullmatch(r"\d+", job_id), sbatch.stdout

        # the allocation was CPU-only, the head's address is the node's own, and Ray came up
        assert "CPU mode: 2 placeholder GPUs and 16 CPUs per node" in log, log[-4000:]
        assert "Ray cluster up: 1 nodes, 2 GPUs" in log, log[-4000:]
        metrics = read_metrics_file(tmp_path / "runs" / "slurm_toy" / "verl_metrics.jsonl")
        assert sorted(metrics) == list(range(1, STEPS + 1))
        for step, row in metrics.items():
            assert row["avsd/teacher_grouped_by_prompt"] == 1.0, (step, row)
        timings = {"job_s": round(seconds, 1), "step_s": [round(metrics[s]["timing_s/step"], 1) for s in sorted(metrics)]}
        print(f"\n[real slurm, 1 node] {json.dumps(timings)}", file=sys.stderr)

        # the job's Ray ended with the job
        deadline = time.monotonic() + 30
        while processes_mentioning(ray_tmp) and time.monotonic() < deadline:
            time.sleep(1)
        assert not processes_mentioning(ray_tmp), "the job's Ray processes outlived the job"
    finally:
        for pid in processes_mentioning(ray_tmp):  # only the job's Ray has this temp dir
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
