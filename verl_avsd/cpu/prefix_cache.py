"""Prefix caching for the `hf` rollout's prefill-only requests: an LRU of KV caches, and one
forward that runs many sequences' uncached tails on top of their cached prefixes.

`PrefixKVCache` keeps, per recent sequence, the KV of every layer and the final hidden states of
its tokens (the hidden states give the log-probs of reused positions without running them again),
keyed by the token tuple, least recently used first out, bounded in bytes. `longest_prefix` finds
the entry sharing the most leading tokens with a new sequence.

`prefill_tails` runs a group of sequences at once, each on top of its own cached prefix of its own
length r_i. One padded forward [B, P + T]: the cached keys/values right-aligned in the first
P = max r_i columns (left padding masked out), the uncached tails left-aligned after them
(right padding masked out, and never a key for a real query: causal), position ids r_i + j. Each
row then attends to exactly its own prefix and tail, as alone. Keys/values are stored per layer in
a plain DynamicCache, full length (layers with a sliding window are masked by the model from the
position ids, so full keys stay exact).

Used by prompt_logprobs.py. Depends on torch and transformers only.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import DynamicCache


@dataclass
class CachedPrefix:
    """What running the model on `ids` left behind: enough to skip any prefix of it."""

    ids: torch.Tensor  # [n] int64, the tokens fed
    key_values: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, keys and values [kv_heads, n, head_dim]
    hidden: torch.Tensor  # [n, H] final hidden states (after the backbone's last norm)
    # the log-prob head's output for the request that ran it: ((temperature, k), ids [n, w], log-probs [n, w]);
    # positions j < r - 1 of a request reusing r tokens have the same targets, so the same values.
    # Not counted in nbytes (12 w bytes a token, beside kilobytes of KV); set before `put`.
    head: Optional[tuple[tuple[float, int], torch.Tensor, torch.Tensor]] = None

    def nbytes(self) -> int:
        kv = sum(keys.nbytes + values.nbytes for keys, values in self.key_values)
        return kv + self.hidden.nbytes + self.ids.nbytes


class PrefixKVCache:
    """LRU of `CachedPrefix`es keyed by their token tuple, at most `max_bytes` in total."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], CachedPrefix] = OrderedDict()
        self._bytes = 0
        # every entry's ids in one padded matrix [E, L] (-1 = no token), rebuilt after a change:
        # one comparison finds a sequence's longest cached prefix (a Python loop over hundreds of
        # entries cost a round of the followed views more than its forward)
        self._index: Optional[tuple[list[tuple[int, ...]], torch.Tensor]] = None

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def longest_prefix(self, ids: torch.Tensor) -> tuple[Optional[CachedPrefix], int]:
        """The entry sharing the longest prefix with `ids` [n] and that length (0: none); it
        becomes the most recently used."""
        key = tuple(ids.tolist())
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key], len(ids)
        if not self._entries or not len(ids):
            return None, 0
        if self._index is None:
            keys = list(self._entries)
            ids_matrix = torch.nn.utils.rnn.pad_sequence([self._entries[k].ids for k in keys], batch_first=True, padding_value=-1)
            self._index = (keys, ids_matrix)
        keys, ids_matrix = self._index
        span = min(len(ids), ids_matrix.shape[1])
        shared = (ids_matrix[:, :span] == ids[:span]).cumprod(dim=1).sum(dim=1)  # [E] leading tokens in common
        best = int(shared.argmax())  # the first of the longest, in the order the index was built
        best_key, best_length = keys[best], int(shared[best])
        if best_length == 0:
            return None, 0
        self._entries.move_to_end(best_key)
        return self._entries[best_key], best_length

    def put(self, entry: CachedPrefix) -> None:
        size = entry.nbytes()
        if size > self.max_bytes:
            return  # would evict everything and still not fit
        key = tuple(entry.ids.tolist())
        if key in self._entries:
            self._bytes -= self._entries.pop(key).nbytes()
        self._entries[key] = entry
        self._bytes += size
        self._index = None
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)  # least recently used
            self._bytes -= evicted.nbytes()

    def discard(self, entry: CachedPrefix) -> None:
        """Drop `entry` if it is (still) cached."""
        key = tuple(entry.ids.tolist())
        if self._entries.get(key) is entry:
            self._bytes -= self._entries.pop(key).nbytes()
            self._index = None

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
        self._index = None


def common_prefix_length(a: torch.Tensor, b: torch.Tensor) -> int:
    """Number of equal leading tokens of two 1-D id tensors."""
    span = min(len(a), len(b))
    differs = (a[:span] != b[:span]).nonzero()
    return span if len(differs) == 0 else int(differs[0, 0])


