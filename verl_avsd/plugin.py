"""verl plugin entry point (setuptools group `verl.plugins`).

verl imports this module at `import verl`, so everything the user selects by name in a
verl command line (`algorithm.adv_estimator=avsd`, `trainer.v1.trainer_mode=avsd_sync`,
the CPU platform and the `hf` rollout) is registered before hydra resolves the config.
verl swallows exceptions raised here, so `tests/test_plugin.py` imports it on its own.
"""

from verl_avsd import estimators  # noqa: F401  registers avsd, avsd_consensus, avsd_arithmetic, opsd, rlsd
