"""Every private verl name the two seams rely on (verl_avsd/verl_trainer_seam.py and
workers/verl_worker_seam.py) still exists, with the shape they expect, in the installed verl. On a
verl upgrade this file fails first, by name, instead of a run failing (or silently changing) later.

Checks read verl's own code objects (the names a method assigns or calls, its string constants),
so a renamed attribute or field fails here; each seam function is also run once on a stand-in."""

from __future__ import annotations

import inspect
import types
from pathlib import Path

import pytest
import yaml

import verl_avsd.verl_trainer_seam as seam
import verl_avsd.workers.verl_worker_seam as worker_seam


def _names(function) -> set[str]:
    """Attribute and global names a function's code uses, nested code (comprehensions) included."""
    names, codes = set(), [function.__code__]
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return names


def _strings(function) -> set[str]:
    strings, codes = set(), [function.__code__]
    while codes:
        code = codes.pop()
        for const in code.co_consts:  # a list literal of strings compiles to one tuple constant
            strings.update(c for c in (const if isinstance(const, tuple | frozenset) else [const]) if isinstance(c, str))
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return strings


def _verl_default_config() -> dict:
    import verl.trainer.config as verl_config

    return yaml.safe_load((Path(verl_config.__file__).parent / "_generated_ppo_trainer.yaml").read_text())


# ---- the trainer side ----


def test_role_mapping_is_verls():
    from verl.trainer.ppo.utils import Role
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    assert {"ActorRollout", "ActorRolloutRef", "Actor"} <= set(Role.__members__)
    assert {"role_worker_mapping", "mapping", "ActorRollout"} <= _names(PPOTrainer._init_resource_pool_mgr)
    # the seam's edit, on a trainer as verl's method leaves it (no KL term: no ref model)
    trainer = types.SimpleNamespace(role_worker_mapping={Role.ActorRollout: object}, mapping={Role.ActorRollout: "global_pool"})
    seam.build_ref_model_with_actor(trainer)
    assert trainer.mapping == {Role.ActorRolloutRef: "global_pool"} and list(trainer.role_worker_mapping) == [
        Role.ActorRolloutRef
    ]
    seam.use_actor_worker_class(trainer, type("Worker", (), {}))
    assert trainer.role_worker_mapping[Role.ActorRolloutRef] is not None and not seam.has_separate_actor(trainer)


def test_compute_advantage_calls_only_what_the_teacher_path_mirrors():
    """The teacher path replaces verl's advantage step; each step verl's takes is mirrored or refused
    there (verl_avsd/verl_trainer_seam.py, item 2). A step verl adds fails here, by name."""
    import verl.trainer.ppo.v1.trainer_base as trainer_base

    calls = {n for n in _names(trainer_base.PPOTrainer._compute_advantage) if callable(getattr(trainer_base, n, None))}
    mirrored = {
        "apply_kl_penalty",  # algorithm.use_kl_in_reward: refused by AvsdTrainer.__init__
        "compute_rollout_correction_and_add_to_batch",  # seam.apply_rollout_correction
        "compute_advantage_for_multi_trajectories",  # seam.check_one_output_per_session refuses several outputs
        "response_to_nested", "DataProto", "TensorDict",  # data layout (seam.nested_like)
    }  # fmt: skip
    assert calls == mirrored, (
        f"verl's PPOTrainer._compute_advantage now calls {sorted(calls - mirrored)} (no longer {sorted(mirrored - calls)})"
    )
    # the settings the teacher path reads or refuses are verl's keys
    algorithm = _verl_default_config()["algorithm"]
    assert "use_kl_in_reward" in algorithm
    assert {"rollout_is", "rollout_rs", "bypass_mode"} <= set(algorithm["rollout_correction"])
    assert "default_agent_loop" in _verl_default_config()["actor_rollout_ref"]["rollout"]["agent"]


def test_rollout_correction_is_verls_function():
    from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch

    assert list(inspect.signature(compute_rollout_correction_and_add_to_batch).parameters) == ["batch", "rollout_corr_config"]
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    # verl decides as seam.rollout_correction_config does: the config, not in bypass mode
    assert {"rollout_correction", "bypass_mode", seam.ROLLOUT_LOG_PROBS} <= _strings(PPOTrainer._compute_advantage)


def test_multi_output_key_format_is_verls():
    import verl.trainer.ppo.v1.agent_loop_tq as agent_loop_tq
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    assert 'keys.append(f"{uid}_{session_id}_{i}")' in inspect.getsource(
        agent_loop_tq
    )  # AgentLoopWorkerTQ._agent_loop_postprocess
    assert "rsplit" in _names(compute_advantage_for_multi_trajectories)
    assert [seam.trajectory_index(k) for k in ("3f2a-9c_0_0", "3f2a-9c_1_2", "key0")] == [0, 2, 0]


