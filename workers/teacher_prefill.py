"""Packed M-view teacher prefill: log-probs of response tokens under many teacher contexts.

AVSD scores every rollout's response under M teacher contexts (prompt + one privileged view
each), so a batch of B rollouts gives up to B*M sequences `context_ids + response_ids` of very
different lengths. This module computes, for each of them, log q(response[t] | context,
response[:t]) with no padding:

1. `prefix_forest` finds the context prefixes several sequences share (the problem, under all
   M views of a rollout; the whole context, for the rollouts of one prompt): each becomes a
   segment fed once, the sequences' remainders its children (`share_prefix_min_tokens`).
2. `_fit` cuts each tree to `token_budget` tokens (copying a shared segment into each piece)
   and `plan_microbatches` packs the pieces into micro-batches (first-fit decreasing).
3. Each micro-batch becomes ONE packed row `[1, total]` (`_layout`): segments concatenated,
   position ids continuing each segment's ancestors, and attention of every segment confined to
   its ancestors and itself (causal), through the varlen kernels' separate query and key runs.
4. The decoder backbone runs once on the row; only the hidden states that predict response
   tokens are kept, and the output embedding + log-softmax + gather run over them in chunks of
   `logprob_chunk_tokens`, so no float32 `[N, V]` logits tensor larger than one chunk exists.

Without sharing (0, or the "sdpa_block"/"flex" backends) every sequence is one segment whose
position ids restart at 0, and the row is the classic packed batch.

Attention backends for the packed row (`attn=`):
- "sdpa_block": transformers' own sdpa path. With `attention_mask=None`, no cache and reset
  position ids, transformers 5.x detects the packed sequences
  (`masking_utils.find_packed_sequence_indices`) and builds the block-diagonal causal mask
  itself. Runs anywhere and knows sliding windows, but the mask is `[total, total]` and sdpa
  pays total^2 attention for it (about 2x slower than "sdpa_varlen" on CPU).
- "sdpa_varlen": causal sdpa on each segment's slice of the row, from the micro-batch's
  cu_seqlens (any device, sum(L^2) attention, no mask).
- "varlen": `torch.nn.attention.varlen.varlen_attn` (torch >= 2.10, CUDA, fp16/bf16).
- "flash_attn": `flash_attn.flash_attn_varlen_func` (needs the flash-attn package).
- "flex": transformers' "flex_attention", which also detects the packed row from the position
  ids and builds a block mask (compiles on first use: about a minute on CPU).
- "auto": "varlen" on CUDA with a half-precision model, else "sdpa_varlen"; "sdpa_block" for
  models with sliding-window layers (Gemma 2/3, Mistral-style).
The three cu_seqlens backends share one adapter registered as a transformers attention function
(`AttentionInterface.register`); only the kernel call differs.

Depends on torch and transformers only (no verl, no ray): the GPU benchmark machine has
nothing else.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import transformers

ATTN_BACKENDS = ("auto", "sdpa_block", "sdpa_varlen", "varlen", "flash_attn", "flex")

# The attention implementation each backend sets on the model. The cu_seqlens backends are our
# adapters, registered in transformers' AttentionInterface under these names; the names must not
# contain "flash" (transformers takes any such name for its own flash integration and tries to
# load a kernel for it).
_CU_SEQLENS_BACKENDS = {
    "sdpa_varlen": "avsd_packed_sdpa_varlen",
    "varlen": "avsd_packed_varlen",
    "flash_attn": "avsd_packed_fa_varlen",
}
_TRANSFORMERS_ATTN_NAME = {"sdpa_block": "sdpa", "flex": "flex_attention", **_CU_SEQLENS_BACKENDS}


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
# Chunked log-probs from hidden states
# --------------------------------------------------------------------------------------------


def _final_logit_transform(config) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model-specific map applied to `lm_head` output before softmax (float32 logits).

    Qwen2/Qwen3/Llama have none. Gemma 2/3 soft-cap (`final_logit_softcapping`), Cohere
    multiplies by `logit_scale`, Granite divides by `logits_scaling`.
    """
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    softcap = getattr(text_config, "final_logit_softcapping", None)
    scale = getattr(text_config, "logit_scale", None)
    divide = getattr(text_config, "logits_scaling", None)

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        if scale is not None:
            logits = logits * scale
        if divide is not None:
            logits = logits / divide
        return logits

    return transform