@dataclass
class Tail:
    """One sequence to prefill: `ids` [n], of which the first `reused` come from `prefix`."""

    ids: torch.Tensor  # [n] int64
    prefix: Optional[CachedPrefix]
    reused: int


PADDING_SLACK = 1.25  # a forward's padded query tokens B x T stay within this factor of its real ones


def group_tails(tails: list[Tail], max_batch_tokens: int) -> list[list[int]]:
    """Indices of `tails` in forwards of at most `max_batch_tokens` padded tokens B x (P + T)
    (one sequence alone may exceed it) and at most PADDING_SLACK x their real uncached tokens
    (on a CPU padding is paid in full), longest uncached part first so that similar rows share one."""
    uncached = [len(t.ids) - t.reused for t in tails]
    order = sorted(range(len(tails)), key=lambda i: (uncached[i], tails[i].reused), reverse=True)
    groups: list[list[int]] = []
    width_past = width_tail = real = 0
    for i in order:
        past, tail = max(width_past, tails[i].reused), max(width_tail, uncached[i])
        rows = len(groups[-1]) + 1 if groups else 1
        if groups and rows * (past + tail) <= max_batch_tokens and rows * tail <= PADDING_SLACK * (real + uncached[i]):
            groups[-1].append(i)
            width_past, width_tail, real = past, tail, real + uncached[i]
        else:
            groups.append([i])
            width_past, width_tail, real = tails[i].reused, uncached[i], uncached[i]
    return groups


def prefill_tails(model, tails: list[Tail], pad_token_id: int = 0) -> list[CachedPrefix]:
    """Run every tail on its cached prefix in one padded forward; per tail, the whole sequence's
    KV and final hidden states (cached part + new part) as a new `CachedPrefix`.

    Every tail must have at least one uncached token (len(ids) > reused).
    """
    device = next(model.parameters()).device
    rows = len(tails)
    lengths = [len(t.ids) - t.reused for t in tails]  # uncached tokens per row
    past_width, tail_width = max(t.reused for t in tails), max(lengths)  # P, T
    input_ids = torch.full((rows, tail_width), pad_token_id, dtype=torch.long)  # [B, T]
    position_ids = torch.zeros((rows, tail_width), dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((rows, past_width + tail_width), dtype=torch.long)  # [B, P + T]
    for row, (tail, length) in enumerate(zip(tails, lengths)):
        input_ids[row, :length] = tail.ids[tail.reused :]
        position_ids[row] = torch.arange(tail.reused, tail.reused + tail_width)
        attention_mask[row, past_width - tail.reused : past_width + length] = 1

    past = DynamicCache()
    if past_width:
        layers = len(next(t.prefix for t in tails if t.prefix is not None).key_values)
        stacked = []
        for layer in range(layers):
            sample_keys, sample_values = next(t.prefix for t in tails if t.prefix is not None).key_values[layer]
            keys = sample_keys.new_zeros((rows, sample_keys.shape[0], past_width, sample_keys.shape[2]))  # [B, h, P, d]
            values = sample_values.new_zeros((rows, sample_values.shape[0], past_width, sample_values.shape[2]))  # [B, h, P, d]
            for row, tail in enumerate(tails):
                if tail.reused:  # right-aligned: row i's prefix ends at column P
                    keys[row, :, past_width - tail.reused :] = tail.prefix.key_values[layer][0][:, : tail.reused]
                    values[row, :, past_width - tail.reused :] = tail.prefix.key_values[layer][1][:, : tail.reused]
            stacked.append((keys, values))
        past = DynamicCache(ddp_cache_data=stacked)

    out = model.get_decoder()(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        past_key_values=past,
        use_cache=True,
    )
    new_hidden = out.last_hidden_state  # [B, T, H]
    layers_out = out.past_key_values.layers  # keys/values [B, h, P + T, d]
    results = []
    for row, (tail, length) in enumerate(zip(tails, lengths)):
        start, end = past_width - tail.reused, past_width + length  # this row's real columns
        # clone: a slice would keep the whole padded batch tensor alive in the cache
        key_values = [(layer.keys[row, :, start:end].clone(), layer.values[row, :, start:end].clone()) for layer in layers_out]
        new = new_hidden[row, :length]  # [t_i, H]
        hidden = torch.cat([tail.prefix.hidden[: tail.reused], new]) if tail.reused else new.clone()  # [n_i, H]
        results.append(CachedPrefix(ids=tail.ids, key_values=key_values, hidden=hidden))
    return results


__all__ = ["CachedPrefix", "PrefixKVCache", "Tail", "common_prefix_length", "group_tails", "prefill_tails"]
