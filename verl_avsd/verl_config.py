"""verl's own hydra config (`verl/trainer/config/ppo_trainer.yaml`) composed with a run's overrides,
exactly as `python -m verl.trainer.main_ppo OVERRIDES` would see it, without starting anything.

Used to save the resolved config of a run and to check recipes' overrides in CI, so that a typo or
a key verl no longer has fails here and not on a cluster."""

from __future__ import annotations

import os

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig


def compose_verl_config(overrides: list[str]) -> DictConfig:
    import verl.trainer.main_ppo as main_ppo  # the config folder main_ppo's @hydra.main points at

    config_dir = os.path.join(os.path.dirname(main_ppo.__file__), "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))
