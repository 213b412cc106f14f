"""A real Ray cluster of two nodes on this machine: a head and a worker started with
launch/ray_start.sh (127.0.0.1, private ports and temp dirs, token auth from a private token),
the CPU toy recipe submitted as a Ray job with launch/submit_job.sh, one data-parallel rank on
each node. It checks what a cluster run has to deliver: the job succeeds, every step ran and
logged avsd/teacher_grouped_by_prompt = 1.0, and verl's training workers ran on both nodes.

Ray may already run on this host (other tests, other users): nothing here uses a default port,
the default temp dir or `ray stop`; the processes this test started are stopped by PID."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from verl_avsd.run_files import read_metrics_file

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
STEPS = 3

# Private ports: GCS, Ray client, dashboard, and per node its raylet, object manager, agents and
# worker range. The same numbers are in launch/README.md ("Two Ray nodes on one machine").
GCS_PORT, DASHBOARD_PORT = 6390, 8270
HEAD_PORTS = dict(
    node_manager=6392, object_manager=6393, agent_listen=52370, agent_grpc=52372, runtime_env=52374,
    metrics=52376, min_worker=20000, max_worker=20499,
)  # fmt: skip
WORKER_PORTS = dict(
    node_manager=6394, object_manager=6395, agent_listen=52371, agent_grpc=52373, runtime_env=52375,
    metrics=52377, min_worker=20500, max_worker=20999,
)  # fmt: skip


def ray_start_flags(ports: dict[str, int]) -> list[str]:
    """The `ray start` flags (after ray_start.sh's `--`) that keep a node off Ray's default ports."""
    return [
        f"--node-manager-port={ports['node_manager']}",
        f"--object-manager-port={ports['object_manager']}",
        f"--dashboard-agent-listen-port={ports['agent_listen']}",
        f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
        f"--runtime-env-agent-port={ports['runtime_env']}",
        f"--metrics-export-port={ports['metrics']}",
        f"--min-worker-port={ports['min_worker']}",
        f"--max-worker-port={ports['max_worker']}",
    ]


def assert_ports_free(ports) -> None:
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError as e:
                raise AssertionError(f"port {port} is taken ({e}): is another run of this test still up?") from e


def script_env(token_file: Path) -> dict[str, str]:
    """What a user's shell has after `source .venv/bin/activate`, plus a Ray token (as
    ~/.ray/auth_token would be after any local ray.init()) and no RAY_AUTH_MODE: the launch
    scripts must agree on token mode by themselves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AVSD_", "SLURM_", "RAY_")) and k != "RECIPE"}
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    env["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    return env


def descendants(root: int) -> set[int]:
    """PIDs of `root`'s process tree and of every process in its session (Ray's reaper and
    workers may be re-parented), read from /proc."""
    parent, session = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry.name)], session[int(entry.name)] = int(fields[1]), int(fields[3])
    tree, grew = {root}, True
    while grew:
        new = {pid for pid, ppid in parent.items() if ppid in tree} - tree
        tree |= new
        grew = bool(new)
    return tree | {pid for pid, sid in session.items() if sid == root}


def stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to each `ray start --block` we started (Ray then stops its node), then SIGKILL
    to whatever of their process trees is left, by PID."""
    pids = set()
    for p in processes:
        pids |= descendants(p.pid)
    for p in reversed(processes):  # worker first
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for p in processes:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    time.sleep(2)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in processes:
        if p.poll() is None:
            p.wait(timeout=10)


def ray_status(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAY, "status", "--address", f"127.0.0.1:{GCS_PORT}"],
        env={**env, "RAY_AUTH_MODE": "token"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_for_gpus(want: int, env, processes, logs, timeout_s: float = 180) -> None:
    """Until `ray status` counts `want` (placeholder) GPUs, one a node."""
    deadline, status = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        for p, log in zip(processes, logs):
            assert p.poll() is None, f"ray start ended ({p.returncode}):\n{log.read_text()[-4000:]}"
        status = ray_status(env)
        if status.returncode == 0 and f"/{want}.0 GPU" in status.stdout:
            return
        time.sleep(2)
    raise AssertionError(f"Ray did not reach {want} GPUs in {timeout_s}s; last `ray status`:\n{status.stdout}{status.stderr}")


def start_node(args: list[str], env, log: Path) -> subprocess.Popen:
    # a session of its own: its whole tree can be found (and stopped) by the PID we get here
    with open(log, "w") as out:
        return subprocess.Popen(
            ["bash", str(LAUNCH / "ray_start.sh"), *args],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def training_worker_nodes(env) -> set[str]:
    """The Ray nodes verl's training workers (the actors of its worker groups) ran on."""
    listed = subprocess.run(
        [RAY, "list", "actors", "--address", f"http://127.0.0.1:{DASHBOARD_PORT}", "--detail",
         "--format", "json", "--limit", "1000"],
        env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    actors = json.loads(listed.stdout)
    return {a["node_id"] for a in actors if "WorkerDict" in a["class_name"]}


@pytest.mark.slow
def test_cpu_toy_job_on_a_two_node_ray_cluster(tmp_path):
    all_ports = [GCS_PORT, GCS_PORT + 1, DASHBOARD_PORT, *HEAD_PORTS.values(), *WORKER_PORTS.values()]
    assert_ports_free(all_ports)
    # Ray's unix sockets live under the temp dir, and their paths may not exceed ~107 characters:
    # pytest's tmp_path is too long for that.
    ray_tmp = Path(tempfile.mkdtemp(prefix="avsd-ray-", dir="/tmp"))
    token_file = tmp_path / "ray_token"
    token_file.write_text(secrets.token_hex(32))
    env = script_env(token_file)
    processes, logs = [], []
    timings = {}
    try:
        start = time.monotonic()
        head_args = [
            "head", "--node-ip", "127.0.0.1", "--port", str(GCS_PORT), "--dashboard-port", str(DASHBOARD_PORT),
            "--num-gpus", "1", "--num-cpus", "8", "--temp-dir", str(ray_tmp / "h"), "--block",
            "--", f"--ray-client-server-port={GCS_PORT + 1}", *ray_start_flags(HEAD_PORTS),
        ]  # fmt: skip
        logs.append(tmp_path / "head.log")
        processes.append(start_node(head_args, env, logs[-1]))
        wait_for_gpus(1, env, processes, logs)
        worker_args = [
            "worker", "--address", f"127.0.0.1:{GCS_PORT}", "--node-ip", "127.0.0.1",
            "--num-gpus", "1", "--num-cpus", "8", "--temp-dir", str(ray_tmp / "w"), "--block",
            "--", *ray_start_flags(WORKER_PORTS),
        ]  # fmt: skip
        logs.append(tmp_path / "worker.log")
        processes.append(start_node(worker_args, env, logs[-1]))
        wait_for_gpus(2, env, processes, logs)
        timings["cluster_start_s"] = time.monotonic() - start
        # the head's notes name the auth mode it chose by itself, and how to reach it
        head_log = logs[0].read_text()
        assert "auth token" in head_log and f"127.0.0.1:{GCS_PORT}" in head_log, head_log[-3000:]

        start = time.monotonic()
        job_env = {
            **env,
            "AVSD_NNODES": "2",
            "AVSD_GPUS_PER_NODE": "1",
            "AVSD_OUTPUT_DIR": str(tmp_path / "runs"),
            "AVSD_EXPERIMENT": "two_nodes",
            "AVSD_TIMEOUT_S": "900",
        }
        job = subprocess.run(
            ["timeout", "-k", "30", "1200", "bash", str(LAUNCH / "submit_job.sh"),
             "--address", f"http://127.0.0.1:{DASHBOARD_PORT}",
             "launch/recipes/cpu_toy.sh", f"trainer.total_training_steps={STEPS}"],
            cwd=REPO, env=job_env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        timings["job_s"] = time.monotonic() - start
        (tmp_path / "job.log").write_text(job.stdout + job.stderr)
        assert job.returncode == 0, f"job failed ({job.returncode}):\n{(job.stdout + job.stderr)[-6000:]}"

        metrics = read_metrics_file(tmp_path / "runs" / "two_nodes" / "verl_metrics.jsonl")
        assert sorted(metrics) == list(range(1, STEPS + 1))
        for step, row in metrics.items():
            assert row["avsd/teacher_grouped_by_prompt"] == 1.0, (step, row)
        timings["step_s"] = [round(metrics[s]["timing_s/step"], 1) for s in sorted(metrics)]
        # one rank on each node: verl's worker actors ran on both
        assert len(training_worker_nodes(env)) == 2
        print(f"\n[real ray, 2 nodes] {json.dumps({k: v if isinstance(v, list) else round(v, 1) for k, v in timings.items()})}")
    finally:
        stop(processes)
        shutil.rmtree(ray_tmp, ignore_errors=True)
