"""vLLM's `prompt_logprobs` requests on the `hf` rollout: score a given sequence, with prefix caching.

verl 0.9.1 scores a distillation teacher on rollout servers
(verl/experimental/teacher_loop/teacher_manager.py::compute_teacher_logprobs_single) by sending
the whole sequence as the prompt with `{"max_tokens": 1, "prompt_logprobs": 0, ...}` and reading
only `extra_fields["prompt_ids"]` and `extra_fields["prompt_logprobs"]`, laid out as vLLM's
(verl/workers/rollout/vllm_rollout/utils.py::extract_prompt_logprobs): for a sequence s of
length L, L entries; entry j < L - 1 is [s[j + 1]] and [log p(s[j + 1] | s[:j + 1])], the last
entry is the dummy [0] / [0.0]. With prompt_logprobs = k > 0, entry j holds the k most likely
tokens and their log-probs, best first (verl's top-k distillation loss). AVSD's rollout-side
teacher sends the same request for each of the M view sequences of a finished sample.

Log-probs: log_softmax(final_logits / T) gathered at the token, where final_logits are the
model's after its final transform (soft-capping, logit scale), computed by exactly the function
the packed teacher path uses (workers/teacher_prefill.py::chunked_token_logprobs), so both
placements give the same numbers. T is the request's `temperature`: AVSD sends the rollout
temperature so teacher and student log-probs compare like with like. vLLM ignores the
temperature for prompt log-probs (it scores the raw logits; verl's teacher manager therefore
always sends 1.0); here T <= 0 (greedy) scores the raw logits, as vLLM would, and T > 0 scales.
No token is generated for these requests (`token_ids` is empty): verl reads only extra_fields.

Prefix cache (vLLM's automatic prefix caching, on the CPU): the M views of a rollout share the
problem, and the n rollouts of a prompt share the whole view context, so most of each request's
tokens were already run for an earlier request. `PrefixKVCache` keeps, per recent request, the
KV cache of every layer and the final hidden states of the tokens it fed, in LRU order and
bounded in bytes. A new request reuses the longest common prefix with any entry: its KV (cropped)
lets the model run only on the rest, and its hidden states give the log-probs of the reused
positions. `extra_fields["num_cached_tokens"]` reports the tokens reused, like vLLM.
Weights change -> every entry is stale: the server clears the cache in `update_weights`, before
loading (and on `clear_kv_cache` and `sleep`, like vLLM, to free the memory).

Config (verl's RolloutConfig): `actor_rollout_ref.rollout.enable_prefix_caching` (verl's own key,
default true) turns the cache on or off; `actor_rollout_ref.rollout.custom.hf_prefix_cache_mb`
(default PREFIX_CACHE_MB) bounds its memory. Requests that arrive together are scored in one
round, one after another in token order (neighbours share the longest prefixes); rows are not
padded into one forward: with ragged cached prefixes a padded batch would redo shared work.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from transformers import DynamicCache

from verl_avsd.workers.teacher_prefill import _final_logit_transform, chunked_token_logprobs

PREFIX_CACHE_MB = 512  # default bound of the prefix cache (custom.hf_prefix_cache_mb)
LOGPROB_CHUNK_TOKENS = 1024  # rows of [n, V] float32 logits alive at once in the log-prob head


@dataclass
class ScoringRequest:
    """One prompt-log-prob request, queued by the server beside generation requests."""

    prompt_ids: list[int]
    temperature: float  # > 0; a greedy request (T <= 0) is scored at 1.0
    num_logprobs: int  # 0: the given token's log-prob; k > 0: the top k
    want_logprobs: bool  # the request also asked for `logprobs` of generated tokens (none are)
    result: asyncio.Future = field(repr=False)

    def batch_key(self) -> tuple:
        """Every scoring request can share a round with every other one, never with generation."""
        return ("prompt_logprobs",)


def scoring_request(
    prompt_ids: list[int], params: dict[str, Any], request_id: str, max_model_len: int, vocab_size: int
) -> Optional[ScoringRequest]:
    """A `ScoringRequest` if `params` asks for prompt log-probs, else None (a generation request).

    Raises ValueError naming the request and the field for anything vLLM would reject or that
    would make the model fail: an empty sequence, token ids outside the vocabulary, a sequence
    that leaves no room in max_model_len (vLLM's server refuses it too), a bad prompt_logprobs or
    temperature, and max_tokens > 1 (this backend scores without generating).
    """
    num_logprobs = params.get("prompt_logprobs")
    if num_logprobs is None:
        return None
    if isinstance(num_logprobs, bool) or not isinstance(num_logprobs, int) or num_logprobs < 0:
        raise ValueError(f"request {request_id}: sampling_params.prompt_logprobs must be an int >= 0, got {num_logprobs!r}")
    if num_logprobs > vocab_size:
        raise ValueError(f"request {request_id}: sampling_params.prompt_logprobs={num_logprobs} exceeds the vocabulary ({vocab_size})")
    max_tokens = params.get("max_tokens", params.get("max_new_tokens", 1))
    if max_tokens not in (0, 1):
        raise ValueError(
            f"request {request_id}: hf rollout scores prompt_logprobs requests without generating; "
            f"sampling_params.max_tokens must be 1 (verl's teacher request), got {max_tokens!r}"
        )
    try:
        temperature = float(params.get("temperature", 1.0))
    except (TypeError, ValueError):
        raise ValueError(f"request {request_id}: sampling_params.temperature must be a number, got {params.get('temperature')!r}") from None
    if temperature != temperature or temperature == float("inf"):
        raise ValueError(f"request {request_id}: sampling_params.temperature must be finite, got {temperature}")
    if not prompt_ids:
        raise ValueError(f"request {request_id}: prompt_ids is empty; a prompt_logprobs request needs at least one token")
    if len(prompt_ids) >= max_model_len:
        raise ValueError(
            f"request {request_id}: sequence of {len(prompt_ids)} tokens leaves no room within "
            f"max_model_len={max_model_len} (vLLM's server rejects it too)"
        )
    for position, token in enumerate(prompt_ids):
        if not 0 <= token < vocab_size:
            raise ValueError(f"request {request_id}: prompt_ids[{position}]={token} is outside the vocabulary [0, {vocab_size})")
    return ScoringRequest(
        prompt_ids=prompt_ids,
        temperature=temperature if temperature > 0 else 1.0,
        num_logprobs=num_logprobs,
        want_logprobs=bool(params.get("logprobs", False)),
        result=asyncio.get_running_loop().create_future(),
    )


# --------------------------------------------------------------------------------------------
# The prefix cache: KV + final hidden states of recent requests, LRU, bounded in bytes.
# --------------------------------------------------------------------------------------------


@dataclass
class CachedPrefix:
    """What running the model on `ids` left behind: enough to skip any prefix of it."""

    ids: torch.Tensor  # [n] int64, the tokens fed (a request's sequence minus its last token)
    key_values: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, keys and values [1, kv_heads, n, head_dim]
    hidden: torch.Tensor  # [n, H] final hidden states (after the backbone's last norm)

    def nbytes(self) -> int:
        kv = sum(keys.nbytes + values.nbytes for keys, values in self.key_values)
        return kv + self.hidden.nbytes + self.ids.nbytes

    def past(self, length: int) -> DynamicCache:
        """A fresh DynamicCache holding the first `length` positions (the entry stays intact:
        the forward appends to the copy, never to the stored tensors)."""
        return DynamicCache(ddp_cache_data=[(keys[:, :, :length], values[:, :, :length]) for keys, values in self.key_values])


class PrefixKVCache:
    """LRU of `CachedPrefix`es keyed by their token tuple, at most `max_bytes` in total."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], CachedPrefix] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def longest_prefix(self, ids: torch.Tensor) -> tuple[Optional[CachedPrefix], int]:
        """The entry sharing the longest prefix with `ids` [n] and that length (0: none)."""
        exact = self._entries.get(tuple(ids.tolist()))
        if exact is not None:
            self._entries.move_to_end(tuple(ids.tolist()))
            return exact, len(ids)
        best, best_length = None, 0
        for key, entry in self._entries.items():
            span = min(len(entry.ids), len(ids))
            if span <= best_length:
                continue
            differs = (entry.ids[:span] != ids[:span]).nonzero()
            length = span if len(differs) == 0 else int(differs[0, 0])
            if length > best_length:
                best, best_length, best_key = entry, length, key
        if best is not None:
            self._entries.move_to_end(best_key)
        return best, best_length

    def put(self, entry: CachedPrefix) -> None:
        size = entry.nbytes()
        if size > self.max_bytes:
            return  # would evict everything and still not fit
        key = tuple(entry.ids.tolist())
        if key in self._entries:
            self._bytes -= self._entries.pop(key).nbytes()
        self._entries[key] = entry
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)  # least recently used
            self._bytes -= evicted.nbytes()

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


