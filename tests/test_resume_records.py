"""A run resumed from its step-K checkpoint keeps steps 1..K of the killed run's metrics and
rollout dumps and writes K+1.. once (issue 13: verl's file logger opened the metrics file with
"wb" and erased them; the interrupted step's dump was appended twice). No Ray here: verl's own
`PPOTrainer.fit` is replaced by a stand-in that builds verl's `Tracking` the way fit does and logs
the steps after the checkpoint. The real kill -9 + resume is tests/test_resume_kill.py."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.tracking import Tracking

from verl_avsd.config import avsd_config
from verl_avsd.resume import drop_dumps_after, keep_metric_lines
from verl_avsd.trainer import AvsdTrainer


def _line(step: int, value: float) -> str:
    return json.dumps({"step": step, "data": {"critic/score/mean": value}}) + "\n"


def _steps(path) -> list[tuple[int, float]]:
    return [(r["step"], r["data"]["critic/score/mean"]) for r in map(json.loads, path.read_text().splitlines())]


def test_keep_metric_lines_keeps_steps_through_the_checkpoint_byte_for_byte(tmp_path):
    path = tmp_path / "m.jsonl"
    old = [_line(0, 0.5), _line(1, 0.1), _line(2, 0.2), _line(3, 0.3)]
    path.write_text("".join(old) + '{"step": 4, "da')  # killed while writing step 4
    assert keep_metric_lines(path, 2) == (3, 2)
    assert path.read_text() == "".join(old[:3])
    assert keep_metric_lines(tmp_path / "missing.jsonl", 2) == (0, 0)


def test_drop_dumps_after_removes_only_later_steps_dump_files(tmp_path):
    for name in ("rollouts_step1.jsonl", "rollouts_step2.jsonl", "rollouts_step3.jsonl", "rollouts_step10.jsonl", "notes.txt"):
        (tmp_path / name).write_text("x\n")
    assert drop_dumps_after(tmp_path, 2) == [3, 10]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "rollouts_step1.jsonl", "rollouts_step2.jsonl"]


@pytest.fixture
def killed_run(tmp_path, monkeypatch):
    """A run killed during step 4 after its step-2 checkpoint: metrics of steps 1-3 logged,
    dumps of steps 1-4 written (step 4 half)."""
    metrics = tmp_path / "verl_metrics.jsonl"
    metrics.write_text(_line(1, 0.1) + _line(2, 0.2) + _line(3, 0.3))
    dumps = tmp_path / "rollouts"
    dumps.mkdir()
    for step in (1, 2, 3, 4):
        (dumps / f"rollouts_step{step}.jsonl").write_text(json.dumps({"step": step, "key": "a"}) + "\n")
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(metrics))
    return metrics, dumps


def _trainer(dumps, resumed_step: int, monkeypatch, steps: int = 4):
    t = object.__new__(AvsdTrainer)  # no Ray, no workers: only fit's bookkeeping runs
    t.avsd = avsd_config({"avsd": {"dump_rollouts_dir": str(dumps)}})
    t.config = OmegaConf.create({"trainer": {"logger": ["console", "file"], "project_name": "p", "experiment_name": "e"}})
    t.global_steps = resumed_step

    def verl_fit(self, agent_loop_manager):
        """PPOTrainer.fit's logging: its Tracking, then one line and one dump per step after the checkpoint."""
        assert not any((dumps / f"rollouts_step{s}.jsonl").exists() for s in range(resumed_step + 1, steps + 1))
        self.logger = Tracking("p", "e", default_backend=self.config.trainer.logger)
        for step in range(resumed_step + 1, steps + 1):
            with open(dumps / f"rollouts_step{step}.jsonl", "a") as f:  # as AvsdTrainer._dump_rollouts
                f.write(json.dumps({"step": step, "key": "a"}) + "\n")
            self.logger.log({"critic/score/mean": step + 0.5}, step)
        self.logger.finish()

    monkeypatch.setattr(PPOTrainerSync, "fit", verl_fit)
    return t


def test_resumed_run_keeps_earlier_steps_and_logs_each_step_once(killed_run, monkeypatch):
    metrics, dumps = killed_run
    trainer = _trainer(dumps, resumed_step=2, monkeypatch=monkeypatch)
    trainer.fit(agent_loop_manager=None)
    # steps 1-2 as the killed run logged them (the checkpoint's), 3-4 from the resumed run, once each
    assert _steps(metrics) == [(1, 0.1), (2, 0.2), (3, 3.5), (4, 4.5)]
    for step in (1, 2, 3, 4):
        assert len((dumps / f"rollouts_step{step}.jsonl").read_text().splitlines()) == 1, step
    assert list(trainer.config.trainer.logger) == ["console", "file"]  # the user's setting is back
    assert trainer.logger is not None and "file" in trainer.logger.logger


def test_fresh_run_starts_the_metrics_file_over_like_verl(killed_run, monkeypatch):
    metrics, dumps = killed_run
    _trainer(dumps, resumed_step=0, monkeypatch=monkeypatch, steps=2).fit(agent_loop_manager=None)
    assert _steps(metrics) == [(1, 1.5), (2, 2.5)]
    assert sorted(p.name for p in dumps.iterdir()) == ["rollouts_step1.jsonl", "rollouts_step2.jsonl"]