def test_dispatch_info_is_verls():
    from verl.single_controller.base.worker import Worker
    from verl.single_controller.base.worker_group import WorkerGroup
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    assert callable(Worker._query_dispatch_info)
    assert "_dispatch_info" in _names(WorkerGroup.__init__)
    assert {"_dispatch_info", "_query_dispatch_info"} <= _names(PPOTrainer._balance_batch)  # where verl reads it alike

    class Group:
        _dispatch_info: dict = {}

        def _query_dispatch_info(self, mesh):
            return [0, 0, 1, 1, 2, 2] if mesh == "actor" else []

    group = Group()
    assert seam.actor_dp_size(group) == 3 and group._dispatch_info == {"actor": [0, 0, 1, 1, 2, 2]}


def test_field_names_are_the_ones_verl_writes():
    import verl.trainer.ppo.padding_utils as padding_utils
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    advantage_step = _strings(PPOTrainer._compute_advantage) | _strings(PPOTrainer._compute_old_log_prob)
    for field in (seam.UID, seam.RESPONSE_MASK, seam.RM_SCORES, seam.OLD_LOG_PROBS, seam.ROLLOUT_LOG_PROBS,
                  seam.ADVANTAGES, seam.RETURNS, seam.ROLLOUT_IS_WEIGHTS):  # fmt: skip
        assert field in advantage_step, field
    import verl.trainer.ppo.v1.agent_loop_tq as agent_loop_tq
    from verl.utils.dataset.rl_dataset import RLHFDataset

    # AgentLoopWorkerTQ is a Ray actor class: its source, not its (wrapped) methods
    assert f'field["{seam.RESPONSES}"]' in inspect.getsource(agent_loop_tq)  # stored per sample by the agent loop
    assert seam.EXTRA_INFO in _strings(RLHFDataset.__getitem__)  # the dataset row's field, stored with it
    assert "is_padding=True" in inspect.getsource(
        padding_utils
    )  # the tag on the copies upsample_batch_to_divisible_size pads with
    assert "is_padding" in _strings(PPOTrainer._compute_metrics)  # which verl's own metrics leave out alike
    assert "seq_len" in _strings(PPOTrainer._balance_batch)
    import transfer_queue as tq

    assert {"keys", "partition_id", "select_fields"} <= set(inspect.signature(tq.kv_batch_get).parameters)
    assert {"keys", "partition_id", "fields"} <= set(inspect.signature(tq.kv_batch_put).parameters)


def test_replay_buffer_status_sets_are_verls():
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    assert callable(ReplayBuffer._sync_metadata_from_transfer_queue)
    statuses = {"pending_keys", "running_keys", "finished_keys", "failure_keys"}
    assert statuses <= _names(ReplayBuffer.__init__) and statuses <= _names(ReplayBuffer._sync_metadata_from_transfer_queue)


def test_rollout_actor_attributes_are_verls():
    from verl.experimental.agent_loop.agent_loop import AgentLoopManager
    from verl.workers.rollout.llm_server import LLMServerManager
    from verl.workers.rollout.replica import RolloutReplica

    assert "self.rollout_replicas = [" in inspect.getsource(LLMServerManager)
    assert "agent_loop_workers" in {n for f in vars(AgentLoopManager).values() if inspect.isfunction(f) for n in _names(f)}
    assert "servers" in _names(RolloutReplica.__init__)


def test_fit_builds_tracking_from_the_config():
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    from verl.utils.tracking import Tracking

    assert {"Tracking", "logger"} <= _names(PPOTrainer.fit)
    assert "logger" in _names(Tracking.__init__)
    tracking = types.SimpleNamespace(logger={})
    seam.add_tracking_backend(tracking, "file", "backend")
    assert tracking.logger == {"file": "backend"}


# ---- the worker and rollout side ----


def test_actor_worker_attributes_are_verls():
    from verl.workers.engine.base import BaseEngine
    from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

    assert {"actor", "ref"} <= {n for f in vars(ActorRolloutRefWorker).values() if inspect.isfunction(f) for n in _names(f)}
    assert {"engine", "model_config"} <= _names(TrainingWorker.__init__)
    assert callable(BaseEngine.eval_mode) and callable(BaseEngine.disable_adapter)
    with pytest.raises(RuntimeError, match="algorithm.avsd.teacher needs the actor model"):
        worker_seam.teacher_training_worker(types.SimpleNamespace(actor=None, ref=None), "current")


def test_rollout_registry_is_verls():
    from verl.workers.rollout import base as rollout_base

    assert rollout_base._ROLLOUT_REGISTRY[("vllm", "async")].endswith("ServerAdapter")
    assert "_ROLLOUT_REGISTRY" in _names(rollout_base.get_rollout_class)


def test_replica_server_fields_are_verls():
    from verl.workers.rollout.replica import RolloutReplica

    assert {"_server_handle", "_server_address"} <= _names(RolloutReplica.__init__)
    replica = object.__new__(type("Replica", (RolloutReplica,), {"launch_servers": lambda self: None}))
    worker_seam.attach_server(replica, "handle", "address")
    assert (replica.server_handle, replica.server_address) == ("handle", "address")  # verl's public properties


