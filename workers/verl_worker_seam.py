"""The worker and rollout side's seam to verl 0.9.1: every private verl name (or verl-internal
attribute, or patch of verl) used in the Ray workers, the `hf` rollout and the CPU platform, as a
small named function. `workers/teacher_worker.py`, `verl_avsd/plugin.py`, `verl_avsd/cpu/platform.py`
and `verl_avsd/cpu/hf_rollout.py` import these; the trainer has its own seam
(verl_avsd/verl_trainer_seam.py).

verl is imported inside the functions: `verl_avsd.cpu.platform` imports this module before verl
has chosen its device platform, and importing verl's worker modules here would make it choose.

Written against verl 0.9.1. What would break on an upgrade, item by item, and the test that fails
first, by name (all in tests/test_verl_seam.py unless said):

1. Per-sample non-tensor fields (a TensorDict NonTensorStack, TransferQueue's lists, numpy object
   arrays) read as lists (`per_sample_list`): tests/test_per_sample_list.py.
2. The teacher's model on verl's actor worker: `ActorRolloutRefWorker.actor` / `.ref` (TrainingWorker
   or None), `TrainingWorker.engine` with `.module`, `.eval_mode()`, `.disable_adapter()` (LoRA),
   `TrainingWorker.model_config.tokenizer` (`teacher_training_worker`, `worker_tokenizer`,
   `teacher_forward`): test_actor_worker_attributes_are_verls; a real run: tests/test_e2e_avsd.py.
3. The rollout adapter table: verl has no registration call for the in-worker rollout adapter,
   only `verl.workers.rollout.base._ROLLOUT_REGISTRY` ((name, mode) -> class path) read by
   `get_rollout_class` (`register_rollout_adapter`): test_rollout_registry_is_verls, tests/test_plugin.py.
4. A rollout replica's server: `RolloutReplica._server_handle` and `._server_address`, which verl's
   `server_handle` / `server_address` properties return (`attach_server`): test_replica_server_fields_are_verls.
5. The platform verl chose: `verl.plugin.platform.platform_manager._current_platform` (None until
   `get_platform()` first runs; `chosen_platform`): test_platform_manager_caches_the_platform.
6. The CPU port's patches (`verl_avsd/cpu/platform.py` decides, these apply):
   - `verl.utils.distributed.initialize_global_process_group_ray(timeout_second, backend)` builds
     the backend "cpu:gloo,{device}:{backend}"; `verl.workers.engine_workers` binds it by name at
     import, so both names are replaced (`wrap_process_group_init`): test_process_group_init_is_verls,
     tests/test_cpu_platform.py;
   - `torch.Tensor.pin_memory`, which verl's FSDP2 reference model reaches through
     `CPUOffloadPolicy(pin_memory=True)` in `verl.workers.engine.fsdp.transformer_impl`
     (`disable_pin_memory`): tests/test_cpu_platform.py;
   - `VERL_ENGINE_DEVICE`, verl's knob (`verl.workers.engine.base.EngineRegistry`) to pick an engine
     registered for another device, as the FSDP engine is only for "cuda" and "npu"
     (`ENGINE_DEVICE_ENV`): test_engine_device_knob_is_verls.
7. The rollout-side teacher (workers/rollout_teacher.py, `teacher_placement=rollout`) subclasses
   `verl.trainer.ppo.v1.agent_loop_tq.AgentLoopWorkerTQ.__ray_actor_class__` and overrides its hooks
   `_agent_loop_postprocess(output, validate, **kwargs)` (which stores every kwarg in the sample's
   TransferQueue row) and `_compute_teacher_logprobs(output, prompt_ids, response_ids, validate,
   sample_kwargs)`, calls `self.llm_client.generate`, and sets `AgentLoopManagerTQ.agent_loop_workers_class`:
   test_agent_loop_worker_hooks_are_verls, tests/test_rollout_teacher.py.
8. The reference teacher's pool (workers/ref_teacher_pool.py, `teacher: ref` with rollout placement)
   builds verl's `verl.experimental.teacher_loop.MultiTeacherModelManager(config, resource_pool)`
   (`get_client()` -> {key: LLMServerClient}) from a config copy whose `distillation` section it
   fills, on a `ResourcePoolManager` pool (`resource_pool_dict`); overrides the classmethod
   `AgentLoopManagerTQ.create(config, llm_client, teacher_client, reward_loop_worker_handles)`
   (verl's TaskRunnerV1 passes these keywords); reads the agent-loop worker's `self.teacher_client`;
   and relies on the run's `distillation.enabled=false` keeping verl's distillation off (actor loss
   `ppo_loss`, agent loop `distillation_enabled`, no trainer teacher pool):
   test_teacher_loop_is_verls, tests/test_rollout_teacher_ref.py.
"""

