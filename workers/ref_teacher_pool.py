"""The reference teacher's own pool (`algorithm.avsd.teacher=ref` with `teacher_placement: rollout`).

The rollout replicas hold the current policy, so they can only be the `teacher: current`. For
`teacher: ref` the views are scored on replicas of their own that hold the actor's INITIAL
weights (the model at `actor_rollout_ref.model.path`) and never receive an update: verl 0.9.1's
on-policy distillation teacher machinery (`verl.experimental.teacher_loop.MultiTeacherModelManager`:
one `RolloutReplica` per teacher replica, `is_teacher_model=True`, on a resource pool of its own,
behind verl's load balancer) builds them, and the agent-loop worker sends the view requests to
its client instead of the rollout one (`RolloutTeacherAgentLoopWorker._teacher_client`).

verl's own distillation stays OFF: the run's `distillation.enabled` is false, so verl adds no
distillation loss to the actor (`distillation_ppo_loss`), the agent loop scores no prompt+response
of its own (`AgentLoopWorker._compute_teacher_logprobs`), and the trainer builds no teacher pool.
Only the config handed to the teacher manager (`ref_teacher_config`, a copy) describes a teacher:

    model_path   actor_rollout_ref.model.path           (the reference = the initial actor model)
    inference    actor_rollout_ref.rollout, as it is   (same backend, dtype, parallel sizes and
                                                        limits as the replicas that would score
                                                        `teacher: current`)
    pool         distillation.n_gpus_per_node x distillation.nnodes (verl's teacher-pool keys),
                 or, with distillation.nnodes=0 (verl's default), one replica on one node

The agent-loop manager builds the pool (`RefTeacherAgentLoopManager.create`: verl's task runner
builds the manager after the trainer, so the actor's pools are already placed).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from verl_avsd.workers.rollout_teacher import RolloutTeacherAgentLoopManager

REF_POOL_NAME = "avsd_ref_teacher_pool"  # the Ray resource pool of the reference teacher's replicas
MODEL_PATH_KEY = "actor_rollout_ref.model.path"


def ref_pool_shape(config) -> tuple[int, int]:
    """(n_gpus_per_node, nnodes) of the reference teacher's pool: verl's `distillation.*` keys when
    set, else one rollout replica's world size (tensor x data x pipeline parallel) on one node."""
    distillation = config.get("distillation") or {}
    nnodes = int(distillation.get("nnodes", 0) or 0)
    if nnodes > 0:
        return int(distillation.get("n_gpus_per_node", 0) or 0), nnodes
    rollout = config.actor_rollout_ref.rollout
    per_replica = (
        int(rollout.get("tensor_model_parallel_size", 1) or 1)
        * int(rollout.get("data_parallel_size", 1) or 1)
        * int(rollout.get("pipeline_model_parallel_size", 1) or 1)
    )
    return per_replica, 1


def ref_teacher_config(config) -> DictConfig:
    """A copy of the run's config whose `distillation` section describes the reference teacher to
    verl's teacher_loop (enabled in this copy only; the run's own config is not touched)."""
    teacher = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    n_gpus_per_node, nnodes = ref_pool_shape(config)
    inference = OmegaConf.to_container(config.actor_rollout_ref.rollout, resolve=True)
    with open_dict(teacher):
        teacher.distillation = {
            "_target_": "verl.workers.config.DistillationConfig",
            "enabled": True,
            "n_gpus_per_node": n_gpus_per_node,
            "nnodes": nnodes,
            # verl's loss settings are read only to size top-k requests; k3 asks for none (the views
            # are scored with prompt_logprobs=0 anyway), and no loss is ever computed from them
            "distillation_loss": {"_target_": "verl.workers.config.DistillationLossConfig", "loss_mode": "k3"},
            "teacher_models": {
                "teacher_model": {
                    "_target_": "verl.workers.config.DistillationTeacherModelConfig",
                    "key": None,  # verl names a single teacher "default"
                    "model_path": str(config.actor_rollout_ref.model.path),
                    "num_replicas": 0,  # verl: the pool's size over one replica's
                    "inference": inference,
                }
            },
        }
    return teacher


def check_ref_teacher_config(config) -> None:
    """Convert the reference teacher's config as verl's teacher manager will (verl's checks: pool
    size against the replicas' world size, ...), so a bad setting fails before any Ray work."""
    from verl.utils.config import omega_conf_to_dataclass

    try:
        omega_conf_to_dataclass(ref_teacher_config(config).distillation)
    except Exception as wrapped:  # noqa: BLE001 - hydra wraps verl's own ValueError; its cause says why
        error = wrapped.__cause__ or wrapped
        raise ValueError(
            f"algorithm.avsd.teacher=ref with algorithm.avsd.teacher_placement=rollout builds the reference teacher's "
            f"replicas with verl's teacher_loop (model {MODEL_PATH_KEY}, inference actor_rollout_ref.rollout, pool "
            f"distillation.n_gpus_per_node x distillation.nnodes={ref_pool_shape(config)}), which refuses it: {error}"
        ) from wrapped


def build_ref_teacher(config):
    """verl's MultiTeacherModelManager holding the reference model, on a resource pool of its own."""
    from verl.experimental.teacher_loop import MultiTeacherModelManager
    from verl.single_controller.ray.base import ResourcePoolManager

    teacher = ref_teacher_config(config)
    n_gpus_per_node, nnodes = ref_pool_shape(config)
    pools = ResourcePoolManager(resource_pool_spec={REF_POOL_NAME: [n_gpus_per_node] * nnodes}, mapping={})
    pools.create_resource_pool()  # raises when the cluster has too few GPUs left after the actor's pool
    return MultiTeacherModelManager(config=teacher, resource_pool=pools.resource_pool_dict[REF_POOL_NAME])


def ref_teacher_client(teacher_client):
    """The one client of the reference teacher's pool, from the agent-loop worker's `teacher_client`."""
    if not teacher_client or len(teacher_client) != 1:
        raise RuntimeError(
            "algorithm.avsd.teacher=ref with teacher_placement=rollout: the agent-loop worker got teacher clients "
            f"{sorted(teacher_client or {})}, expected the one reference teacher pool that "
            f"{RefTeacherAgentLoopManager.__module__}.RefTeacherAgentLoopManager builds"
        )
    (client,) = teacher_client.values()
    return client


class RefTeacherAgentLoopManager(RolloutTeacherAgentLoopManager):
    """The rollout-side teacher's agent-loop manager, whose workers' `teacher_client` is the
    reference teacher's own pool (built here; held for the run's lifetime)."""

    @classmethod
    def create(cls, config, llm_client, teacher_client=None, reward_loop_worker_handles=None):
        if teacher_client is not None:  # check_rollout_placement refuses verl's own distillation first
            raise RuntimeError("algorithm.avsd.teacher=ref with teacher_placement=rollout: distillation.enabled must be false")
        ref_teacher = build_ref_teacher(config)
        instance = super().create(
            config=config,
            llm_client=llm_client,
            teacher_client=ref_teacher.get_client(),
            reward_loop_worker_handles=reward_loop_worker_handles,
        )
        instance.ref_teacher = ref_teacher  # its replicas live as long as the manager
        return instance
