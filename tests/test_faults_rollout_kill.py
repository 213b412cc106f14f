"""The rollout server killed by PID mid-run (as Ray's memory monitor or the kernel OOM killer
would) stops the run with a clear message after a bounded number of failed prompt groups, through
verl's real trainer. Before: the trainer kept replacing the failed prompts (225 in 150 s here,
504 in issue 13) and never exited."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from verl_avsd.toy import TOY_MODEL_DIR
from verl_avsd.toy_run import ToyRun, start_main_ppo, toy_data

TIMEOUT_S = 600
LIMIT = 8
STOP_WITHIN_S = 120  # from the kill to the run's exit


def _processes_of_run(pid: int, metrics) -> list[psutil.Process]:
    found = []
    try:
        root = psutil.Process(pid)
        found = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        pass
    for process in psutil.process_iter():
        try:
            if process not in found and process.environ().get("VERL_FILE_LOGGER_PATH") == str(metrics):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.mark.slow
def test_killed_rollout_server_stops_the_run_with_a_clear_message(tmp_path):
    data = toy_data(str(tmp_path / "data"), n_train=64, n_val=8)
    run_dir = tmp_path / "run"
    run = ToyRun(
        model_dir=str(TOY_MODEL_DIR),
        train_file=data["train"],
        val_file=data["val"],
        run_dir=str(run_dir),
        estimator="avsd",
        steps=6,
        prompts_per_step=4,
        max_response_length=24,
        extra_overrides=[f"+trainer.v1.avsd_sync.max_consecutive_rollout_failures={LIMIT}"],
    )
    metrics, log_file = run_dir / "verl_metrics.jsonl", tmp_path / "train.log"
    with open(log_file, "w") as log:
        process = start_main_ppo(run.overrides(), run_dir, log, TIMEOUT_S)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (metrics.exists() and metrics.read_text().count("\n") >= 1):  # step 1 trained
            assert process.poll() is None, log_file.read_text()[-3000:]
            assert time.monotonic() < deadline, "no step 1 in time"
            time.sleep(0.2)
        servers = [p for p in _processes_of_run(process.pid, metrics) if "HFRolloutServer" in " ".join(p.cmdline())]
        assert len(servers) == 1, servers
        os.kill(servers[0].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        returncode = process.wait(timeout=STOP_WITHIN_S)
        stopped_after = time.monotonic() - killed_at
    finally:
        for leftover in _processes_of_run(process.pid, metrics):
            try:
                os.kill(leftover.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    log_text = log_file.read_text(errors="replace")
    assert returncode != 0
    failed_groups = log_text.count("Error in _run_prompt")
    if "ActorDiedError" in log_text and "class_name: HFRolloutServer" in log_text and failed_groups == 0:
        # The kill landed while the trainer itself called the server (verl's sleep/wake of the
        # replicas between rollout and update): verl raises ActorDiedError naming it at once, no
        # prompt is generated, so nothing is there to count. A fast, named stop as well (seen in CI:
        # the run ended 52 s after the kill); the counter itself is tested in
        # test_faults_rollout_failures.py on verl's real buffer.
        print(f"stopped {stopped_after:.0f}s after the kill by verl's own ActorDiedError (HFRolloutServer)")
        return
    assert (
        f"prompt groups in a row failed their rollout with none finishing (trainer.v1.avsd_sync.max_consecutive_rollout_failures={LIMIT})"
        in log_text
    )
    assert "Dead: rollout server 0.0" in log_text
    # the limit, plus what was in flight when it tripped (the next batch, a round of replacements)
    assert LIMIT <= failed_groups <= LIMIT + 8, failed_groups
    print(f"stopped {stopped_after:.0f}s after the kill, {failed_groups} failed prompt groups")
