"""`verl-avsd signals`: a readable table of AVSD's per-token signals next to OPSD and the two
ablations, on a small hand-made batch. No model and no training: it shows what the estimators
compute from given log-probs."""

from __future__ import annotations

import torch

from verl_avsd.signals import avsd_signals, opsd_advantage

# One response of 6 tokens, three views (full, partial, answer). Each token tells a story:
TOKENS = ["Let", "x", "=", "12", "so", "done"]
STORY = [
    "all views like it",
    "all views dislike it",
    "views disagree in sign",
    "one view strongly likes it",
    "views identical",
    "answer view is silent (-inf)",
]
STUDENT = [-1.2, -0.4, -1.0, -2.5, -0.8, -0.3]
VIEWS = {
    "full": [-0.3, -1.5, -0.2, -0.1, -0.6, -0.2],
    "partial": [-0.6, -1.2, -1.8, -2.4, -0.6, -0.25],
    "answer": [-0.9, -0.9, -1.5, -2.6, -0.6, float("-inf")],
}


def main(argv: list[str] | None = None) -> int:
    logp = torch.tensor([STUDENT], dtype=torch.float64)  # [B=1, T]
    logq = torch.tensor([list(VIEWS.values())], dtype=torch.float64)  # [B=1, M=3, T]
    view_mask = torch.ones(1, 3, dtype=torch.bool)
    resp = torch.ones(1, len(TOKENS), dtype=torch.bool)
    s = avsd_signals(logp, logq, view_mask, resp)
    opsd = opsd_advantage(logp, logq[:, 0], resp)

    print("AVSD signal demo (no model, no training): per-token signals of one response")
    print("from hand-made student/teacher log-probs; 3 views: full, partial, answer.\n")
    head = f"{'token':>6} {'log p':>6} {'full':>6} {'part':>6} {'ans':>6} | {'A_G':>6} {'J':>6} {'C':>5} {'R':>5} {'gate':>5} | {'AVSD':>6} {'OPSD':>6} {'cons':>6} {'arith':>6}  note"
    print(head)
    print("-" * len(head))
    for t, tok in enumerate(TOKENS):
        q = [VIEWS[v][t] for v in VIEWS]
        print(
            f"{tok:>6} {STUDENT[t]:6.2f} {q[0]:6.2f} {q[1]:6.2f} {q[2]:6.2f} | "
            f"{s.consensus[0, t]:6.3f} {s.residual[0, t]:6.3f} {s.alignment[0, t]:5.2f} {s.magnitude[0, t]:5.2f} "
            f"{s.gate[0, t]:5.2f} | {s.advantage[0, t]:6.3f} {opsd[0, t]:6.3f} {s.consensus[0, t]:6.3f} "
            f"{s.arithmetic[0, t]:6.3f}  {STORY[t]}"
        )
    print(f"\nviews dropped (non-finite): {s.views_dropped}; the sign of AVSD always equals the sign of A_G.")
    print("AVSD = A_G + gate * J; OPSD = full view only; cons = consensus-only; arith = arithmetic-only.")
    return 0