# --------------------------------------------------------------------------------------------
# The scorer: one request at a time, reusing the cache.
# --------------------------------------------------------------------------------------------


class PromptLogProbScorer:
    """Answers `ScoringRequest`s with a model, reusing `PrefixKVCache` entries when enabled.

    `stats` counts, since construction: requests, cache_hits (requests that reused > 0 tokens),
    cached_tokens (positions taken from the cache) and fed_tokens (positions the model ran on).
    The caller serialises calls with weight updates and calls `clear()` after each update.
    """

    def __init__(self, enable_prefix_caching: bool = True, max_cache_mb: float = PREFIX_CACHE_MB) -> None:
        self.cache = PrefixKVCache(int(max_cache_mb * 2**20)) if enable_prefix_caching else None
        self.stats = {"requests": 0, "cache_hits": 0, "cached_tokens": 0, "fed_tokens": 0}
        self._model_id: Optional[int] = None  # the model the cache was filled with

    @classmethod
    def from_rollout_config(cls, config) -> "PromptLogProbScorer":
        """Reads `enable_prefix_caching` and `custom.hf_prefix_cache_mb` from verl's RolloutConfig."""
        custom = getattr(config, "custom", None) or {}
        max_cache_mb = custom.get("hf_prefix_cache_mb", PREFIX_CACHE_MB)
        if isinstance(max_cache_mb, bool) or not isinstance(max_cache_mb, (int, float)) or not max_cache_mb >= 0:
            raise ValueError(f"actor_rollout_ref.rollout.custom.hf_prefix_cache_mb must be a number >= 0, got {max_cache_mb!r}")
        enabled = bool(getattr(config, "enable_prefix_caching", True)) and max_cache_mb > 0
        return cls(enable_prefix_caching=enabled, max_cache_mb=max_cache_mb)

    def clear(self) -> None:
        """Forget every cached prefix (call after the weights change: they are all stale)."""
        if self.cache is not None:
            self.cache.clear()

    @torch.no_grad()
    def score_batch(self, model, requests: list[ScoringRequest]) -> list[dict[str, Any]]:
        """extra_fields (prompt_ids, prompt_logprobs, num_cached_tokens) per request, in order.

        Run in token order so that requests sharing a prefix follow each other in the LRU.
        """
        if id(model) != self._model_id:  # a different model object: nothing cached applies
            self.clear()
            self._model_id = id(model)
        order = sorted(range(len(requests)), key=lambda i: requests[i].prompt_ids)
        results: list[dict[str, Any]] = [{} for _ in requests]
        for i in order:
            results[i] = self.score(model, requests[i])
        return results

    def score(self, model, request: ScoringRequest) -> dict[str, Any]:
        sequence = torch.tensor(request.prompt_ids, dtype=torch.long)  # [L]
        fed = sequence[:-1]  # [n = L - 1]: each position predicts the next token
        hidden, reused = self._final_hidden(model, fed)  # [n, H]
        targets = sequence[1:].to(hidden.device)  # [n]
        k = request.num_logprobs
        if k == 0:
            logprobs = chunked_token_logprobs(model, hidden, targets, LOGPROB_CHUNK_TOKENS, request.temperature)  # [n]
            ids, values = targets[:, None].tolist(), logprobs[:, None].tolist()
        else:
            top_ids, top_logprobs = _top_k_logprobs(model, hidden, k, request.temperature)  # [n, k] each
            ids, values = top_ids.tolist(), top_logprobs.tolist()
        self.stats["requests"] += 1
        self.stats["cache_hits"] += int(reused > 0)
        self.stats["cached_tokens"] += reused
        self.stats["fed_tokens"] += len(fed) - reused
        width = max(k, 1)
        return {
            "prompt_ids": ids + [[0] * width],  # vLLM's dummy entry for the last token
            "prompt_logprobs": values + [[0.0] * width],
            "num_cached_tokens": reused,
        }

    def _final_hidden(self, model, fed: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Final hidden states [n, H] of `fed` [n] and how many positions came from the cache."""
        device = next(model.parameters()).device
        if len(fed) == 0:
            return torch.empty((0, model.config.get_text_config().hidden_size), device=device), 0
        entry, reused = self.cache.longest_prefix(fed) if self.cache is not None else (None, 0)
        if entry is not None and reused == len(fed):
            return entry.hidden[:reused], reused
        past = entry.past(reused) if entry is not None and reused > 0 else DynamicCache()
        out = model.get_decoder()(input_ids=fed[reused:].to(device)[None], past_key_values=past, use_cache=True)  # fed tail [1, n - r]
        new_hidden = out.last_hidden_state[0]  # [n - r, H]
        hidden = torch.cat([entry.hidden[:reused], new_hidden]) if reused > 0 else new_hidden  # [n, H]
        if self.cache is not None:
            key_values = [(layer.keys, layer.values) for layer in out.past_key_values.layers]  # [1, kv_heads, n, head_dim]
            self.cache.put(CachedPrefix(ids=fed.clone(), key_values=key_values, hidden=hidden))
        return hidden, reused


def _top_k_logprobs(model, hidden: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most likely tokens at each position and their log-probs, best first: [n, k] each.

    Same head as chunked_token_logprobs (final transform, then / T, float32), `LOGPROB_CHUNK_TOKENS`
    rows at a time.
    """
    to_final_logits = _final_logit_transform(model.config)
    output_embedding = model.get_output_embeddings()
    ids = torch.empty((hidden.shape[0], k), dtype=torch.long)  # [n, k]
    values = torch.empty((hidden.shape[0], k), dtype=torch.float32)  # [n, k]
    for start in range(0, hidden.shape[0], LOGPROB_CHUNK_TOKENS):
        end = min(start + LOGPROB_CHUNK_TOKENS, hidden.shape[0])
        logits = to_final_logits(output_embedding(hidden[start:end]).float()) / temperature  # [c, V]
        top = logits.topk(k, dim=-1)  # sorted, best first
        values[start:end] = (top.values - logits.logsumexp(dim=-1, keepdim=True)).cpu()
        ids[start:end] = top.indices.cpu()
    return ids, values


__all__ = ["PREFIX_CACHE_MB", "CachedPrefix", "PrefixKVCache", "PromptLogProbScorer", "ScoringRequest", "scoring_request"]
