"""verl plugin entry point (setuptools group `verl.plugins`).

verl imports this module at `import verl`, in the driver and in every Ray worker, so
everything a verl command line selects by name is registered before hydra resolves it:

    trainer.device=cpu, actor_rollout_ref.rollout.name=hf                   (CPU runs)
    algorithm.adv_estimator=avsd|avsd_consensus|avsd_arithmetic|opsd|rlsd   (estimators)
    trainer.v1.trainer_mode=avsd_sync                                       (trainer)

verl swallows exceptions raised here, so `tests/test_plugin.py` imports it on its own.
"""

# First: verl picks (and caches) its device platform the first time any verl module asks,
# and importing the estimators or the trainer asks. verl_avsd.cpu.platform registers and
# patches only where the CPU platform is selected (no accelerator, or VERL_PLATFORM=cpu): on a
# GPU machine verl and torch stay untouched (tests/test_plugin.py checks), and the lines below
# only add names to verl's registries ("hf", the estimators, "avsd_sync").
from verl_avsd.cpu import platform as cpu_platform  # noqa: F401,I001
import importlib

from verl.workers.rollout.replica import RolloutReplicaRegistry

from verl_avsd import estimators  # noqa: F401
from verl_avsd import trainer  # noqa: F401
from verl_avsd.workers.verl_worker_seam import register_rollout_adapter

# The `hf` rollout backend (transformers `generate`, the CPU port's rollout) is registered by
# name on every host, so `actor_rollout_ref.rollout.name=hf` works wherever it is chosen, but
# its module is imported only when verl builds an `hf` rollout: a name in a registry is not a
# patch, and a GPU run that uses vLLM never loads it (tests/test_plugin.py checks).
HF_ROLLOUT_MODULE = "verl_avsd.cpu.hf_rollout"
RolloutReplicaRegistry.register("hf", lambda: importlib.import_module(HF_ROLLOUT_MODULE).HFReplica)
# verl has no registration function for the in-worker adapter, only a table of class paths read
# by `verl.workers.rollout.base.get_rollout_class(name, mode)`; the seam writes to it.
register_rollout_adapter("hf", "async", "verl_avsd.cpu.hf_adapter.HFServerAdapter")
