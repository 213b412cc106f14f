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
temperature for prompt log-probs (vllm/v1/worker/gpu/sample/prompt_logprob.py scores the raw
logits; verl's teacher manager therefore always sends 1.0), so at T != 1 vLLM's answer differs
from this one; here T <= 0 (greedy) scores the raw logits, as vLLM would, and T > 0 scales.
No token is generated for these requests (`token_ids` is empty): verl reads only extra_fields.
A one-token sequence gets only the dummy entry, as from vLLM; an empty one is an error.

Prefix cache (vLLM's automatic prefix caching, on the CPU): the M views of a rollout share the
problem, and the n rollouts of a prompt share the whole view context, so most of each request's
tokens were already run for an earlier request. `PrefixKVCache` (prefix_cache.py) keeps, per
recent request, the KV of every layer and the final hidden states of the tokens it fed, in LRU
order and bounded in bytes. A new request reuses the longest common prefix with any entry: its KV
lets the model run only on the rest, and its hidden states give the log-probs of the reused
positions (the entry also keeps its log-probs at the last temperature and k asked, which the
reused positions share, so the vocabulary projection runs only on the rest too).
`extra_fields["num_cached_tokens"]` reports the tokens reused, like vLLM.
Weights change -> every entry is stale: the server clears the cache in `update_weights`, before
loading (and on `clear_kv_cache` and `sleep`, like vLLM, to free the memory).

Config (verl's RolloutConfig): `actor_rollout_ref.rollout.enable_prefix_caching` (verl's own key,
default true) turns the cache on or off; `actor_rollout_ref.rollout.custom.hf_prefix_cache_mb`
(default PREFIX_CACHE_MB) bounds its memory. Requests that arrive together are scored in one
round (the server never mixes them with generation): in waves, so that one request's prefix is
cached before the requests sharing it run (`PromptLogProbScorer.score_batch`), each wave in padded
forwards of up to MAX_BATCH_TOKENS, every row on top of its own cached prefix (`prefill_tails`).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from verl_avsd.workers.teacher_prefill import _final_logit_transform, chunked_token_logprobs

from .prefix_cache import CachedPrefix, PrefixKVCache, Tail, common_prefix_length, group_tails, prefill_tails

PREFIX_CACHE_MB = 512  # default bound of the prefix cache (custom.hf_prefix_cache_mb)
LOGPROB_CHUNK_TOKENS = 1024  # rows of [n, V] float32 logits alive at once in the log-prob head
# padded tokens B x (P + T) of one forward over several requests. On a CPU bigger is not faster:
# SmolLM2-135M, 32 sequences of 100-190 tokens, 1 thread: 328 tokens/CPU-s in forwards of up to
# 8192 tokens, 398 with 2048, 396 with 512, 387 one sequence at a time (activations stay in cache).
MAX_BATCH_TOKENS = 2048
SHARE_MIN_TOKENS = 16  # a request waits a wave when an earlier one of its round leaves this many more cached


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
        raise ValueError(
            f"request {request_id}: sampling_params.prompt_logprobs={num_logprobs} exceeds the vocabulary ({vocab_size})"
        )
    max_tokens = params.get("max_tokens", params.get("max_new_tokens", 1))
    if max_tokens not in (0, 1):
        raise ValueError(
            f"request {request_id}: hf rollout scores prompt_logprobs requests without generating; "
            f"sampling_params.max_tokens must be 1 (verl's teacher request), got {max_tokens!r}"
        )
    try:
        temperature = float(params.get("temperature", 1.0))
    except (TypeError, ValueError):
        raise ValueError(
            f"request {request_id}: sampling_params.temperature must be a number, got {params.get('temperature')!r}"
        ) from None
    if not math.isfinite(temperature):
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
# The scorer: a round of requests in waves of padded forwards, reusing the cache.
# --------------------------------------------------------------------------------------------


class PromptLogProbScorer:
    """Answers `ScoringRequest`s with a model, reusing `PrefixKVCache` entries when enabled.

    `stats` counts, since construction: requests, cache_hits (requests that reused > 0 tokens),
    cached_tokens (positions taken from the cache), fed_tokens (positions the model ran on),
    forwards (padded model calls) and head_tokens (positions the log-prob head ran on).
    The caller serialises calls with weight updates and calls `clear()` whenever the weights change.
    """

    def __init__(self, enable_prefix_caching: bool = True, max_cache_mb: float = PREFIX_CACHE_MB) -> None:
        self.cache = PrefixKVCache(int(max_cache_mb * 2**20)) if enable_prefix_caching else None
        self.stats = {"requests": 0, "cache_hits": 0, "cached_tokens": 0, "fed_tokens": 0, "forwards": 0, "head_tokens": 0}
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

        The requests of a round run in waves, each wave in few padded forwards (`prefill_tails`).
        In token order, a request whose neighbour of the same round shares SHARE_MIN_TOKENS more
        leading tokens with it than the cache does waits for the next wave, which finds that
        neighbour's prefix cached: n rollouts of one view arriving together run the view
        context once, and then their responses in one batch.
        """
        if id(model) != self._model_id:  # a different model object: nothing cached applies
            self.clear()
            self._model_id = id(model)
        fed = [torch.tensor(request.prompt_ids[:-1], dtype=torch.long) for request in requests]  # [n_i]: each predicts the next
        hidden: list[Optional[torch.Tensor]] = [None] * len(requests)  # [n_i, H] final hidden states
        reused = [0] * len(requests)
        sources: list[Optional[CachedPrefix]] = [None] * len(requests)  # the entry each reused
        results: list[dict[str, Any]] = [{} for _ in requests]
        pending = sorted(range(len(requests)), key=lambda i: requests[i].prompt_ids)
        while pending:
            wave: dict[int, Tail] = {}
            deferred: list[int] = []
            for previous, i in zip([None, *pending], pending):
                entry, length = self.cache.longest_prefix(fed[i]) if self.cache is not None else (None, 0)
                if wave and self.cache is not None and common_prefix_length(fed[previous], fed[i]) >= length + SHARE_MIN_TOKENS:
                    deferred.append(i)
                else:
                    wave[i] = Tail(ids=fed[i], prefix=entry, reused=length)
            ran_by_request = self._run_wave(model, wave, hidden, reused, sources)
            starts = {i: self._head_start(requests[i], reused[i], sources[i]) for i in ran_by_request}
            given = self._wave_token_logprobs(model, requests, hidden, starts)
            for i, ran in ran_by_request.items():
                results[i] = self._layout(model, requests[i], hidden[i], reused[i], starts[i], sources[i], ran, given.get(i))
                if self.cache is not None and ran is not None:
                    self.cache.put(ran)  # after _layout: the entry carries its head output
                    if sources[i] is not None and reused[i] == len(sources[i].ids):
                        # the old entry is a prefix of the new one, which answers every request it
                        # could (a sequence growing by a few tokens a round would otherwise fill the
                        # cache with copies of itself and push out the other prompts' prefixes)
                        self.cache.discard(sources[i])
            pending = deferred
        return results

    def _run_wave(
        self, model, wave: dict[int, Tail], hidden: list, reused: list, sources: list
    ) -> dict[int, Optional[CachedPrefix]]:
        """Fill hidden[i], reused[i] and sources[i] for the wave's requests; per request, what ran (None: nothing)."""
        to_run, ran_by_request = [], {i: None for i in wave}
        for i, tail in wave.items():
            reused[i], sources[i] = tail.reused, tail.prefix
            if len(tail.ids) == 0:  # a one-token sequence: nothing to predict
                hidden[i] = torch.empty((0, model.config.get_text_config().hidden_size), device=next(model.parameters()).device)
            elif tail.reused == len(tail.ids):  # all of it cached
                hidden[i] = tail.prefix.hidden[: tail.reused]
            else:
                to_run.append(i)
        for group in group_tails([wave[i] for i in to_run], MAX_BATCH_TOKENS):
            indices = [to_run[j] for j in group]
            self.stats["forwards"] += 1
            for i, ran in zip(indices, prefill_tails(model, [wave[i] for i in indices]), strict=True):
                hidden[i], ran_by_request[i] = ran.hidden, ran
                self.stats["fed_tokens"] += len(ran.ids) - wave[i].reused
        return ran_by_request

    @staticmethod
    def _head_start(request: ScoringRequest, reused: int, source: Optional[CachedPrefix]) -> int:
        """The first position the log-prob head must run on: reused - 1 when `source` holds its
        output at the same temperature and k (the positions before have the same targets), else 0."""
        key = (request.temperature, request.num_logprobs)
        return reused - 1 if reused > 1 and source is not None and source.head is not None and source.head[0] == key else 0

    @staticmethod
    def _wave_token_logprobs(model, requests: list[ScoringRequest], hidden: list, starts: dict[int, int]) -> dict:
        """{i: [n_i - s_i] log-probs} of the wave's given-token requests, one head call per temperature:
        a few new positions per request (the views followed while generating) would otherwise pay a
        [few, V] matmul each, which costs a CPU several times its share of one [sum, V] call."""
        out = {}
        for temperature in {requests[i].temperature for i in starts if requests[i].num_logprobs == 0}:
            members = [i for i in starts if requests[i].num_logprobs == 0 and requests[i].temperature == temperature]
            members = [i for i in members if len(requests[i].prompt_ids) - 1 > starts[i]]
            if not members:
                continue
            states = torch.cat([hidden[i][starts[i] :] for i in members])  # [sum, H]
            targets = torch.cat([torch.tensor(requests[i].prompt_ids[1 + starts[i] :], dtype=torch.long) for i in members])
            logprobs = chunked_token_logprobs(model, states, targets.to(states.device), LOGPROB_CHUNK_TOKENS, temperature)
            out.update(zip(members, logprobs.split([len(requests[i].prompt_ids) - 1 - starts[i] for i in members])))
        return out

    def _layout(
        self,
        model,
        request: ScoringRequest,
        hidden: torch.Tensor,
        reused: int,
        start: int,
        source: Optional[CachedPrefix],
        ran: Optional[CachedPrefix],
        given: Optional[torch.Tensor] = None,
    ) -> dict[str, Any]:
        """vLLM's layout (extract_prompt_logprobs) of the log-probs at every position but the last.

        The head runs from position `start` on (`_head_start`; the positions before come from
        `source`'s head output), or its output for those positions is `given` [n - start]; `ran`
        keeps the result.
        """
        targets = torch.tensor(request.prompt_ids[1:], dtype=torch.long, device=hidden.device)  # [n]
        k, key = request.num_logprobs, (request.temperature, request.num_logprobs)
        if k == 0:
            if given is None:
                given = chunked_token_logprobs(model, hidden[start:], targets[start:], LOGPROB_CHUNK_TOKENS, request.temperature)
            ids, values = targets[start:, None].cpu(), given[:, None].cpu()  # [n - s, 1]
        else:
            ids, values = _top_k_logprobs(model, hidden[start:], k, request.temperature)  # [n - s, k] each
        if start:
            ids, values = torch.cat([source.head[1][:start], ids]), torch.cat([source.head[2][:start], values])  # [n, w]
        if ran is not None:
            ran.head = (key, ids, values)
        ids, values = ids.tolist(), values.tolist()
        self.stats["head_tokens"] += len(targets) - start
        self.stats["requests"] += 1
        self.stats["cache_hits"] += int(reused > 0)
        self.stats["cached_tokens"] += reused
        width = max(k, 1)
        return {
            "prompt_ids": ids + [[0] * width],  # vLLM's dummy entry for the last token
            "prompt_logprobs": values + [[0.0] * width],
            "num_cached_tokens": reused,
        }


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


__all__ = ["PREFIX_CACHE_MB", "PromptLogProbScorer", "ScoringRequest", "scoring_request"]
