"""The trainer's seam to verl 0.9.1: every private verl name the AVSD trainer reads, overrides or
edits, as a small named function or constant. `verl_avsd/trainer.py` imports these and touches no
private verl name itself; the worker and rollout side has its own seam (workers/verl_worker_seam.py).

Written against verl 0.9.1 (and the transfer_queue it pins). What would break on an upgrade, item
by item, and the test that fails first, by name (all in tests/test_verl_seam.py unless said):

1. Workers. `PPOTrainer._init_resource_pool_mgr` fills `trainer.role_worker_mapping` (Role -> Ray
   worker class) and `trainer.mapping` (Role -> pool name); the AVSD trainer edits both in place
   after verl's own method (`build_ref_model_with_actor`: Role.ActorRollout -> ActorRolloutRef;
   `use_actor_worker_class`). Renamed attributes or Role members: test_role_mapping_is_verls.
2. The advantage step. The teacher path replaces `PPOTrainer._compute_advantage`, so it mirrors
   each of verl's steps or refuses the setting: KL in reward (refused in the trainer), rollout
   correction (`rollout_correction_config`, `apply_rollout_correction`: verl's own
   `rollout_corr_helper.compute_rollout_correction_and_add_to_batch`), multi-output agent loops
   (`check_one_output_per_session`; verl groups them in `v1.utils.compute_advantage_for_multi_trajectories`).
   A new step in verl's method: test_compute_advantage_calls_only_what_the_teacher_path_mirrors;
   verl's helper or key format changed: test_rollout_correction_is_verls_function,
   test_multi_output_key_format_is_verls; the behaviour: tests/test_trainer_verl_steps.py.
   The methods AvsdTrainer overrides (`_init_resource_pool_mgr`, `_compute_advantage`,
   `_build_replay_buffer`, `fit`) renamed in verl, leaving an override dead:
   test_the_methods_avsd_trainer_overrides_are_still_called_by_verl.
3. The actor's data-parallel size: `WorkerGroup._dispatch_info` / `Worker._query_dispatch_info`,
   read as `PPOTrainer._balance_batch` reads them (`actor_dp_size`): test_dispatch_info_is_verls.
4. TransferQueue. The field names verl writes per sample (constants below), `tq.kv_batch_get`
   (a field no sample has is left out, which verl relies on for optional fields such as
   rollout_log_probs) and `tq.kv_batch_put` (the returned batch meta lists the new fields, so a
   worker receives them), the batch tags `is_padding` (verl's upsampling padding) and `seq_len`:
   `get_fields`, `put_fields`, `put_rows`, `is_real`, `seq_lens`. A renamed field fails the
   trainer tests (tests/test_trainer_*.py, test_sibling_view.py, test_epistemic.py) and
   test_field_names_are_the_ones_verl_writes.
5. The replay buffer. `ReplayBuffer._sync_metadata_from_transfer_queue` refreshes `pending_keys`,
   `running_keys`, `finished_keys`, `failure_keys` (partition -> set of uids); the failure counter
   wraps it (`observe_group_status`): test_replay_buffer_status_sets_are_verls and
   tests/test_faults_rollout_failures.py.
6. The rollout actors, for naming a dead one: `trainer.llm_server_manager.rollout_replicas[].servers`
   and `trainer.agent_loop_manager.agent_loop_workers` (`rollout_actors`): test_rollout_actor_attributes_are_verls.
7. Logging. `PPOTrainer.fit` builds `self.logger = Tracking(...)` from `config.trainer.logger`,
   and `Tracking.logger` maps a backend name to its logger (`add_tracking_backend`):
   test_fit_builds_tracking_from_the_config and tests/test_resume_records.py.
"""

from __future__ import annotations

import ray
import torch
import transfer_queue as tq
from tensordict import TensorDict
from verl.trainer.ppo.utils import Role
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl.workers.utils.padding import response_to_nested

# ---- 4. TransferQueue: per-sample field names verl writes (agent loop, reward, old_log_prob, advantage) ----

