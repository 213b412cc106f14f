"""Packed M-view teacher prefill: log-probs of response tokens under many teacher contexts.

AVSD scores every rollout's response under M teacher contexts (prompt + one privileged view
each), so a batch of B rollouts gives up to B*M sequences `context_ids + response_ids` of very
different lengths. This module computes, for each of them, log q(response[t] | context,
response[:t]) with no padding:

1. `plan_microbatches` groups the sequences into micro-batches of at most `token_budget`
   tokens (first-fit decreasing, longest first).
2. Each micro-batch becomes ONE packed row `[1, total]`: the sequences are concatenated,
   position ids restart at 0 for every sequence, and attention stays inside each sequence.
3. The decoder backbone runs once on the row; only the hidden states that predict response
   tokens are kept, and the output embedding + log-softmax + gather run over them in chunks of
   `logprob_chunk_tokens`, so no float32 `[N, V]` logits tensor larger than one chunk exists.

Attention backends for the packed row (`attn=`):
- "sdpa_block": transformers' own sdpa path. With `attention_mask=None`, no cache and reset
  position ids, transformers 5.x detects the packed sequences
  (`masking_utils.find_packed_sequence_indices`) and builds the block-diagonal causal mask
  itself. Runs anywhere and knows sliding windows, but the mask is `[total, total]` and sdpa
  pays total^2 attention for it (about 2x slower than "sdpa_varlen" on CPU).
- "sdpa_varlen": causal sdpa on each sequence's slice of the row, from the micro-batch's
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
from collections.abc import Callable, Sequence

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
# Variable-length attention kernels (GPU) behind one transformers attention adapter
# --------------------------------------------------------------------------------------------
# A kernel takes q [T, Hq, D], k/v [T, Hkv, D], cu_seqlens int32 [S+1], the longest sequence
# and the softmax scale, and returns causal attention within each sequence: [T, Hq, D].


def _torch_varlen_kernel(q, k, v, cu_seqlens, max_len, scale):
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    kwargs = {}
    if "window_size" in params:  # torch >= 2.11: (-1, 0) means causal, no window
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
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, **kwargs)


def _sdpa_per_sequence_kernel(q, k, v, cu_seqlens, max_len, scale):
    """Any device: causal sdpa on each sequence's slice of the packed row, no [T, T] mask.

    Costs sum(L^2) attention like the varlen kernels (a block mask makes sdpa pay T^2), at the
    price of one sdpa call per sequence and layer.
    """
    group = q.shape[1] // k.shape[1]
    out = torch.empty_like(q)  # [T, Hq, D]
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        # 4-D [1, H, L, D] inputs: with 3-D ones CPU sdpa falls back to its slow math kernel.
        q_seq = q[None, start:end].transpose(1, 2)  # [1, Hq, L, D]
        k_seq = k[None, start:end].transpose(1, 2).repeat_interleave(group, dim=1)  # [1, Hq, L, D], as repeat_kv
        v_seq = v[None, start:end].transpose(1, 2).repeat_interleave(group, dim=1)
        attended = torch.nn.functional.scaled_dot_product_attention(q_seq, k_seq, v_seq, is_causal=True, scale=scale)
        out[start:end] = attended[0].transpose(0, 1)
    return out


def _flash_attn_kernel(q, k, v, cu_seqlens, max_len, scale):
    from flash_attn import flash_attn_varlen_func  # handles GQA itself

    return flash_attn_varlen_func(
        q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, dropout_p=0.0, softmax_scale=scale, causal=True
    )


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
    max_length_q: int | None = None,
    **kwargs,
):
    """transformers attention function: q [1, Hq, T, D], k/v [1, Hkv, T, D] -> ([1, T, Hq, D], None)."""
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
    k = key[0].transpose(0, 1).contiguous()  # [T, Hkv, D]
    v = value[0].transpose(0, 1).contiguous()  # [T, Hkv, D]
    out = _VARLEN_KERNELS[kernel_name](q, k, v, cu_seq_lens_q, max_length_q, scaling)  # [T, Hq, D]
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
) -> list[torch.Tensor]:
    """Log-prob of every response token of every (context_ids, response_ids) pair.

    Returns, per sequence, a float32 tensor [R] on `out_device` with
    out[t] = log p(response_ids[t] | context_ids, response_ids[:t]).

    Each micro-batch of at most `token_budget` tokens runs as one packed row [1, total] with
    position ids reset per sequence and attention confined to each sequence. The last response
    token is never fed (nothing is predicted from it), so a sequence costs Lc + R - 1 tokens.
    The model runs in eval + no-grad mode; its attention implementation and train/eval mode
    are restored afterwards.
    """
    _check_sequences(sequences, getattr(model.config.get_text_config(), "vocab_size", None))
    if logprob_chunk_tokens < 1:
        raise ValueError(f"logprob_chunk_tokens must be >= 1, got {logprob_chunk_tokens}")
    backend = resolve_attn_backend(model, attn)
    device = next(model.parameters()).device

    # Tokens fed per sequence: context + response[:-1]. An empty response needs no forward pass.
    fed_lengths = [len(c) + len(r) - 1 if len(r) else 0 for c, r in sequences]
    scored = [i for i, n in enumerate(fed_lengths) if n > 0]
    plan = [[scored[j] for j in batch] for batch in plan_microbatches([fed_lengths[i] for i in scored], token_budget)]

    backbone = model.get_decoder()
    batch_logprobs: list[torch.Tensor] = []  # per micro-batch, [N_b] float32 on out_device
    with _inference_setup(model, _TRANSFORMERS_ATTN_NAME[backend]):
        for batch in plan:
            input_ids, position_ids, predict_at, targets = [], [], [], []
            offset = 0
            for i in batch:
                context, response = sequences[i]
                fed = torch.cat([context.long(), response[:-1].long()])  # [Lc + R - 1]
                input_ids.append(fed)
                position_ids.append(torch.arange(len(fed)))
                # Hidden state at position p predicts token p + 1: response token t sits at
                # Lc + t, so it is predicted at Lc + t - 1.
                predict_at.append(offset + len(context) - 1 + torch.arange(len(response)))
                targets.append(response.long())
                offset += len(fed)
            input_ids = torch.cat(input_ids).to(device)[None]  # [1, total]
            position_ids = torch.cat(position_ids).to(device)[None]  # [1, total]
            predict_at = torch.cat(predict_at).to(device)  # [N]
            targets = torch.cat(targets).to(device)  # [N]

            attn_kwargs = {}
            if backend in _CU_SEQLENS_BACKENDS:
                lengths = torch.tensor([fed_lengths[i] for i in batch], dtype=torch.int32)
                cu_seqlens = torch.zeros(len(batch) + 1, dtype=torch.int32)
                cu_seqlens[1:] = lengths.cumsum(0)
                attn_kwargs = {
                    "cu_seq_lens_q": cu_seqlens.to(device),
                    "cu_seq_lens_k": cu_seqlens.to(device),
                    "max_length_q": int(lengths.max()),
                    "max_length_k": int(lengths.max()),
                }

            # use_cache=False matters: with a cache transformers skips packed-sequence detection
            # and the sdpa path would let sequences attend to each other.
            hidden = backbone(
                input_ids=input_ids, position_ids=position_ids, attention_mask=None, use_cache=False, **attn_kwargs
            ).last_hidden_state[0]  # [total, H]
            logprobs = chunked_token_logprobs(
                model, hidden[predict_at], targets, logprob_chunk_tokens, temperature
            )  # [N]
            del hidden

            batch_logprobs.append(logprobs.to(out_device))  # one transfer per micro-batch

    results = [torch.empty(0, dtype=torch.float32, device=out_device) for _ in sequences]
    for batch, logprobs in zip(plan, batch_logprobs):
        per_sequence = logprobs.split([len(sequences[i][1]) for i in batch])
        for i, sequence_logprobs in zip(batch, per_sequence):
            results[i] = sequence_logprobs
    return results
