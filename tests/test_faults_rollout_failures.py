"""Rollouts that keep failing stop the run with a clear message (issue 13: with the rollout server
killed for memory, the trainer replaced the failed prompts of one step 504 times without progress).

The loop is verl's own: `avsd_sync` gets verl's async replay buffer, which evicts a failed prompt
group and submits a new prompt, forever. Here that real buffer runs against an in-memory stand-in
for TransferQueue in which every rollout fails (as with a dead server); the trainer's buffer must
stop after trainer.v1.avsd_sync.max_consecutive_rollout_failures groups. The real server killed
by PID is tests/test_faults_rollout_kill.py."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from verl.trainer.ppo.v1 import replay_buffer as verl_replay_buffer

from verl_avsd.rollout_failures import DEFAULT_LIMIT, LIMIT_KEY, ConsecutiveFailures, RolloutFailureError, failure_limit
from verl_avsd.trainer import AvsdTrainer

RUNAWAY = 500  # refills at which the buffer is declared unbounded (the issue saw 504)


class FailingTransferQueue:
    """TransferQueue's tag store, where each submitted prompt's rollout ends in `failure`
    (or `finished`, for the first `healthy` prompts)."""

    def __init__(self, healthy: int = 0, stuck: bool = False):
        self.tags: dict[str, dict] = {}
        self.submitted = 0
        self.healthy = healthy
        self.stuck = stuck  # the agent-loop worker died mid-generation: prompts stay `running`

    def submit(self, n: int) -> None:
        for _ in range(n):
            uid = f"p{self.submitted}"
            status = "running" if self.stuck else "finished" if self.submitted < self.healthy else "failure"
            self.tags[uid] = {"is_prompt": True, "status": status, "global_steps": 1}
            if status == "finished":
                self.tags[f"{uid}_0_0"] = {"status": "success", "global_steps": 1}
            self.submitted += 1
            if self.submitted > RUNAWAY:
                raise AssertionError(f"unbounded: {self.submitted} prompts submitted for one step")

    def kv_list(self):
        return {"train": dict(self.tags)}

    def kv_clear(self, keys, partition_id):
        for key in keys:
            self.tags.pop(key, None)


class Clock:
    """The buffer's polls, 2 s apart (verl's poll_interval), without sleeping."""

    def __init__(self):
        self.now, self.polls = 0.0, 0

    def poll(self, partition_id, last_debug_time):  # bound to the clock, not the buffer
        self.now += 2.0
        self.polls += 1
        if self.polls > RUNAWAY:
            raise AssertionError(f"unbounded: {self.polls} polls for one step")
        return last_debug_time


def _trainer_buffer(monkeypatch, tq, extra: dict | None = None, dead=("rollout server 0.0 (ActorDiedError)",)):
    """The replay buffer the AVSD trainer builds (verl's, with the trainer's additions), on `tq`."""
    clock = Clock()
    monkeypatch.setattr(verl_replay_buffer, "tq", tq)
    monkeypatch.setattr(verl_replay_buffer.ReplayBufferAsync, "_wait_for_next_poll", clock.poll)
    config = OmegaConf.create(
        {
            "trainer": {
                "v1": {
                    "trainer_mode": "avsd_sync",
                    "sampler": {
                        "max_off_policy_threshold": 8,
                        "max_off_policy_strategy": "drop",
                        "sync_refill_failed_groups": False,
                        "sampler_kwargs": {},
                    },
                    **(extra or {}),
                }
            },
            "algorithm": {},
            "data": {"train_batch_size": 4},
        }
    )
    trainer = object.__new__(AvsdTrainer)  # no Ray, no workers: only the replay buffer
    trainer.config, trainer.trainer_mode, trainer.global_steps = config, "avsd_sync", 1
    trainer.rollout_failures = ConsecutiveFailures(failure_limit(config), lambda: list(dead), clock=lambda: clock.now)
    trainer._add_prompts_to_generate = tq.submit  # verl's refill_fn: fetch and submit new prompts
    return trainer._build_replay_buffer()


def test_a_step_whose_rollouts_all_fail_stops_with_a_clear_message(monkeypatch):
    tq = FailingTransferQueue()
    buffer = _trainer_buffer(monkeypatch, tq, {"avsd_sync": {"max_consecutive_rollout_failures": 8}})
    tq.submit(4)  # the step's batch (prepare_step)
    with pytest.raises(RolloutFailureError) as error:
        buffer.sample(global_steps=1, partition_id="train", batch_size=4)
    message = str(error.value)
    assert "8 prompt groups in a row failed" in message and f"{LIMIT_KEY}=8" in message
    assert "Dead: rollout server 0.0 (ActorDiedError)" in message and "out of memory" in message
    assert tq.submitted == 8  # the batch + one round of replacements, then it stopped


def test_the_default_limit_bounds_it_too(monkeypatch):
    tq = FailingTransferQueue()
    buffer = _trainer_buffer(monkeypatch, tq)
    tq.submit(4)
    with pytest.raises(RolloutFailureError, match=f"{DEFAULT_LIMIT} prompt groups in a row"):
        buffer.sample(global_steps=1, partition_id="train", batch_size=4)
    assert tq.submitted <= DEFAULT_LIMIT + 4


def test_a_healthy_step_with_a_failure_still_trains(monkeypatch):
    """One failed group among finished ones is replaced, as verl does, and the step goes on."""
    tq = FailingTransferQueue(healthy=3)
    buffer = _trainer_buffer(monkeypatch, tq, {"avsd_sync": {"max_consecutive_rollout_failures": 2}})
    tq.submit(4)  # 3 finish, 1 fails
    tq.healthy = 10  # the replacement finishes
    batch, _ = buffer.sample(global_steps=1, partition_id="train", batch_size=4)
    assert len({key.split("_")[0] for key in batch.keys}) == 4 and tq.submitted == 5


def test_prompts_stuck_on_a_dead_agent_loop_worker_stop_the_run(monkeypatch):
    """A worker killed mid-generation fails nothing; its prompts stay `running` forever."""
    tq = FailingTransferQueue(stuck=True)
    buffer = _trainer_buffer(monkeypatch, tq, dead=["agent-loop worker 0 (ActorDiedError)"])
    tq.submit(4)
    with pytest.raises(RolloutFailureError, match=r"4 prompt groups have waited 60 s .* Dead: agent-loop worker 0"):
        buffer.sample(global_steps=1, partition_id="train", batch_size=4)


def test_slow_but_live_rollouts_keep_waiting():
    clock = [0.0]
    asked = []
    seen = ConsecutiveFailures(limit=3, describe_dead=lambda: asked.append(clock[0]) or [], clock=lambda: clock[0])
    for _ in range(100):  # 200 s without a change, every actor alive
        clock[0] += 2.0
        seen.observe(set(), set(), step=1, in_flight={"a", "b"})
    assert asked == [62.0, 122.0, 182.0]  # quiet from the first poll (2 s) on: checked once a minute, never stopped


def test_failures_count_only_in_a_row():
    seen = ConsecutiveFailures(limit=3)
    seen.observe(set(), {"a", "b"}, step=1)
    seen.observe({"c"}, {"a", "b"}, step=1)  # a group finished: the count starts over
    assert seen.count == 0
    seen.observe({"c"}, {"d", "e"}, step=1)
    with pytest.raises(RolloutFailureError, match="stopping at step 2: 3 prompt groups"):
        seen.observe({"c"}, {"f"}, step=2)


@pytest.mark.parametrize("bad", [0, -1, 2.5, "many", True, None])
def test_the_limit_must_be_a_positive_integer(bad):
    config = OmegaConf.create({"trainer": {"v1": {"avsd_sync": {"max_consecutive_rollout_failures": bad}}}})
    with pytest.raises(ValueError, match=LIMIT_KEY.replace(".", r"\.")):
        failure_limit(config)
    assert failure_limit(OmegaConf.create({"trainer": {"v1": {}}})) == DEFAULT_LIMIT


def test_dead_actors_names_only_actors_ray_reports_dead():
    """A real Ray actor killed with ray.kill is named, a live one is not."""
    import ray

    from verl_avsd.rollout_failures import dead_actors

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)  # its own cluster
    try:

        @ray.remote
        class Server:
            def ping(self):
                return 1

        live, killed = Server.remote(), Server.remote()
        ray.get([live.ping.remote(), killed.ping.remote()])
        ray.kill(killed)
        assert dead_actors({"live": live, "killed": killed}) == ["killed (ActorDiedError)"]
    finally:
        ray.shutdown()
