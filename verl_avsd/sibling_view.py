"""The `sibling` view: a correct response to the same prompt, from another of its rollouts.

SDPO's implicit feedback: a rollout that failed is re-read by the teacher next to a rollout of
the same prompt group that succeeded. After the rewards, for each rollout the trainer picks

    the first rollout of its group (same verl `uid`) in sampling order whose sequence reward is
    >= algorithm.avsd.wrong_below and whose response is not blank, other than the rollout itself

and its decoded response becomes the rollout's `sibling` view text (the teacher worker adds it
to the row's views, like `feedback`). A correct rollout gets another correct one, never itself.
None (view masked) where the group has no other correct rollout: all wrong, the rollout the only
correct one, groups of one rollout (rollout.n = 1), and verl's padding rows, which are never
picked either.

Sampling order is the rollout number in verl's sample key `{uid}_{session}_{turn}` (the order in
which the rollouts of a prompt were sampled), not the batch order, which verl's length balancing
sets: the pick does not depend on a response's length or content, so it favours neither short
nor long (nor more or less hesitant) answers. Keys of another shape fall back to batch order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def sampling_order(keys: Sequence[str], uids: Sequence) -> list[tuple]:
    """A sort key per rollout: (session, turn, batch position) parsed from verl's
    `{uid}_{session}_{turn}` key, or (inf, inf, batch position) for a key of another shape."""
    order = []
    for b, (key, uid) in enumerate(zip(keys, uids)):
        rest = str(key).removeprefix(f"{uid}_") if str(key).startswith(f"{uid}_") else ""
        parts = rest.split("_")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            order.append((int(parts[0]), int(parts[1]), b))
        else:
            order.append((math.inf, math.inf, b))
    return order


def choose_siblings(
    uids: Sequence,  # [B] prompt group of each rollout
    correct: Sequence[bool],  # [B] reward >= wrong_below (and a non-blank response)
    real: Sequence[bool] | None = None,  # [B] False for verl's padding rows
    order: Sequence | None = None,  # [B] sort keys (sampling_order); default batch position
) -> list[int | None]:
    """For each rollout the batch position of its sibling, or None."""
    B = len(uids)
    real = [True] * B if real is None else list(real)
    order = list(range(B)) if order is None else list(order)
    if not len(correct) == len(real) == len(order) == B:
        raise ValueError(f"choose_siblings: {B} uids, {len(correct)} correct flags, {len(real)} real flags, {len(order)} orders")
    candidates: dict = {}  # uid -> correct real rollouts, in sampling order
    for b in sorted(range(B), key=lambda i: order[i]):
        if real[b] and correct[b]:
            candidates.setdefault(uids[b], []).append(b)
    chosen: list[int | None] = []
    for b in range(B):
        others = [c for c in candidates.get(uids[b], []) if c != b] if real[b] else []
        chosen.append(others[0] if others else None)
    return chosen


def sibling_views(
    texts: Sequence[str],  # [B] decoded responses
    uids: Sequence,
    rewards: Sequence[float],  # [B] sequence reward
    wrong_below: float,
    real: Sequence[bool] | None = None,
    order: Sequence | None = None,
) -> tuple[list[str], dict[str, float]]:
    """Each rollout's `sibling` view text ("" = none) and the `sibling/*` metrics."""
    correct = [r >= wrong_below and bool(t.strip()) for r, t in zip(rewards, texts)]
    chosen = choose_siblings(uids, correct, real, order)
    views = ["" if c is None else texts[c] for c in chosen]
    real = [True] * len(texts) if real is None else list(real)
    shown = [bool(v) for v, r in zip(views, real) if r]
    wrong_shown = [bool(v) for v, r, rw in zip(views, real, rewards) if r and not rw >= wrong_below]
    metrics = {
        # share of rollouts with a sibling view, and of the wrong ones (those SDPO's feedback is for)
        "sibling/view_rate": sum(shown) / len(shown) if shown else math.nan,
        "sibling/wrong_view_rate": sum(wrong_shown) / len(wrong_shown) if wrong_shown else math.nan,
    }
    return views, metrics