def chunked_token_logprobs(
    model: transformers.PreTrainedModel,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    chunk_tokens: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log softmax(lm_head(hidden) / temperature)[targets], `chunk_tokens` rows at a time, in float32.

    `temperature` matches verl's log-probs of a rollout sampled at that temperature (verl
    divides the logits by it), so teacher and student log-probs compare like with like.

    hidden: [N, H] final hidden states (after the backbone's last norm), model dtype.
    targets: [N] token ids that each row predicts.
    Returns [N] float32. The largest logits tensor alive is [chunk_tokens, V]: once in the
    model dtype (the matmul) and once in float32.
    """
    if chunk_tokens < 1:
        raise ValueError(f"logprob_chunk_tokens must be >= 1, got {chunk_tokens}")
    output_embedding = model.get_output_embeddings()  # lm_head; shares the weight when tied
    if output_embedding is None:
        raise ValueError(f"{type(model).__name__} has no output embedding (lm_head); need a causal LM")
    to_final_logits = _final_logit_transform(model.config)

    out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)  # [N]
    for start in range(0, targets.shape[0], chunk_tokens):
        end = min(start + chunk_tokens, targets.shape[0])
        logits = to_final_logits(output_embedding(hidden[start:end]).float())  # [n, V] float32
        if temperature != 1.0:
            logits = logits / temperature
        # log_softmax(x)[y] = x[y] - logsumexp(x): avoids a second [n, V] tensor for log_softmax.
        target_logit = logits.gather(1, targets[start:end, None]).squeeze(1)  # [n]
        out[start:end] = target_logit - torch.logsumexp(logits, dim=-1)
        del logits
    return out


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


# --------------------------------------------------------------------------------------------
# Variable-length attention kernels (GPU) behind one transformers attention adapter
# --------------------------------------------------------------------------------------------
# A kernel takes q [Tq, Hq, D], k/v [Tk, Hkv, D], cu_seqlens_q/cu_seqlens_k int32 [S+1], the
# longest query and key runs and the softmax scale, and returns [Tq, Hq, D]: query run s attends
# to key run s, causally with the ends aligned (bottom-right: the last query sees every key), as
# flash attention does. Without shared prefixes the runs are the same and this is plain causal.


def _torch_varlen_kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    kwargs = {}
    if "window_size" in params:  # torch >= 2.11: (-1, 0) means causal (bottom-right), no window
        kwargs["window_size"] = (-1, 0)
    else:  # torch 2.10
        kwargs["is_causal"] = True
    if "scale" in params:
        kwargs["scale"] = scale
    elif abs(scale - q.shape[-1] ** -0.5) > 1e-12:
        raise RuntimeError("this torch's varlen_attn has no `scale` argument; the model needs a custom scale")
    if k.shape[1] != q.shape[1]:  # grouped-query attention
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:  # query head h reads kv head h // group, as transformers' repeat_kv does
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs)


def _sdpa_per_sequence_kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    """Any device: causal sdpa on each run's slice of the packed row, no [T, T] mask.

    Costs sum(Lk^2 / 2) attention, as a sequence fed whole would (a block mask makes sdpa pay
    T^2), at the price of one sdpa call per run and layer.
    """
    group = q.shape[1] // k.shape[1]
    out = torch.empty_like(q)  # [Tq, Hq, D]
    runs = zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist())
    for q_start, q_end, k_start, k_end in runs:
        # 4-D [1, H, L, D] inputs: with 3-D ones CPU sdpa falls back to its slow math kernel.
        q_run = q[None, q_start:q_end].transpose(1, 2)  # [1, Hq, Lq, D]
        k_run = k[None, k_start:k_end].transpose(1, 2).repeat_interleave(group, dim=1)  # [1, Hq, Lk, D], as repeat_kv
        v_run = v[None, k_start:k_end].transpose(1, 2).repeat_interleave(group, dim=1)
        # Queries that continue a shared prefix (lq < lk: query i sees keys 0 .. lk - lq + i) go
        # in as the last lq of lk causal queries, the first ones zeros and thrown away: CPU sdpa
        # skips the causal upper triangle but computes every entry of an explicit mask.
        skipped = (k_end - k_start) - (q_end - q_start)
        if skipped:
            q_run = torch.cat([q_run.new_zeros(1, q_run.shape[1], skipped, q_run.shape[3]), q_run], dim=2)
        attended = torch.nn.functional.scaled_dot_product_attention(q_run, k_run, v_run, is_causal=True, scale=scale)
        out[q_start:q_end] = attended[0, :, skipped:].transpose(0, 1)
    return out


def _flash_attn_kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale):
    from flash_attn import flash_attn_varlen_func  # handles GQA itself; causal is bottom-right since 2.1

    return flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=scale, causal=True)


# Looked up at call time (not bound at registration) so tests can substitute a CPU reference.
_VARLEN_KERNELS: dict[str, Callable] = {
    "varlen": _torch_varlen_kernel,
    "flash_attn": _flash_attn_kernel,
    "sdpa_varlen": _sdpa_per_sequence_kernel,
}


def _packed_attention(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    *,
    kernel_name: str,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    avsd_kv_index: torch.Tensor | None = None,
    **kwargs,
):
    """transformers attention function: q [1, Hq, T, D], k/v [1, Hkv, T, D] -> ([1, T, Hq, D], None).

    `avsd_kv_index` [Tk] gathers each run's keys (its shared-prefix ancestors, then itself) from
    the row; None means every run's keys are its own queries' tokens.
    """
    if cu_seq_lens_q is None or max_length_q is None:
        raise RuntimeError(
            f"attention '{kernel_name}' needs cu_seq_lens_q/max_length_q; call it through packed_response_logprobs"
        )
    if query.shape[0] != 1:
        raise RuntimeError(f"attention '{kernel_name}' expects one packed row, got batch {query.shape[0]}")
    if sliding_window is not None:
        raise NotImplementedError(f"attention '{kernel_name}' does not do sliding-window layers; use attn='sdpa_block'")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    # Kernels want token-major, contiguous [T, H, D] (as transformers' own flash path makes them).
    q = query[0].transpose(0, 1).contiguous()  # [T, Hq, D]
    k = key[0].transpose(0, 1)  # [T, Hkv, D]
    v = value[0].transpose(0, 1)
    if avsd_kv_index is not None:
        k, v = k[avsd_kv_index], v[avsd_kv_index]  # [Tk, Hkv, D], contiguous copies
    else:
        k, v = k.contiguous(), v.contiguous()
    cu_k = cu_seq_lens_q if cu_seq_lens_k is None else cu_seq_lens_k
    max_k = max_length_q if max_length_k is None else max_length_k
    out = _VARLEN_KERNELS[kernel_name](q, k, v, cu_seq_lens_q, cu_k, max_length_q, max_k, scaling)  # [T, Hq, D]
    return out.unsqueeze(0), None


for _backend, _name in _CU_SEQLENS_BACKENDS.items():
    transformers.AttentionInterface.register(_name, functools.partial(_packed_attention, kernel_name=_backend))


def _resolve_backend(attn: str, device: torch.device, dtype: torch.dtype, has_sliding_layers: bool) -> str:
    if attn not in ATTN_BACKENDS:
        raise ValueError(f"attn must be one of {ATTN_BACKENDS}, got {attn!r}")
    half = dtype in (torch.float16, torch.bfloat16)
    if attn == "auto":
        if has_sliding_layers:  # only transformers' own masks know the window
            return "sdpa_block"
        if device.type == "cuda" and half and _module_exists("torch.nn.attention.varlen"):
            return "varlen"
        return "sdpa_varlen"
    if attn in _CU_SEQLENS_BACKENDS and has_sliding_layers:
        raise ValueError(f"attn={attn!r} does not do sliding-window layers; use attn='sdpa_block' or 'flex'")
    # The real flash kernels need CUDA + half precision (a test may swap in a CPU reference kernel).
    real_flash_kernel = _VARLEN_KERNELS.get(attn) in (_torch_varlen_kernel, _flash_attn_kernel)
    if real_flash_kernel and (device.type != "cuda" or not half):
        raise ValueError(
            f"attn={attn!r} runs flash kernels: needs a CUDA model in float16/bfloat16, "
            f"got device {device} dtype {dtype}; use attn='sdpa_varlen' or 'sdpa_block'"
        )
    return attn


def resolve_attn_backend(model: transformers.PreTrainedModel, attn: str = "auto") -> str:
    """The backend `packed_response_logprobs(model, ..., attn=attn)` will use (for logs and benchmarks)."""
    parameter = next(model.parameters())
    layer_types = getattr(model.config.get_text_config(), "layer_types", None) or []
    return _resolve_backend(attn, parameter.device, parameter.dtype, "sliding_attention" in layer_types)


@functools.cache
def _aligns_causal_bottom_right(kernel: Callable, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `kernel` lets query i of a run of Lq see keys 0 .. Lk - Lq + i (flash attention's
    causal alignment when Lq < Lk), which shared prefixes rely on. Checked once per kernel,
    device and dtype on a tiny random case against sdpa with that mask: a kernel (or a torch
    version) that aligns otherwise would silently give wrong log-probs."""
    generator = torch.Generator().manual_seed(0)
    lq, lk, heads, dim = 5, 13, 2, 64
    q, k, v = (torch.randn(n, heads, dim, generator=generator) for n in (lq, lk, lk))
    out = kernel(
        q.to(device, dtype), k.to(device, dtype), v.to(device, dtype),
        torch.tensor([0, lq], dtype=torch.int32, device=device), torch.tensor([0, lk], dtype=torch.int32, device=device),
        lq, lk, dim**-0.5,
    )  # fmt: skip
    visible = torch.ones(lq, lk, dtype=torch.bool).tril(diagonal=lk - lq)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=visible, scale=dim**-0.5
    ).transpose(0, 1)  # [lq, heads, dim]
    return bool(torch.allclose(out.float().cpu(), expected, atol=3e-2, rtol=0))