from __future__ import annotations

import contextlib
import sys

import torch

ENGINE_DEVICE_ENV = "VERL_ENGINE_DEVICE"


# ---- 1. per-sample non-tensor fields ----


def per_sample_list(value) -> list:
    """A per-sample non-tensor field from TransferQueue / TensorDict (NonTensorStack, LinkedList,
    numpy array, ...) as a list (the trainer reads its fields the same way)."""
    return value.tolist() if hasattr(value, "tolist") else list(value)


# ---- 2. the teacher's model on verl's actor worker ----


def teacher_training_worker(worker, teacher: str):
    """The TrainingWorker of verl's ActorRolloutRefWorker whose model is the teacher
    (`algorithm.avsd.teacher`: "ref", the reference model; "current", the live actor)."""
    if teacher == "current" or worker.ref is None:
        if worker.actor is None:
            raise RuntimeError("algorithm.avsd.teacher needs the actor model on this worker, which has none")
        return worker.actor
    return worker.ref


def worker_tokenizer(worker):
    """The tokenizer of the worker's models (actor and ref share it)."""
    return (worker.actor or worker.ref).model_config.tokenizer


@contextlib.contextmanager
def teacher_forward(training_worker, adapter_off: bool = False):
    """The training worker's torch module, in eval mode (and with its LoRA adapter disabled when
    `adapter_off`: with LoRA verl builds no ref model, the base model is the reference) and its
    FSDP2 root parameters gathered, for the duration."""
    engine = training_worker.engine
    without_adapter = engine.disable_adapter() if adapter_off else contextlib.nullcontext()
    with engine.eval_mode(), without_adapter, _unsharded(engine.module):
        yield engine.module


@contextlib.contextmanager
def _unsharded(module):
    """FSDP2 keeps the root's own parameters (embeddings, lm_head) sharded outside its forward;
    the teacher calls the backbone and the output embedding separately, so gather them for the
    duration. A plain module (no FSDP) passes through."""
    if hasattr(module, "unshard") and hasattr(module, "reshard"):
        module.unshard()
        try:
            yield
        finally:
            module.reshard()
    else:
        yield


# ---- 3. the rollout adapter table ----


def register_rollout_adapter(name: str, mode: str, class_path: str) -> None:
    """Let `get_rollout_class(name, mode)` import `class_path` (module.Class) when a run selects it."""
    from verl.workers.rollout import base as rollout_base

    rollout_base._ROLLOUT_REGISTRY[(name, mode)] = class_path


# ---- 4. a rollout replica's server ----


def attach_server(replica, server, address: str) -> None:
    """Make `server` (a Ray actor handle) the replica's server, at `address` (verl's load balancer
    only keys on it), as `RolloutReplica.launch_servers` implementations do."""
    replica._server_handle = server
    replica._server_address = address


# ---- 5. the platform verl chose ----


def chosen_platform():
    """The platform verl has chosen in this process, or None if it has not chosen yet."""
    from verl.plugin.platform import platform_manager

    return platform_manager._current_platform


# ---- 6. the CPU port's patches ----


def wrap_process_group_init(make_wrapper) -> None:
    """Replace verl's `initialize_global_process_group_ray` by `make_wrapper(original, device_name,
    nccl_backend)` under both names verl calls it by; once (a wrapper marked `_seam_wrapped`)."""
    import verl.utils.distributed as verl_distributed

    original = verl_distributed.initialize_global_process_group_ray
    if getattr(original, "_seam_wrapped", False):
        return
    wrapper = make_wrapper(original, verl_distributed.get_device_name, verl_distributed.get_nccl_backend)
    wrapper._seam_wrapped = True
    verl_distributed.initialize_global_process_group_ray = wrapper
    engine_workers = sys.modules.get("verl.workers.engine_workers")  # not imported yet: it binds the new one
    if engine_workers is not None:
        engine_workers.initialize_global_process_group_ray = wrapper


def disable_pin_memory() -> None:
    """`Tensor.pin_memory()` returns the tensor itself (pinning needs an accelerator)."""
    torch.Tensor.pin_memory = lambda self, *args, **kwargs: self
