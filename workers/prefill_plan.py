"""Planning the packed teacher prefill: which tokens go into which packed row, in what order.

One job: pure index arithmetic over token-id tensors, no model call. Given the (context_ids,
response_ids) pairs of one step it finds the context prefixes several sequences share (a compacted
trie turned into a forest of segments, `prefix_forest`), cuts each tree to the token budget
(`_fit`), packs the pieces into micro-batches (`plan_microbatches`, first-fit decreasing) and lays
a micro-batch out as one packed row with its position ids, cu_seqlens and key index (`_layout`).
`teacher_prefill.py` runs the model on the rows; `prefill_attention.py` attends within them.

Depends on torch only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# --------------------------------------------------------------------------------------------
# Micro-batch planning
# --------------------------------------------------------------------------------------------


def plan_microbatches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Group sequence indices into micro-batches of at most `token_budget` tokens in total.

    First-fit decreasing: sequences are taken longest first (ties by index, so the plan is
    deterministic) and each goes into the first micro-batch it still fits in. A sequence longer
    than the budget gets a micro-batch of its own. Micro-batches come out in creation order, so
    the first holds the longest sequence. Every index appears exactly once.
    """
    if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 1:
        raise ValueError(f"plan_microbatches: token_budget must be a positive int, got {token_budget!r}")
    for i, length in enumerate(lengths):
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ValueError(f"plan_microbatches: lengths[{i}] must be a non-negative int, got {length!r}")

    longest_first = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    batch_tokens: list[int] = []
    for i in longest_first:
        for b, used in enumerate(batch_tokens):
            if used + lengths[i] <= token_budget:
                batches[b].append(i)
                batch_tokens[b] += lengths[i]
                break
        else:  # fits nowhere (or longer than the budget): open a new micro-batch
            batches.append([i])
            batch_tokens.append(lengths[i])
    return batches


# --------------------------------------------------------------------------------------------
# Shared context prefixes: a forest of segments, each fed once
# --------------------------------------------------------------------------------------------
# The teacher sequences of one step share long context prefixes: the M views of a rollout all
# start with the same chat header + problem, and the n rollouts of a prompt have identical
# contexts for each view. Feeding such a prefix once and letting every sequence that starts with
# it attend to it gives each sequence exactly the attention it would have alone (same tokens,
# same positions), for fewer tokens through the projections and MLPs.
#
# A segment is a run of tokens fed once. Its parent is the segment its tokens continue; a token
# attends to all of its ancestors' tokens and causally to its own segment. A leaf is one
# sequence's remainder: the rest of its context after its parent, then response[:-1]. Without
# sharing every sequence is a single root leaf starting at position 0.


@dataclass(eq=False)
class _Segment:
    tokens: torch.Tensor  # [L] token ids fed for this segment
    start: int  # position id of its first token: its ancestors hold `start` tokens
    children: list[_Segment] = field(default_factory=list)
    sequence: int | None = None  # a leaf: the index of the (context, response) pair it completes

    def cost(self) -> int:
        """Tokens fed for this segment and everything below it."""
        return len(self.tokens) + sum(child.cost() for child in self.children)