UID = "uid"  # the prompt's uid: rollouts of one prompt share it (a GRPO group)
RESPONSES = "responses"  # response token ids, nested [B] x [T_b]
RESPONSE_MASK = "response_mask"  # 1 on tokens that train, nested
RM_SCORES = "rm_scores"  # token-level reward (the sequence reward on the last token), nested
OLD_LOG_PROBS = "old_log_probs"  # the student's log-probs (PPOTrainer._compute_old_log_prob), nested
ROLLOUT_LOG_PROBS = "rollout_log_probs"  # the rollout engine's, only with rollout.calculate_log_probs
EXTRA_INFO = "extra_info"  # the dataset row's extra_info dict (non-tensor)
ADVANTAGES = "advantages"  # written by the advantage step, nested
RETURNS = "returns"
ROLLOUT_IS_WEIGHTS = "rollout_is_weights"  # rollout correction's importance weights, read by the actor loss

# the multi-output key layout of verl's agent loop (v1.agent_loop_tq.AgentLoopWorkerTQ._agent_loop_postprocess)
TRAJECTORY_KEY_FORMAT = "{uid}_{session_id}_{index}"


def get_fields(batch, fields: list[str]) -> TensorDict:
    """The per-sample `fields` of `batch` (a KVBatchMeta), in batch order; per-token fields nested."""
    return tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=list(fields))


def put_fields(batch, fields: dict[str, torch.Tensor] | TensorDict):
    """Store per-sample fields (a leading batch dim) for `batch`; returns the batch meta that
    lists them, which the next worker call must be given to receive them."""
    if not isinstance(fields, TensorDict):
        fields = TensorDict(dict(fields), batch_size=len(batch))
    return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)


def put_rows(batch, rows: list[dict]):
    """`put_fields` from one dict per sample (non-tensor values, e.g. the view texts)."""
    return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=list_of_dict_to_tensordict(rows))


def nested_like(padded: torch.Tensor, nested_mask: torch.Tensor) -> torch.Tensor:
    """A right-padded [B, T] per-token tensor nested like `nested_mask` (as TransferQueue stores it)."""
    return response_to_nested(padded, nested_mask)


def is_real(batch) -> list[bool]:
    """Per sample: a real rollout, not one of the copies `PPOTrainer._balance_batch` pads the batch with."""
    return [not tag.get("is_padding", False) for tag in batch.tags]


def seq_lens(batch) -> list[int]:
    """Per sample: prompt + response tokens (the tag the agent loop sets, verl's balancing reads)."""
    return [tag["seq_len"] for tag in batch.tags]


# ---- 1. workers: verl's role -> worker class mapping, edited after PPOTrainer._init_resource_pool_mgr ----


def build_ref_model_with_actor(trainer) -> None:
    """Make verl build the reference model on the actor workers (Role.ActorRolloutRef), as it does
    for a KL term; a no-op when it does already."""
    if Role.ActorRollout in trainer.role_worker_mapping:
        del trainer.role_worker_mapping[Role.ActorRollout]
        trainer.mapping[Role.ActorRolloutRef] = trainer.mapping.pop(Role.ActorRollout)
        trainer.role_worker_mapping[Role.ActorRolloutRef] = None  # set by use_actor_worker_class


def has_separate_actor(trainer) -> bool:
    """Whether verl placed the actor apart from the rollout (Role.Actor: no hybrid engine)."""
    return Role.Actor in trainer.role_worker_mapping


def use_actor_worker_class(trainer, worker_cls: type) -> None:
    """Run the colocated actor (+ rollout, + ref) role on `worker_cls`, a subclass of verl's worker."""
    for role in (Role.ActorRollout, Role.ActorRolloutRef):
        if role in trainer.role_worker_mapping:
            trainer.role_worker_mapping[role] = ray.remote(worker_cls)


# ---- 3. the actor's data-parallel size ----


def actor_dp_size(worker_group) -> int:
    """Data-parallel ranks of the actor mesh; verl's dispatch gives rank r the r-th of that many
    equal contiguous chunks of a batch. Found as `PPOTrainer._balance_batch` finds it (and cached there)."""
    if "actor" not in worker_group._dispatch_info:
        worker_group._dispatch_info["actor"] = worker_group._query_dispatch_info("actor")
    return max(worker_group._dispatch_info["actor"]) + 1


# ---- 2. the advantage step: what verl's PPOTrainer._compute_advantage does that the teacher path must too ----


