"""AVSD token signals as pure torch functions (no verl import).

Everything here works on the *sampled* token of every response position: the student
log-prob log p(y_t) and, for each of M teacher views, log q_m(y_t) of the same token.

    delta_m   = log q_m - log p                          per-view advantage
    A_G       = mean_m delta_m                           consensus (geometric pool)
    log q_A   = logsumexp_m log q_m - log M              arithmetic pool
    J         = max(log q_A - mean_m log q_m, 0)         residual (Jensen gap, >= 0)
    C         = |A_G| / (mean_m |delta_m| + eps)         alignment: 1 iff all views agree in sign
    R         = |A_G| / (|A_G| + J + eps)                magnitude
    gate      = C * R                                    in [0, 1]
    advantage = A_G + gate * J

Since gate * J = C * |A_G| * J / (|A_G| + J + eps) < |A_G|, the residual can strengthen or
weaken the consensus but never flip its sign.

M is the number of *valid* views of a token: a view is valid where the sample has it
(`view_mask`) and its log-prob is a usable number: finite and within LOGPROB_LIMIT nats of 0
(a view the teacher could not score is dropped and counted, never propagated as NaN, and so
is a sentinel such as float32's finfo.min, whose sums over views would overflow). A token
with no valid view gets advantage 0.

Shapes: B samples, M views, T response positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EPS = 1e-8  # the spec's epsilon in C and R

# No model's log-softmax gives a log-prob beyond 1e4 nats (p = e^-10000; logits spread over
# 1000 at temperature 0.1 still give only -1e4). A value past it is a sentinel, not a score
# (float32 finfo.min = -3.4e38 from a masked logit, say): kept, it made the sum over two views
# overflow to -inf and the advantage NaN, or the advantage -1e38 with one view. Inside the
# limit every sum below stays finite in float32 (|delta| <= 2e4 per view).
LOGPROB_LIMIT = 1e4


def usable_logprob(x: torch.Tensor) -> torch.Tensor:
    """Bool mask of the entries that are log-probs a model can give: finite, |x| <= LOGPROB_LIMIT."""
    return torch.isfinite(x) & (x.abs() <= LOGPROB_LIMIT)


@dataclass
class AvsdSignals:
    """Per-token AVSD quantities, each [B, T] and exactly 0 outside the response mask."""

    consensus: torch.Tensor  # A_G
    residual: torch.Tensor  # J
    alignment: torch.Tensor  # C
    magnitude: torch.Tensor  # R
    gate: torch.Tensor  # C * R
    advantage: torch.Tensor  # A_G + gate * J
    arithmetic: torch.Tensor  # log q_A - log p (the arithmetic-only advantage)
    views_valid: torch.Tensor  # [B, T] number of valid views per token (0 outside the mask)
    views_dropped: int  # (sample, view, token) triples the sample has but whose log-prob is not usable_logprob
    tokens_without_view: int  # response tokens left with no valid view (advantage 0)
    token_mask: torch.Tensor  # [B, T] bool: response tokens that have at least one valid view
    sign_conflict: torch.Tensor  # [B, T] bool: two valid views' deltas have opposite signs (C < 1)


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 inputs are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def check_student_logp(student_logp: torch.Tensor, response_mask: torch.Tensor) -> None:
    """The student log-prob is the rollout policy's own, of a token it sampled: a non-finite value
    there, or one beyond LOGPROB_LIMIT (a sentinel like finfo.min), is a bug upstream (not a
    missing view), so it is an error that says where, not something to skip."""
    bad = response_mask.bool() & ~usable_logprob(student_logp)
    if bad.any():
        rows, cols = bad.nonzero(as_tuple=True)
        raise ValueError(
            f"student log-prob (old_log_prob) is non-finite or beyond +-{LOGPROB_LIMIT:g} at {int(bad.sum())} response token(s); "
            f"first at sample {int(rows[0])}, position {int(cols[0])} "
            f"(value {student_logp[rows[0], cols[0]].item()})"
        )


def _check_shapes(student_logp, view_logq, view_mask, response_mask) -> None:
    if student_logp.dim() != 2:
        raise ValueError(f"student_logp must be [B, T], got shape {tuple(student_logp.shape)}")
    B, T = student_logp.shape
    if view_logq.dim() != 3 or view_logq.shape[0] != B or view_logq.shape[2] != T:
        raise ValueError(f"view_logq must be [B, M, T] = [{B}, M, {T}], got shape {tuple(view_logq.shape)}")
    M = view_logq.shape[1]
    if tuple(view_mask.shape) != (B, M):
        raise ValueError(f"view_mask must be [B, M] = [{B}, {M}], got shape {tuple(view_mask.shape)}")
    if tuple(response_mask.shape) != (B, T):
        raise ValueError(f"response_mask must be [B, T] = [{B}, {T}], got shape {tuple(response_mask.shape)}")


def avsd_signals(
    student_logp: torch.Tensor,  # [B, T]
    view_logq: torch.Tensor,  # [B, M, T]
    view_mask: torch.Tensor,  # [B, M] bool
    response_mask: torch.Tensor,  # [B, T] bool or 0/1
) -> AvsdSignals:
    """All AVSD signals for a batch, vectorised over samples, views and tokens."""
    _check_shapes(student_logp, view_logq, view_mask, response_mask)
    dtype = _compute_dtype(student_logp, view_logq)
    resp = response_mask.bool()
    check_student_logp(student_logp, resp)
    logp = torch.where(resp, student_logp.to(dtype), 0.0)  # [B, T], finite everywhere
    logq = view_logq.to(dtype)  # [B, M, T]

    # A view counts for a token where the sample has it and its log-prob is usable.
    has_view = view_mask.bool()[:, :, None] & resp[:, None, :]  # [B, M, T]
    valid = has_view & usable_logprob(logq)  # [B, M, T]
    views_dropped = int((has_view & ~valid).sum())
    n = valid.sum(dim=1).to(dtype)  # [B, T] valid views per token
    has_any = n > 0  # [B, T]
    n_safe = n.clamp_min(1.0)

    logq0 = torch.where(valid, logq, 0.0)  # invalid entries contribute nothing to sums
    delta = torch.where(valid, logq0 - logp[:, None, :], 0.0)  # [B, M, T]

    consensus = delta.sum(dim=1) / n_safe  # A_G
    mean_logq = logq0.sum(dim=1) / n_safe
    # logsumexp over valid views only; all-invalid columns give -inf and are masked below.
    lse = torch.logsumexp(torch.where(valid, logq, -math.inf), dim=1)  # [B, T]
    log_q_arith = torch.where(has_any, lse - torch.log(n_safe), 0.0)
    residual = (log_q_arith - mean_logq).clamp_min(0.0)  # J
    abs_consensus = consensus.abs()
    alignment = abs_consensus / (delta.abs().sum(dim=1) / n_safe + EPS)  # C
    magnitude = abs_consensus / (abs_consensus + residual + EPS)  # R
    gate = alignment * magnitude
    advantage = consensus + gate * residual
    arithmetic = log_q_arith - logp

    keep = has_any  # has_view already implies the response mask

    def z(x: torch.Tensor) -> torch.Tensor:
        return torch.where(keep, x, 0.0)

    return AvsdSignals(
        consensus=z(consensus),
        residual=z(residual),
        alignment=z(alignment),
        magnitude=z(magnitude),
        gate=z(gate),
        advantage=z(advantage),
        arithmetic=z(arithmetic),
        views_valid=torch.where(resp, n, 0.0),
        views_dropped=views_dropped,
        tokens_without_view=int((resp & ~has_any).sum()),
        token_mask=keep,
        # from the signs themselves: `alignment < 1` would also flag agreeing views whose
        # |delta| is tiny next to EPS (every such token at M = 1)
        sign_conflict=((valid & (delta > 0)).any(dim=1) & (valid & (delta < 0)).any(dim=1)),
    )


def opsd_advantage(
    student_logp: torch.Tensor,  # [B, T]
    teacher_logq: torch.Tensor,  # [B, T] one view (the full solution)
    response_mask: torch.Tensor,  # [B, T]
) -> torch.Tensor:
    """On-policy self-distillation: log q(y_t) - log p(y_t); 0 where the teacher log-prob is
    not usable (non-finite, beyond LOGPROB_LIMIT) or outside the response. Equals
    `avsd_signals(...).advantage` with M = 1."""
    resp = response_mask.bool()
    check_student_logp(student_logp, resp)
    dtype = _compute_dtype(student_logp, teacher_logq)
    ok = resp & usable_logprob(teacher_logq)
    return torch.where(ok, teacher_logq.to(dtype) - student_logp.to(dtype), 0.0)


def consensus_advantage(student_logp, view_logq, view_mask, response_mask) -> torch.Tensor:
    """Consensus-only ablation: A_G, the geometric pool of the views minus the student."""
    return avsd_signals(student_logp, view_logq, view_mask, response_mask).consensus


def arithmetic_advantage(student_logp, view_logq, view_mask, response_mask) -> torch.Tensor:
    """Arithmetic-only ablation: log q_A - log p, the arithmetic pool minus the student."""
    return avsd_signals(student_logp, view_logq, view_mask, response_mask).arithmetic


def rlsd_advantage(
    sequence_advantage: torch.Tensor,  # [B] GRPO advantage of each rollout
    teacher_gap: torch.Tensor,  # [B, T] delta_t, teacher-minus-student log-prob gap
    response_mask: torch.Tensor,  # [B, T]
    lam: float = 0.5,
    eps_w: float = 0.2,
) -> torch.Tensor:
    """RLSD: the reward sets the direction, the teacher sets the magnitude.

        w_t = exp(sign(A) * delta_t)
        advantage_t = A * ((1 - lam) + lam * clip(w_t, 1 - eps_w, 1 + eps_w))

    The spec writes the second term as `lam * clip(w_t, ...)`; we multiply it by A as well,
    because otherwise a wrong rollout (A < 0) would get positive credit from the teacher term
    and the reward would no longer set the direction. With this form sign(advantage_t) =
    sign(A) for every token, and tokens the teacher likes get larger |credit| on right
    rollouts and smaller |blame| on wrong ones. lam = 0 is plain GRPO.
    """
    resp = response_mask.bool()
    dtype = _compute_dtype(sequence_advantage, teacher_gap)
    A = sequence_advantage.to(dtype)[:, None]  # [B, 1]
    gap = torch.where(resp & torch.isfinite(teacher_gap), teacher_gap.to(dtype), 0.0)
    weight = torch.exp(torch.sign(A) * gap).clamp(1.0 - eps_w, 1.0 + eps_w)  # [B, T]
    return torch.where(resp, A * ((1.0 - lam) + lam * weight), 0.0)