def _common_prefix_length(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(len(a), len(b))
    mismatch = (a[:n] != b[:n]).nonzero()
    return int(mismatch[0]) if len(mismatch) else n


class _TrieNode:
    """A node of the compacted trie of the contexts: the first `depth` tokens of `example`'s context."""

    def __init__(self, depth: int, example: int, ends: list[int] | None = None):
        self.depth, self.example, self.ends = depth, example, ends or []  # ends: sequences whose context ends here
        self.children: list[_TrieNode] = []

    def sequences_below(self) -> int:
        return len(self.ends) + sum(child.sequences_below() for child in self.children)


def _leaf(sequences, i: int, start: int) -> _Segment:
    context, response = sequences[i]
    return _Segment(torch.cat([context[start:].long(), response[:-1].long()]), start, sequence=i)


def prefix_forest(sequences, scored: list[int], min_shared_tokens: int) -> list[_Segment]:
    """The sequences `scored` as a forest in which every context prefix of at least
    `min_shared_tokens` tokens that two or more of them share is one segment (0: no sharing)."""
    if min_shared_tokens <= 0:
        return [_leaf(sequences, i, 0) for i in scored]
    ends: dict[tuple, list[int]] = {}  # context -> the sequences with it, in order
    for i in scored:
        ends.setdefault(tuple(sequences[i][0].tolist()), []).append(i)

    # Compacted trie from the sorted contexts: neighbours in sorted order branch at their common
    # prefix length, so one stack walk builds it (the path to the previous context is the stack).
    root = _TrieNode(0, -1)
    stack, previous = [root], None
    for key in sorted(ends):
        first = ends[key][0]
        context = sequences[first][0]
        common = 0 if previous is None else _common_prefix_length(sequences[previous][0], context)
        popped = None
        while stack[-1].depth > common:
            popped = stack.pop()
        if stack[-1].depth < common:  # the previous path branches inside `popped`: split it
            branch = _TrieNode(common, first)
            stack[-1].children[-1] = branch  # `popped` was the top's newest child
            branch.children.append(popped)
            stack.append(branch)
        node = _TrieNode(len(context), first, ends[key])
        stack[-1].children.append(node)
        stack.append(node)
        previous = first

    # Keep a trie node as a segment when at least two sequences continue it and it holds at least
    # `min_shared_tokens` tokens beyond the nearest kept ancestor; the others dissolve into
    # their descendants, which then start at that ancestor.
    forest: list[_Segment] = []

    def emit(node: _TrieNode, base: int, siblings: list[_Segment]) -> None:
        if node is not root and node.sequences_below() >= 2 and node.depth - base >= min_shared_tokens:
            segment = _Segment(sequences[node.example][0][base : node.depth].long(), base)
            siblings.append(segment)
            base, siblings = node.depth, segment.children
        siblings.extend(_leaf(sequences, i, base) for i in node.ends)
        for child in node.children:
            emit(child, base, siblings)

    emit(root, 0, forest)
    return forest


def _fit(segment: _Segment, capacity: int) -> list[_Segment]:
    """`segment`'s tree as trees of at most `capacity` tokens: when it is too big, its children's
    pieces are packed (first-fit decreasing) under copies of the segment. A single leaf is never
    split, so a sequence longer than the capacity still comes back whole."""
    if segment.cost() <= capacity or not segment.children:
        return [segment]
    room = capacity - len(segment.tokens)
    pieces = [piece for child in segment.children for piece in _fit(child, room)]
    if room >= 1:
        bins = plan_microbatches([piece.cost() for piece in pieces], room)
    else:  # the segment alone fills the capacity: one copy per piece
        bins = [[j] for j in range(len(pieces))]
    return [_Segment(segment.tokens, segment.start, [pieces[j] for j in b]) for b in bins]


@dataclass
class _PackedRow:
    """One micro-batch laid out as a packed row [1, total] plus what attention and the head need."""

    input_ids: torch.Tensor  # [total]
    position_ids: torch.Tensor  # [total]
    cu_seqlens_q: torch.Tensor  # [S + 1] int32: the row's non-empty segments, in row order
    cu_seqlens_k: torch.Tensor  # [S + 1] int32: each segment's ancestors + itself
    kv_index: torch.Tensor | None  # [cu_seqlens_k[-1]] row index of every key, None when no segment has ancestors
    predict_at: torch.Tensor  # [N] row index of the hidden state that predicts each scored token
    targets: torch.Tensor  # [N] the scored response tokens
    sequences: list[int]  # whose responses, in the order of predict_at


def _layout(trees: list[_Segment], sequences) -> _PackedRow:
    ids, positions, q_lengths, k_lengths, kv_ranges = [], [], [], [], []
    predict_at, targets, order = [], [], []
    offset = 0

    def visit(segment: _Segment, ancestors: list[tuple[int, int]]) -> None:
        nonlocal offset
        here = (offset, offset + len(segment.tokens))  # its rows in the packed row
        ids.append(segment.tokens)
        positions.append(segment.start + torch.arange(len(segment.tokens)))
        offset = here[1]
        if len(segment.tokens):  # an empty leaf (one-token response after a shared context) has no queries
            q_lengths.append(len(segment.tokens))
            kv_ranges.extend([*ancestors, here])
            k_lengths.append(sum(end - start for start, end in ancestors) + len(segment.tokens))
        if segment.sequence is not None:
            context, response = sequences[segment.sequence]
            # Position p predicts token p + 1: response token t is predicted at position
            # len(context) - 1 + t, i.e. at row here[0] + (that - start); at -1 it is the last
            # row of the parent (the context ended exactly where the parent ends).
            at = here[0] + len(context) - 1 - segment.start + torch.arange(len(response))
            if len(context) == segment.start:
                at[0] = ancestors[-1][1] - 1
            predict_at.append(at)
            targets.append(response.long())
            order.append(segment.sequence)
        for child in segment.children:
            visit(child, [*ancestors, here])

    for tree in trees:
        visit(tree, [])
    shared = any(segment.start > 0 for segment in _walk(trees))
    cu_q, cu_k = (torch.zeros(len(q_lengths) + 1, dtype=torch.int32) for _ in range(2))
    cu_q[1:] = torch.tensor(q_lengths, dtype=torch.int32).cumsum(0)
    cu_k[1:] = torch.tensor(k_lengths, dtype=torch.int32).cumsum(0)
    return _PackedRow(
        input_ids=torch.cat(ids),
        position_ids=torch.cat(positions),
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        kv_index=torch.cat([torch.arange(start, end) for start, end in kv_ranges]) if shared else None,
        predict_at=torch.cat(predict_at),
        targets=torch.cat(targets),
        sequences=order,
    )


def _walk(trees: list[_Segment]):
    for tree in trees:
        yield tree
        yield from _walk(tree.children)
