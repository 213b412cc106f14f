"""verl plugin entry point (setuptools group `verl.plugins`).

verl imports this module at `import verl`, in the driver and in every Ray worker, so
everything a verl command line selects by name is registered before hydra resolves it:

    trainer.device=cpu, actor_rollout_ref.rollout.name=hf                   (CPU runs)
    algorithm.adv_estimator=avsd|avsd_consensus|avsd_arithmetic|opsd|rlsd   (estimators)
    trainer.v1.trainer_mode=avsd_sync                                       (trainer)

verl swallows exceptions raised here, so `tests/test_plugin.py` imports it on its own.
"""

# First: verl picks (and caches) its device platform the first time any verl module asks,
# and importing the estimators or the trainer asks. cpu_platform registers and patches only
# where the CPU platform is selected (no accelerator, or VERL_PLATFORM=cpu): on a GPU machine
# verl and torch stay untouched (tests/test_plugin.py checks), and the other imports below
# only add names to verl's registries ("hf", the estimators, "avsd_sync").
from verl_avsd import cpu_platform  # noqa: F401,I001
from verl_avsd.workers import hf_rollout  # noqa: F401  the `hf` rollout backend
from verl_avsd import estimators  # noqa: F401
from verl_avsd import trainer  # noqa: F401