def _module_exists(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@contextlib.contextmanager
def _inference_setup(model: transformers.PreTrainedModel, attn_implementation: str):
    """Eval mode + the wanted attention implementation for the duration; restores both after."""
    before = model.config._attn_implementation
    was_training = model.training
    if attn_implementation != before:
        model.set_attn_implementation(attn_implementation)
    model.eval()
    try:
        # no_grad, not inference_mode: FSDP2's unshard bumps parameter version counters, which
        # inference tensors do not have ("Inference tensors do not track version counter").
        with torch.no_grad():
            yield
    finally:
        if attn_implementation != before:
            model.set_attn_implementation(before)
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# The public entry point
# --------------------------------------------------------------------------------------------


def _check_sequences(sequences: Sequence, vocab_size: int | None) -> None:
    for i, item in enumerate(sequences):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"sequences[{i}] must be a (context_ids, response_ids) pair, got {type(item).__name__}")
        for field, ids in zip(("context_ids", "response_ids"), item):
            if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
                raise ValueError(f"sequences[{i}].{field} must be a 1-D tensor, got {getattr(ids, 'shape', type(ids))}")
            if ids.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"sequences[{i}].{field} must hold integer token ids, got dtype {ids.dtype}")
            if ids.numel() and (int(ids.min()) < 0 or (vocab_size is not None and int(ids.max()) >= vocab_size)):
                raise ValueError(
                    f"sequences[{i}].{field} has token ids outside [0, {vocab_size}): "
                    f"min {int(ids.min())}, max {int(ids.max())}"
                )
        if item[0].numel() == 0:
            raise ValueError(
                f"sequences[{i}].context_ids is empty: the first response token needs a context to predict it"
            )


