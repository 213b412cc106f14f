"""kill -9 mid-run after a checkpoint, then resume, through verl's real trainer (issue 13).

The shipped toy model trains 3 AVSD steps with a checkpoint at step 2 and rollout dumps. The run
is killed (SIGKILL to the driver and every process under it, as a node loss would) while step 3
is under way: after its rollouts were dumped, before its checkpoint. Resumed, the run must end
with what an uninterrupted run has: steps [1, 2, 3] in verl_metrics.jsonl, one line each, steps
1-2 exactly as the killed run logged them, and one dump of each step's rollouts (before the fix:
steps 1-2 erased, step 3's rows dumped twice)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from verl_avsd.toy import TOY_MODEL_DIR
from verl_avsd.toy_run import ToyRun, run_main_ppo, start_main_ppo, toy_data

TIMEOUT_S = 600
PROMPTS = 4


def _kill_tree(pid: int, metrics: Path) -> None:
    """SIGKILL the process and every process under it (Ray's head processes, actors, workers), and
    any process of this run that Ray re-parented (they all carry its VERL_FILE_LOGGER_PATH)."""
    tree = []
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        pass
    for process in psutil.process_iter():
        try:
            if process not in tree and process.environ().get("VERL_FILE_LOGGER_PATH") == str(metrics):
                tree.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    for process in tree:
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    psutil.wait_procs(tree, timeout=30)


def _lines_per_step(path: Path) -> Counter:
    return Counter(json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip())


@pytest.mark.slow
def test_kill_after_checkpoint_then_resume_keeps_each_step_once(tmp_path):
    data = toy_data(str(tmp_path / "data"), n_train=32, n_val=8)
    run_dir = tmp_path / "run"
    run = ToyRun(
        model_dir=str(TOY_MODEL_DIR),
        train_file=data["train"],
        val_file=data["val"],
        run_dir=str(run_dir),
        estimator="avsd",
        steps=3,
        prompts_per_step=PROMPTS,
        max_response_length=24,
        save_freq=2,
        dump_rollouts=True,
        resume=True,
    )
    metrics, dumps, ckpt = run_dir / "verl_metrics.jsonl", run_dir / "rollouts", run_dir / "checkpoints"

    # 1. the run, killed as soon as step 3's rollouts are dumped (before its checkpoint)
    with open(tmp_path / "killed.log", "w") as log:
        process = start_main_ppo(run.overrides(), run_dir, log, TIMEOUT_S)
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while not (dumps / "rollouts_step3.jsonl").exists():
                assert process.poll() is None, "the run ended before step 3:\n" + (tmp_path / "killed.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no step 3 in time"
                time.sleep(0.05)
        finally:
            _kill_tree(process.pid, metrics)
    _kill_tree(process.pid, metrics)  # nothing of the killed run may live on into the resumed one
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "2", "the kill came after step 3's checkpoint"
    killed_lines = {json.loads(line)["step"]: line for line in metrics.read_text().splitlines() if line.strip()}
    assert sorted(killed_lines) == [1, 2]  # step 3 was under way
    assert (dumps / "rollouts_step3.jsonl").read_text()  # and had dumped (part of) its rollouts

    # 2. resumed: step 3 again, from the step-2 checkpoint
    result = run_main_ppo(run.overrides(), run_dir, timeout_s=TIMEOUT_S)
    assert result.returncode == 0, result.log_tail()
    assert "resumed at step 2" in result.log_tail(200_000)

    # 3. what an uninterrupted run has: each step once, steps 1-2 as logged before the kill
    assert _lines_per_step(metrics) == Counter({1: 1, 2: 1, 3: 1})
    after = {json.loads(line)["step"]: line for line in metrics.read_text().splitlines() if line.strip()}
    assert after[1] == killed_lines[1] and after[2] == killed_lines[2]
    assert sorted(result.metrics) == [1, 2, 3]
    for step in (1, 2, 3):
        rows = [json.loads(line) for line in (dumps / f"rollouts_step{step}.jsonl").read_text().splitlines()]
        real = [r for r in rows if not r["is_padding"]]
        assert len(real) == PROMPTS and len({r["key"] for r in rows}) == len(rows), (step, len(rows))
        assert {r["step"] for r in rows} == {step}