def rollout_correction_config(algorithm_config):
    """`algorithm.rollout_correction` when verl applies it in the advantage step, else None.
    In bypass mode (`bypass_mode: true`) verl applies it elsewhere (old_log_probs := the rollout's,
    and the actor's loss), which the teacher path inherits unchanged."""
    config = algorithm_config.get("rollout_correction", None)
    if config is None or config.get("bypass_mode", False):
        return None
    return config


def apply_rollout_correction(config, old_log_probs, rollout_log_probs, response_mask):
    """verl's rollout correction (importance weights and rejection sampling) on padded [B, T]
    tensors, by verl's own function. Returns (response_mask with rejected tokens removed,
    rollout_is_weights [B, T] or None when `rollout_is` is off, the `rollout_corr/*` metrics)."""
    from verl import DataProto
    from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch

    data = DataProto(
        batch=TensorDict(
            {OLD_LOG_PROBS: old_log_probs, ROLLOUT_LOG_PROBS: rollout_log_probs, RESPONSE_MASK: response_mask},
            batch_size=len(response_mask),
        )
    )
    data, metrics = compute_rollout_correction_and_add_to_batch(data, config)
    weights = data.batch[ROLLOUT_IS_WEIGHTS] if ROLLOUT_IS_WEIGHTS in data.batch.keys() else None
    return data.batch[RESPONSE_MASK], weights, metrics


def trajectory_index(key: str) -> int:
    """The output index of a trajectory key (`TRAJECTORY_KEY_FORMAT`); 0 for a key of another form."""
    parts = key.rsplit("_", 2)
    return int(parts[2]) if len(parts) == 3 and parts[2].isdigit() else 0


def check_one_output_per_session(keys: list[str], estimator: str) -> None:
    """Refuse a batch from an agent loop that returns several outputs per session (a list of
    AgentLoopOutput): verl scores only each session's last output and broadcasts it
    (compute_advantage_for_multi_trajectories), while a teacher estimator would take every output
    as another rollout of the prompt group."""
    extra = [key for key in keys if trajectory_index(key) > 0]
    if extra:
        raise ValueError(
            f"algorithm.adv_estimator={estimator} needs one output per rollout session, but the agent loop "
            f"returned several (trajectory key {extra[0]!r}, format {TRAJECTORY_KEY_FORMAT}): choose an agent "
            "loop that returns one AgentLoopOutput (actor_rollout_ref.rollout.agent.default_agent_loop, or the "
            "dataset's agent_name), or an estimator without a teacher (e.g. grpo)"
        )


# ---- 5. the replay buffer's group status ----


def observe_group_status(buffer, observe) -> bool:
    """After each refresh of the buffer's group status from TransferQueue, call
    `observe(finished, failed, in_flight)` (sets of prompt uids of the train partition).
    False (nothing wrapped) for a custom sampler (trainer.v1.sampler.custom_sampler) of another shape."""
    sync = getattr(buffer, "_sync_metadata_from_transfer_queue", None)
    if sync is None:
        return False

    def sync_and_observe():
        sync()
        in_flight = buffer.pending_keys["train"] | buffer.running_keys["train"]
        observe(buffer.finished_keys["train"], buffer.failure_keys["train"], in_flight)

    buffer._sync_metadata_from_transfer_queue = sync_and_observe
    return True


# ---- 6. the rollout actors ----


def rollout_actors(trainer) -> dict:
    """name -> Ray actor handle of every rollout server and agent-loop worker the trainer started."""
    actors = {}
    manager = getattr(trainer, "llm_server_manager", None)
    for r, replica in enumerate(getattr(manager, "rollout_replicas", None) or []):
        actors.update({f"rollout server {r}.{i}": server for i, server in enumerate(replica.servers)})
    loop_manager = getattr(trainer, "agent_loop_manager", None)
    for i, worker in enumerate(getattr(loop_manager, "agent_loop_workers", None) or []):
        actors[f"agent-loop worker {i}"] = worker
    return actors


# ---- 7. logging ----


def add_tracking_backend(tracking, name: str, backend) -> None:
    """Log through `backend` (an object with `log(data, step)`) as verl's backend `name`."""
    tracking.logger[name] = backend