def packed_response_logprobs(
    model: transformers.PreTrainedModel,
    sequences: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    token_budget: int,
    logprob_chunk_tokens: int = 4096,
    attn: str = "auto",
    out_device: torch.device | str = "cpu",
    temperature: float = 1.0,
    share_prefix_min_tokens: int = 16,
    stats: dict | None = None,
) -> list[torch.Tensor]:
    """Log-prob of every response token of every (context_ids, response_ids) pair.

    Returns, per sequence, a float32 tensor [R] on `out_device` with
    out[t] = log p(response_ids[t] | context_ids, response_ids[:t]).

    Each micro-batch of at most `token_budget` fed tokens runs as one packed row [1, total]
    with attention confined to each sequence. The last response token is never fed (nothing is
    predicted from it), so a sequence alone costs Lc + R - 1 tokens. A context prefix of at least
    `share_prefix_min_tokens` tokens that several sequences share (the problem, for the M views
    of a rollout; the whole context, for the rollouts of a prompt under one view) is fed once per
    micro-batch and attended to by each of them (0: never share; the "sdpa_block" and "flex"
    backends, whose masks come from position ids, never share). The model runs in eval + no-grad
    mode; its attention implementation and train/eval mode are restored afterwards.

    `stats`, when given, receives `sequence_tokens` (sum of Lc + R - 1), `fed_tokens` (what the
    model ran on) and `microbatches`.
    """
    _check_sequences(sequences, getattr(model.config.get_text_config(), "vocab_size", None))
    if logprob_chunk_tokens < 1:
        raise ValueError(f"logprob_chunk_tokens must be >= 1, got {logprob_chunk_tokens}")
    if isinstance(share_prefix_min_tokens, bool) or not isinstance(share_prefix_min_tokens, int) or share_prefix_min_tokens < 0:
        raise ValueError(f"share_prefix_min_tokens must be an int >= 0, got {share_prefix_min_tokens!r}")
    backend = resolve_attn_backend(model, attn)
    parameter = next(model.parameters())
    device = parameter.device
    if backend not in _CU_SEQLENS_BACKENDS:  # their masks know only sequences that restart at position 0
        share_prefix_min_tokens = 0
    elif share_prefix_min_tokens and not _aligns_causal_bottom_right(_VARLEN_KERNELS[backend], device, parameter.dtype):
        warnings.warn(
            f"attention kernel {backend!r} does not align causal masks bottom-right for runs with more keys than "
            "queries on this torch; shared prefixes are off (exact, every sequence fed whole)",
            stacklevel=2,
        )
        share_prefix_min_tokens = 0

    # An empty response needs no forward pass. Each tree of the forest is cut to fit the budget,
    # then the pieces are packed into micro-batches, longest first.
    scored = [i for i, (_, response) in enumerate(sequences) if len(response)]
    trees = [piece for tree in prefix_forest(sequences, scored, share_prefix_min_tokens) for piece in _fit(tree, token_budget)]
    plan = [[trees[j] for j in batch] for batch in plan_microbatches([tree.cost() for tree in trees], token_budget)]
    if stats is not None:
        stats.update(
            sequence_tokens=sum(len(sequences[i][0]) + len(sequences[i][1]) - 1 for i in scored),
            fed_tokens=sum(tree.cost() for tree in trees),
            microbatches=len(plan),
        )

    backbone = model.get_decoder()
    results = [torch.empty(0, dtype=torch.float32, device=out_device) for _ in sequences]
    batch_logprobs: list[torch.Tensor] = []  # per micro-batch [N_b] float32, on the model's device
    order: list[int] = []  # the sequences they score, in that order
    with _inference_setup(model, _TRANSFORMERS_ATTN_NAME[backend]):
        for batch in plan:
            with torch.profiler.record_function("avsd_teacher/layout"):
                row = _layout(batch, sequences)
            attn_kwargs = {}
            if backend in _CU_SEQLENS_BACKENDS:
                q_lengths, k_lengths = row.cu_seqlens_q.diff(), row.cu_seqlens_k.diff()
                attn_kwargs = {
                    "cu_seq_lens_q": row.cu_seqlens_q.to(device),
                    "cu_seq_lens_k": row.cu_seqlens_k.to(device),
                    "max_length_q": int(q_lengths.max()),
                    "max_length_k": int(k_lengths.max()),
                    "avsd_kv_index": None if row.kv_index is None else row.kv_index.to(device),
                }

            # use_cache=False matters: with a cache transformers skips packed-sequence detection
            # and the sdpa path would let sequences attend to each other.
            # (the named ranges cost nothing unless torch.profiler runs: bench/teacher_prefill.py --profile)
            with torch.profiler.record_function("avsd_teacher/backbone"):
                hidden = backbone(
                    input_ids=row.input_ids.to(device)[None],  # [1, total]
                    position_ids=row.position_ids.to(device)[None],  # [1, total]
                    attention_mask=None,
                    use_cache=False,
                    **attn_kwargs,
                ).last_hidden_state[0]  # [total, H]
            with torch.profiler.record_function("avsd_teacher/logprob_head"):
                logprobs = chunked_token_logprobs(
                    model, hidden[row.predict_at.to(device)], row.targets.to(device), logprob_chunk_tokens, temperature
                )  # [N]
            del hidden

            # Kept on the device: a copy to the host here would wait for the GPU, which could
            # otherwise run this micro-batch while Python lays out the next one.
            batch_logprobs.append(logprobs)
            order += row.sequences

    if order:
        flat = torch.cat(batch_logprobs).to(out_device)  # [sum R] one transfer for the whole call
        for i, sequence_logprobs in zip(order, flat.split([len(sequences[i][1]) for i in order])):
            results[i] = sequence_logprobs
    return results
