"""Slow, obviously-correct float64 references (plain Python loops over samples, tokens, views)."""

import math


def avsd_token_reference(logp: float, logqs: list[float]) -> dict[str, float] | None:
    """AVSD signals of one token from its student log-prob and the log-probs of its valid views."""
    logqs = [q for q in logqs if math.isfinite(q)]
    M = len(logqs)
    if M == 0:
        return None
    deltas = [q - logp for q in logqs]
    consensus = sum(deltas) / M
    mx = max(logqs)
    log_q_arith = mx + math.log(sum(math.exp(q - mx) for q in logqs)) - math.log(M)
    residual = max(log_q_arith - sum(logqs) / M, 0.0)
    alignment = abs(consensus) / (sum(abs(d) for d in deltas) / M + 1e-8)
    magnitude = abs(consensus) / (abs(consensus) + residual + 1e-8)
    gate = alignment * magnitude
    return {
        "consensus": consensus,
        "residual": residual,
        "alignment": alignment,
        "magnitude": magnitude,
        "gate": gate,
        "advantage": consensus + gate * residual,
        "arithmetic": log_q_arith - logp,
    }


def avsd_batch_reference(student_logp, view_logq, view_mask, response_mask) -> dict[str, list[list[float]]]:
    """Nested lists [B][T] of every signal; 0 outside the response mask or with no valid view."""
    names = ["consensus", "residual", "alignment", "magnitude", "gate", "advantage", "arithmetic"]
    B, T, M = len(student_logp), len(student_logp[0]), len(view_mask[0])
    out = {n: [[0.0] * T for _ in range(B)] for n in names}
    for b in range(B):
        for t in range(T):
            if not response_mask[b][t]:
                continue
            r = avsd_token_reference(student_logp[b][t], [view_logq[b][m][t] for m in range(M) if view_mask[b][m]])
            if r is not None:
                for n in names:
                    out[n][b][t] = r[n]
    return out
