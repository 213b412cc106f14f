"""Packed M-view teacher prefill: log-probs of response tokens under many teacher contexts.

AVSD scores every rollout's response under M teacher contexts (prompt + one privileged view
each), so a batch of B rollouts gives up to B*M sequences `context_ids + response_ids` of very
different lengths. `packed_response_logprobs` computes, for each of them,
log q(response[t] | context, response[:t]) with no padding:

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

Reading order:
1. `prefill_plan.py`: steps 1-3, pure index arithmetic (forest, budget cuts, packing, layout).
2. `prefill_attention.py`: the attention backends ("auto", "sdpa_varlen", "varlen", ...), the
   varlen kernels behind one transformers adapter and the bottom-right alignment guard.
3. this module: step 4, the call that runs the model (`packed_response_logprobs`) and the
   chunked log-prob head (`chunked_token_logprobs`).

Depends on torch and transformers only (no verl, no ray): the GPU benchmark machine has
nothing else.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence

import torch
import transformers

from .prefill_attention import CU_SEQLENS_BACKENDS, TRANSFORMERS_ATTN_NAME, kernel_aligns_bottom_right, resolve_attn_backend
from .prefill_plan import _fit, _layout, plan_microbatches, prefix_forest

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
                    f"sequences[{i}].{field} has token ids outside [0, {vocab_size}): min {int(ids.min())}, max {int(ids.max())}"
                )
        if item[0].numel() == 0:
            raise ValueError(f"sequences[{i}].context_ids is empty: the first response token needs a context to predict it")


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
    if backend not in CU_SEQLENS_BACKENDS:  # their masks know only sequences that restart at position 0
        share_prefix_min_tokens = 0
    elif share_prefix_min_tokens and not kernel_aligns_bottom_right(backend, device, parameter.dtype):
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
    with _inference_setup(model, TRANSFORMERS_ATTN_NAME[backend]):
        for batch in plan:
            with torch.profiler.record_function("avsd_teacher/layout"):
                row = _layout(batch, sequences)
            attn_kwargs = {}
            if backend in CU_SEQLENS_BACKENDS:
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
