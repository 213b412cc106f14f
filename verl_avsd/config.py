"""`algorithm.avsd.*`: defaults live in `config/avsd.yaml`; this module merges a run's keys onto
them and rejects what cannot be right (unknown keys, bad values) with a message that names the key."""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError

DEFAULTS_PATH = Path(__file__).parent / "config" / "avsd.yaml"

TEACHERS = ("ref", "current")


class AvsdConfigError(ValueError):
    """A bad `algorithm.avsd.*` setting."""


def default_config() -> DictConfig:
    return OmegaConf.load(DEFAULTS_PATH)


def avsd_config(algorithm_config) -> DictConfig:
    """The resolved AVSD options of a run, from verl's `algorithm` config (DictConfig, dict or a
    dataclass-like object with an `avsd` attribute/key; missing means all defaults)."""
    user = _get(algorithm_config, "avsd")
    cfg = default_config()
    if user is None:
        return cfg
    user = OmegaConf.create(OmegaConf.to_container(user, resolve=True) if isinstance(user, DictConfig) else dict(user))
    known = set(cfg.keys())
    for key in user.keys():
        if key not in known:
            hint = difflib.get_close_matches(str(key), sorted(known), n=1)
            raise AvsdConfigError(
                f"algorithm.avsd.{key} is not an AVSD option"
                + (f"; did you mean algorithm.avsd.{hint[0]}?" if hint else "")
                + f" Known options: {', '.join(sorted(known))} (defaults in {DEFAULTS_PATH})."
            )
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_struct(cfg.view_titles, False)  # users may title views of their own
    try:
        cfg = OmegaConf.merge(cfg, user)
    except ConfigKeyError as e:
        raise AvsdConfigError(f"algorithm.avsd: {e}") from e
    # A template written on a command line cannot hold a newline; a literal backslash-n stands for one.
    cfg.view_template = cfg.view_template.replace("\\n", "\n")
    _validate(cfg)
    return cfg


def _get(obj, key):
    if obj is None:
        return None
    if isinstance(obj, (dict, DictConfig)):
        return obj.get(key)
    return getattr(obj, key, None)


def _validate(cfg: DictConfig) -> None:
    views = list(cfg.views)
    if not views or len(set(views)) != len(views):
        raise AvsdConfigError(f"algorithm.avsd.views must be a non-empty list of distinct view names, got {views}")
    if cfg.teacher not in TEACHERS:
        raise AvsdConfigError(f"algorithm.avsd.teacher must be one of {TEACHERS}, got {cfg.teacher!r}")
    if cfg.opsd_view not in views:
        raise AvsdConfigError(f"algorithm.avsd.opsd_view={cfg.opsd_view!r} is not in algorithm.avsd.views={views}")
    for key in ("max_view_tokens", "token_budget", "logprob_chunk_tokens", "credit_top_k"):
        if int(cfg[key]) <= 0:
            raise AvsdConfigError(f"algorithm.avsd.{key} must be positive, got {cfg[key]}")
    if int(cfg.share_prefix_min_tokens) < 0:
        raise AvsdConfigError(f"algorithm.avsd.share_prefix_min_tokens must be >= 0 (0 = off), got {cfg.share_prefix_min_tokens}")
    if not 0.0 <= float(cfg.rlsd_lam) <= 1.0:
        raise AvsdConfigError(f"algorithm.avsd.rlsd_lam must be in [0, 1], got {cfg.rlsd_lam}")
    if not 0.0 <= float(cfg.rlsd_eps_w) < 1.0:
        raise AvsdConfigError(f"algorithm.avsd.rlsd_eps_w must be in [0, 1), got {cfg.rlsd_eps_w}")
    if float(cfg.epistemic_tau) < 0:
        raise AvsdConfigError(f"algorithm.avsd.epistemic_tau must be >= 0, got {cfg.epistemic_tau}")
    for placeholder in ("{prompt}", "{view}"):
        if placeholder not in cfg.view_template:
            raise AvsdConfigError(f"algorithm.avsd.view_template must contain {placeholder}")
