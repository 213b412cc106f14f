"""verl plugin entry point (setuptools group `verl.plugins`).

verl imports this module at `import verl`, in the driver and in every Ray worker, so
everything a verl command line selects by name is registered before hydra resolves it:

    algorithm.adv_estimator=avsd|avsd_consensus|avsd_arithmetic|opsd|rlsd   (estimators)
    trainer.v1.trainer_mode=avsd_sync                                       (trainer)

verl swallows exceptions raised here, so `tests/test_plugin.py` imports it on its own.
"""

from verl_avsd import estimators  # noqa: F401
from verl_avsd import trainer  # noqa: F401
