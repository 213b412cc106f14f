"""Attention for the packed teacher row: the backends, the varlen kernels and their adapter.

One job: make every segment of a packed row attend to its shared-prefix ancestors and,
causally, to itself, and nothing else. Backends (`attn=` of `packed_response_logprobs`):
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
(`AttentionInterface.register`, on import of this module); only the kernel call differs. Shared
prefixes need the kernels' bottom-right causal alignment, checked once per kernel, device and
dtype (`kernel_aligns_bottom_right`).

Depends on torch and transformers only.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from collections.abc import Callable

import torch
import transformers

ATTN_BACKENDS = ("auto", "sdpa_block", "sdpa_varlen", "varlen", "flash_attn", "flex")

# The attention implementation each backend sets on the model. The cu_seqlens backends are our
# adapters, registered in transformers' AttentionInterface under these names; the names must not
# contain "flash" (transformers takes any such name for its own flash integration and tries to
# load a kernel for it).
CU_SEQLENS_BACKENDS = {
    "sdpa_varlen": "avsd_packed_sdpa_varlen",
    "varlen": "avsd_packed_varlen",
    "flash_attn": "avsd_packed_fa_varlen",
}
TRANSFORMERS_ATTN_NAME = {"sdpa_block": "sdpa", "flex": "flex_attention", **CU_SEQLENS_BACKENDS}


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


for _backend, _name in CU_SEQLENS_BACKENDS.items():
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
    if attn in CU_SEQLENS_BACKENDS and has_sliding_layers:
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


def kernel_aligns_bottom_right(backend: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the kernel behind cu_seqlens `backend` (looked up now, so a test's substitute
    counts) aligns causal masks bottom-right on this device and dtype: shared prefixes need it."""
    return _aligns_causal_bottom_right(_VARLEN_KERNELS[backend], device, dtype)


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