def test_platform_manager_caches_the_platform():
    from verl.plugin.platform import platform_manager

    assert hasattr(platform_manager, "_current_platform")
    assert "_current_platform" in _names(platform_manager.get_platform)


def test_process_group_init_is_verls():
    import verl.utils.distributed as verl_distributed
    import verl.workers.engine_workers as engine_workers

    assert list(inspect.signature(verl_distributed.initialize_global_process_group_ray).parameters) == [
        "timeout_second",
        "backend",
    ]
    assert hasattr(engine_workers, "initialize_global_process_group_ray")  # bound by name: the seam replaces both
    assert callable(verl_distributed.get_device_name) and callable(verl_distributed.get_nccl_backend)


def test_engine_device_knob_is_verls():
    from verl.workers.engine.base import EngineRegistry

    assert worker_seam.ENGINE_DEVICE_ENV in inspect.getsource(EngineRegistry.get_engine_cls)


def test_the_methods_avsd_trainer_overrides_are_still_called_by_verl():
    """AvsdTrainer overrides these verl methods (each calls verl's first); a renamed one would leave
    the override dead code, and the teacher step would silently never run."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    from verl_avsd.trainer import AvsdTrainer

    verl_methods = {n: f for n, f in vars(PPOTrainer).items() if inspect.isfunction(f)}
    called = {n for f in verl_methods.values() for n in _names(f)}
    overrides = {n for n in vars(AvsdTrainer) if n in verl_methods}
    assert overrides == {"__init__", "_build_replay_buffer", "_init_resource_pool_mgr", "fit", "_compute_advantage"}
    assert overrides - {"__init__", "fit"} <= called
    # the trainer's attributes verl sets: the step's timings, the actor worker group, the tokenizer, the step
    assert {"timing_raw", "actor_rollout_wg", "tokenizer", "global_steps"} <= called


def test_agent_loop_worker_hooks_are_verls():
    """The rollout-side teacher (workers/rollout_teacher.py) subclasses verl's agent-loop worker
    under its Ray wrapper and fills in two of its private hooks; seam item 7."""
    from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopManagerTQ, AgentLoopWorkerTQ

    worker = AgentLoopWorkerTQ.__ray_actor_class__
    postprocess = inspect.signature(worker._agent_loop_postprocess).parameters
    assert list(postprocess)[:3] == ["self", "output", "validate"] and "kwargs" in postprocess
    teacher = inspect.signature(worker._compute_teacher_logprobs).parameters
    assert list(teacher)[:6] == ["self", "output", "prompt_ids", "response_ids", "validate", "sample_kwargs"]
    source = inspect.getsource(worker._agent_loop_postprocess)
    assert "self._compute_teacher_logprobs(" in source  # verl calls the hook as each sample ends
    assert "field.update(kwargs)" in source  # and stores every kwarg in the sample's TransferQueue row
    assert "self.agent_loop_workers_class = " in inspect.getsource(AgentLoopManagerTQ)
    assert any("self.llm_client" in inspect.getsource(c) for c in worker.__mro__ if c.__module__.startswith("verl"))


def test_teacher_loop_is_verls():
    """The reference teacher's pool (workers/ref_teacher_pool.py) is verl's teacher_loop, handed to
    the agent-loop workers as verl hands its distillation teacher; seam item 8."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.experimental.teacher_loop import MultiTeacherModelManager
    from verl.single_controller.ray.base import ResourcePoolManager
    from verl.trainer.main_ppo import TaskRunnerV1
    from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopManagerTQ
    from verl.workers import engine_workers

    assert list(inspect.signature(MultiTeacherModelManager).parameters) == ["config", "resource_pool"]
    assert callable(MultiTeacherModelManager.get_client)
    assert "resource_pool_dict" in ResourcePoolManager.__dataclass_fields__
    create = inspect.signature(AgentLoopManagerTQ.create.__wrapped__).parameters
    assert list(create) == ["cls", "args", "kwargs"]  # forwarded to __init__:
    assert list(inspect.signature(AgentLoopManagerTQ.__mro__[1].__init__).parameters)[:5] == [
        "self", "config", "llm_client", "teacher_client", "reward_loop_worker_handles"
    ]  # fmt: skip
    runner = inspect.getsource(TaskRunnerV1.__ray_actor_class__.init_agent_loop_manager)
    assert "teacher_client=self.trainer.get_teacher_client()" in runner
    worker = inspect.getsource(AgentLoopWorker.__init__)
    assert "self.teacher_client = teacher_client" in worker
    assert "self.distillation_enabled = is_distillation_enabled(config.distillation)" in worker
    # the actor's loss: verl's distillation loss only when the worker's distillation config is enabled
    assert "if self.distillation_enabled:" in inspect.getsource(engine_workers.ActorRolloutRefWorker.init_model)
