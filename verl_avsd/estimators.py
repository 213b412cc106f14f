"""The AVSD family of advantage estimators, registered into verl by name.

    algorithm.adv_estimator = avsd | avsd_consensus | avsd_arithmetic | opsd | rlsd

verl calls an estimator with (token_level_rewards, response_mask, config, index) only, and
these estimators also need the teacher's view log-probs. The AVSD trainer
(`verl_avsd.trainer`) passes them as extra keyword arguments; a stock verl trainer cannot,
so an estimator called without them raises an error that says which trainer to select,
instead of falling back to anything.
"""

from __future__ import annotations

import logging

import torch
from verl.trainer.ppo import core_algos

from verl_avsd.config import AvsdConfig, avsd_config
from verl_avsd.estimator_facts import teacher_estimators
from verl_avsd.signals import AvsdSignals, avsd_signals, rlsd_advantage

TRAINER_HINT = (
    "add `trainer.v1.trainer_mode=avsd_sync` to the verl command line (the AVSD trainer scores "
    "every rollout under each view in `algorithm.avsd.views` and passes the teacher log-probs to "
    "the estimator); with verl-avsd installed it registers itself, no import needed"
)


logger = logging.getLogger(__name__)
_ignored_tau_warned: set[str] = set()  # estimators already warned about, once per process


class TeacherLogprobsMissing(RuntimeError):
    """An AVSD-family estimator ran without the teacher's view log-probs."""


def token_advantages(
    estimator: str,
    config: AvsdConfig,  # parsed once by the trainer; or verl's raw `algorithm` config (parsed here)
    *,
    student_logp: torch.Tensor,  # [B, T] old_log_prob of the rollout policy
    view_logq: torch.Tensor,  # [B, M, T] teacher log-prob of each response token under each view
    view_mask: torch.Tensor,  # [B, M] bool: the sample has this view
    response_mask: torch.Tensor,  # [B, T]
    token_level_rewards: torch.Tensor | None = None,  # [B, T], rlsd only
    index=None,  # [B] prompt uid, rlsd only (groups for the GRPO advantage)
    norm_adv_by_std_in_grpo: bool = True,
) -> tuple[torch.Tensor, AvsdSignals]:
    """Token advantages [B, T] of one estimator, and the AVSD signals they came from (for metrics)."""
    cfg = config if isinstance(config, AvsdConfig) else avsd_config(config)
    if float(cfg.epistemic_tau) > 0 and estimator != "avsd" and estimator not in _ignored_tau_warned:
        _ignored_tau_warned.add(estimator)  # a setting that silently did nothing otherwise
        logger.warning(
            "algorithm.avsd.epistemic_tau=%s has no effect with algorithm.adv_estimator=%s: only avsd applies it",
            cfg.epistemic_tau,
            estimator,
        )
    if estimator == "opsd":
        # OPSD reads one view; M = 1 AVSD is exactly OPSD (tested), so reuse the same code path.
        m = list(cfg.views).index(cfg.opsd_view)
        view_logq, view_mask = view_logq[:, m : m + 1], view_mask[:, m : m + 1]
    signals = avsd_signals(student_logp, view_logq, view_mask, response_mask)

    if estimator in ("avsd", "opsd"):
        advantages = signals.advantage
        if estimator == "avsd" and float(cfg.epistemic_tau) > 0:
            # -tau * (1 - gate) * (-log p) in the loss == advantage - tau * (1 - gate) under
            # verl's on-policy loss -advantage * log p.
            advantages = torch.where(signals.token_mask, advantages - float(cfg.epistemic_tau) * (1 - signals.gate), 0.0)
    elif estimator == "avsd_consensus":
        advantages = signals.consensus
    elif estimator == "avsd_arithmetic":
        advantages = signals.arithmetic
    elif estimator == "rlsd":
        if token_level_rewards is None or index is None:
            raise ValueError("rlsd needs token_level_rewards and the prompt index (uid) for its GRPO advantage")
        grpo_adv, _ = core_algos.compute_grpo_outcome_advantage(
            token_level_rewards=token_level_rewards,
            response_mask=response_mask,
            index=index,
            norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
        )
        mask = response_mask.to(grpo_adv.dtype)
        sequence_adv = (grpo_adv * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)  # [B], constant per row
        advantages = rlsd_advantage(
            sequence_adv, signals.consensus, response_mask, lam=float(cfg.rlsd_lam), eps_w=float(cfg.rlsd_eps_w)
        )
    else:
        raise ValueError(f"unknown AVSD-family estimator {estimator!r}; known: {teacher_estimators()}")
    return advantages.to(torch.float32), signals


def _register(name: str):
    @core_algos.register_adv_est(name)
    def estimator(
        token_level_rewards: torch.Tensor,
        response_mask: torch.Tensor,
        config=None,
        index=None,
        *,
        old_log_probs: torch.Tensor | None = None,
        view_logq: torch.Tensor | None = None,
        view_mask: torch.Tensor | None = None,
        **_unused,
    ):
        if old_log_probs is None or view_logq is None or view_mask is None:
            raise TeacherLogprobsMissing(
                f"algorithm.adv_estimator={name} needs the teacher's view log-probs, which verl's own "
                f"trainers do not compute: {TRAINER_HINT}."
            )
        advantages, _ = token_advantages(
            name,
            config,
            student_logp=old_log_probs,
            view_logq=view_logq,
            view_mask=view_mask,
            response_mask=response_mask,
            token_level_rewards=token_level_rewards,
            index=index,
        )
        return advantages, advantages

    estimator.__name__ = estimator.__qualname__ = f"{name}_estimator"
    estimator.__doc__ = f"verl advantage estimator `{name}` (see verl_avsd.estimators)."
    return estimator


ESTIMATORS = {name: _register(name) for name in teacher_estimators()}
