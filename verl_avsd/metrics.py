"""Per-step metrics of the AVSD signals and of credit reliability (pure torch, no verl import).

Names are the ones verl's tracker logs (`avsd/*`, `credit/*`), so they show up in console,
tensorboard and wandb next to verl's own.
"""

from __future__ import annotations

import torch

from verl_avsd.signals import AvsdSignals


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    n = int(mask.sum())
    return float((x * mask).sum() / n) if n else 0.0


def signal_metrics(signals: AvsdSignals, gate_open_threshold: float = 0.5) -> dict[str, float]:
    """Token means over response tokens that have at least one valid view."""
    mask = signals.token_mask.to(signals.gate.dtype)  # [B, T]
    conflict = signals.sign_conflict.to(mask.dtype)
    flipped = (torch.sign(signals.arithmetic) != torch.sign(signals.consensus)).to(mask.dtype)
    return {
        "avsd/gate_mean": _masked_mean(signals.gate, mask),
        "avsd/gate_open_rate": _masked_mean((signals.gate >= gate_open_threshold).to(mask.dtype), mask),
        "avsd/residual_mean": _masked_mean(signals.residual, mask),
        "avsd/alignment_mean": _masked_mean(signals.alignment, mask),
        "avsd/magnitude_mean": _masked_mean(signals.magnitude, mask),
        "avsd/consensus_abs_mean": _masked_mean(signals.consensus.abs(), mask),
        "avsd/advantage_abs_mean": _masked_mean(signals.advantage.abs(), mask),
        "avsd/views_valid_mean": _masked_mean(signals.views_valid, mask),
        # teacher log-probs a sample's view has but that are non-finite or beyond LOGPROB_LIMIT
        "avsd/views_dropped": float(signals.views_dropped),
        "avsd/tokens_without_view": float(signals.tokens_without_view),
        "avsd/sign_conflict_rate": _masked_mean(conflict, mask),
        # Tokens where the arithmetic pool alone would have given the opposite sign to the
        # consensus: the flips AVSD's bounded residual rules out.
        "avsd/arithmetic_sign_flips": float((flipped * mask).sum()),
    }


def wrong_rollout_positive_topk(
    advantages: torch.Tensor,  # [B, T]
    response_mask: torch.Tensor,  # [B, T]
    sequence_reward: torch.Tensor,  # [B]
    wrong_below: float = 1.0,
    k: int = 20,
) -> tuple[float, int]:
    """Share of positive advantages among the k largest-|advantage| tokens of each wrong rollout,
    pooled over wrong rollouts (a rollout shorter than k contributes all its tokens).

    Returns (share, number of tokens counted); share is 0 when no rollout is wrong.
    """
    resp = response_mask.bool()
    wrong = sequence_reward < wrong_below  # [B]
    if not wrong.any():
        return 0.0, 0
    adv = advantages[wrong].float()
    mask = resp[wrong]
    k = min(k, adv.shape[1])
    score = torch.where(mask, adv.abs(), -1.0)  # padding never outranks a real token
    top = score.topk(k, dim=1).indices  # [W, k]
    picked_adv = adv.gather(1, top)
    picked_real = mask.gather(1, top)
    counted = int(picked_real.sum())
    positive = int(((picked_adv > 0) & picked_real).sum())
    return (positive / counted if counted else 0.0), counted


def credit_metric_name(k: int) -> str:
    """The logged name of the positive share at algorithm.avsd.credit_top_k = k (demo, report, plots
    and the toy study derive it from here; the report reads k from each run's config)."""
    return f"credit/wrong_rollout_positive_top{k}"


def credit_tokens_metric_name(k: int) -> str:
    """The logged name of that share's token count (the weight to pool it over steps)."""
    return f"credit/wrong_rollout_top{k}_tokens"


def credit_metrics(advantages, response_mask, sequence_reward, wrong_below: float, k: int) -> dict[str, float]:
    share, counted = wrong_rollout_positive_topk(advantages, response_mask, sequence_reward, wrong_below, k)
    wrong = sequence_reward < wrong_below
    return {
        credit_metric_name(k): share,
        credit_tokens_metric_name(k): float(counted),
        "credit/wrong_rollout_rate": float(wrong.float().mean()) if wrong.numel() else 0.0,
    }


def groups_without_signal(sequence_reward: torch.Tensor, uids: list) -> float:
    """Share of prompt groups whose rollouts all got the same reward (GRPO advantage 0)."""
    groups: dict = {}
    for r, uid in zip(sequence_reward.tolist(), uids):
        groups.setdefault(uid, []).append(r)
    multi = [g for g in groups.values() if len(g) > 1]
    return sum(1 for g in multi if max(g) == min(g)) / len(multi) if multi else float("nan")


def step_credit_metrics(
    advantages: torch.Tensor,  # [B, T]
    response_mask: torch.Tensor,  # [B, T]
    sequence_reward: torch.Tensor,  # [B]
    uids: list,  # [B] prompt uid of each rollout
    real: list[bool],  # [B] False for the batch's padding copies
    wrong_below: float,
    k: int,
    grouped: bool,
) -> dict[str, float]:
    """The trainer's per-step credit metrics, the same for every estimator (teacher or not):
    `credit_metrics` over the real rollouts and, when rollouts come in groups (rollout.n > 1),
    `grpo/groups_without_signal`."""
    keep = torch.tensor(real, dtype=torch.bool)
    reward = sequence_reward[keep]
    metrics = credit_metrics(advantages[keep], response_mask[keep], reward, wrong_below, k)
    if grouped:
        metrics["grpo/groups_without_signal"] = groups_without_signal(reward, [u for u, r in zip(uids, real) if r])
    return metrics
