"""Packed M-view teacher prefill against a slow one-sequence-at-a-time float64 reference.

Every model here is a tiny random float32 decoder built from a config (no download). The
reference is the plainest possible computation: `model(context + response).logits` for one
sequence, float64 log_softmax, gather. The packed path must match it to 1e-5.
"""

from __future__ import annotations

import random
import warnings

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from verl_avsd.workers import prefill_attention, prefill_plan
from verl_avsd.workers.prefill_plan import plan_microbatches
from verl_avsd.workers.teacher_prefill import packed_response_logprobs

VOCAB = 211  # prime, unlike every other dimension, so a tensor with last dim VOCAB is a logits tensor


def tiny_model(family: str = "qwen2", tie: bool = True, seed: int = 0) -> transformers.PreTrainedModel:
    common = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,  # grouped-query attention, as in the real Qwen models
        "max_position_embeddings": 256,
        "tie_word_embeddings": tie,
    }
    torch.manual_seed(seed)
    if family == "qwen2":
        config = transformers.Qwen2Config(**common)
        model = transformers.Qwen2ForCausalLM(config)
    elif family == "qwen3":
        config = transformers.Qwen3Config(head_dim=16, **common)
        model = transformers.Qwen3ForCausalLM(config)
    elif family == "llama":
        config = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(config)
    elif family == "gemma2":  # final logit soft-cap, sliding-window layers
        config = transformers.Gemma2Config(head_dim=16, final_logit_softcapping=2.0, sliding_window=8, **common)
        model = transformers.Gemma2ForCausalLM(config)
    else:
        raise ValueError(family)
    # Embeddings of std 0.1 keep log-probs near a trained model's scale (about -6), where float32
    # resolves 1e-5, while a leaked neighbour or a shifted position moves them by 1e-2 or more.
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 0.1)
        if not tie:
            model.get_output_embeddings().weight.normal_(0, 0.1)
    return model.float()


def reference_logprobs(model, sequences) -> list[torch.Tensor]:
    """One sequence at a time, full logits, float64 log_softmax."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for context, response in sequences:
            ids = torch.cat([context, response])[None]
            logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)  # [L, V]
            predicted_at = torch.arange(len(context) - 1, len(context) - 1 + len(response))
            out.append(logprobs[predicted_at, response])
    model.train(was_training)
    return out


def make_views_workload(rng: random.Random, num_samples: int, max_views: int, missing_rate: float):
    """B samples, each with 1..max_views views (some missing); one response shared by its views.

    Returns the flat list of (context_ids, response_ids) that the teacher worker would send.
    """
    sequences = []
    for _ in range(num_samples):
        prompt = torch.randint(0, VOCAB, (rng.randint(1, 6),))
        response = torch.randint(0, VOCAB, (rng.randint(1, 12),))
        for _ in range(rng.randint(1, max_views)):
            if rng.random() < missing_rate:
                continue  # a view this sample lacks: no sequence for it
            view = torch.randint(0, VOCAB, (rng.randint(0, 14),))
            sequences.append((torch.cat([prompt, view]), response))
    return sequences


def assert_close_to_reference(packed, reference, atol=1e-5):
    assert len(packed) == len(reference)
    for i, (p, r) in enumerate(zip(packed, reference)):
        assert p.dtype == torch.float32, i
        assert p.shape == r.shape, (i, p.shape, r.shape)
        assert torch.allclose(p.double(), r, atol=atol, rtol=0), (i, (p.double() - r).abs().max().item())


# --------------------------------------------------------------------------------------------
# plan_microbatches
# --------------------------------------------------------------------------------------------


def test_plan_microbatches_first_fit_decreasing_by_hand():
    # longest first: 9(#4) 8(#2) 5(#0) 3(#1) 2(#3); 3 joins 5, 2 joins 8 (8 + 2 = 10 fits).
    assert plan_microbatches([5, 3, 8, 2, 9], token_budget=10) == [[4], [2, 3], [0, 1]]
    # a sequence longer than the budget gets its own micro-batch; nothing joins it
    assert plan_microbatches([3, 20, 4], token_budget=10) == [[1], [2, 0]]
    # ties broken by index
    assert plan_microbatches([4, 4, 4], token_budget=8) == [[0, 1], [2]]
    assert plan_microbatches([], token_budget=8) == []


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=50), max_size=40),
    token_budget=st.integers(min_value=1, max_value=120),
)
def test_plan_microbatches_properties(lengths, token_budget):
    plan = plan_microbatches(lengths, token_budget)
    flat = [i for batch in plan for i in batch]
    assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
    for batch in plan:
        total = sum(lengths[i] for i in batch)
        assert total <= token_budget or len(batch) == 1  # budget, unless one over-long sequence
    # longest first: each batch opens with a sequence no shorter than the next batch's opener
    openers = [lengths[batch[0]] for batch in plan]
    assert openers == sorted(openers, reverse=True)
    assert all(lengths[batch[0]] == max(lengths[i] for i in batch) for batch in plan)
    # first fit: when FFD reached sequence i, it fitted in none of the batches before its own
    for b, batch in enumerate(plan):
        for i in batch:
            for earlier in plan[:b]:
                load_then = sum(lengths[j] for j in earlier if _considered_before(lengths, j, i))
                assert load_then + lengths[i] > token_budget
    assert plan_microbatches(list(lengths), token_budget) == plan  # deterministic


def _considered_before(lengths, i, j) -> bool:
    """Whether FFD considers index i before index j (longest first, then by index)."""
    return (-lengths[i], i) < (-lengths[j], j)


@pytest.mark.parametrize(
    "lengths, budget, message",
    [
        ([3, 4], 0, "token_budget"),
        ([3, 4], 2.5, "token_budget"),
        ([3, -1], 8, r"lengths\[1\]"),
        ([3, 1.5], 8, r"lengths\[1\]"),
    ],
)
def test_plan_microbatches_rejects_bad_input(lengths, budget, message):
    with pytest.raises(ValueError, match=message):
        plan_microbatches(lengths, budget)


# --------------------------------------------------------------------------------------------
# packed_response_logprobs == one-at-a-time float64 reference
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen2():
    return tiny_model("qwen2")


@pytest.mark.parametrize("attn", ["sdpa_varlen", "sdpa_block"])
@pytest.mark.parametrize("max_views", [1, 2, 3, 4])
@pytest.mark.parametrize("token_budget", [40, 80, 4096])  # many micro-batches ... one
def test_packed_matches_reference_ragged_views(qwen2, max_views, token_budget, attn):
    rng = random.Random(1000 * max_views + token_budget)
    torch.manual_seed(max_views)
    sequences = make_views_workload(rng, num_samples=6, max_views=max_views, missing_rate=0.25)
    # one sequence longer than the smallest budget (50 tokens fed)
    sequences.insert(2, (torch.randint(0, VOCAB, (30,)), torch.randint(0, VOCAB, (21,))))
    fed = [len(c) + len(r) - 1 for c, r in sequences]
    plan = plan_microbatches(fed, token_budget)
    if token_budget < 4096:
        assert len(plan) > 1 and any(len(batch) > 1 for batch in plan)  # really packed, several batches
        assert max(fed) > token_budget or token_budget > 40
    packed = packed_response_logprobs(qwen2, sequences, token_budget=token_budget, logprob_chunk_tokens=7, attn=attn)
    assert_close_to_reference(packed, reference_logprobs(qwen2, sequences))


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama", "gemma2"])
@pytest.mark.parametrize("tie", [True, False])
def test_packed_matches_reference_model_families(family, tie):
    model = tiny_model(family, tie=tie)
    if family == "gemma2":
        assert model.config.final_logit_softcapping == 2.0  # the soft-cap must be applied
        # sliding window 8 < the sequences here, so a window that were ignored would show
        assert "sliding_attention" in model.config.layer_types
    rng = random.Random(7)
    sequences = make_views_workload(rng, num_samples=5, max_views=3, missing_rate=0.0)
    packed = packed_response_logprobs(model, sequences, token_budget=40, logprob_chunk_tokens=5)  # auto
    assert_close_to_reference(packed, reference_logprobs(model, sequences))


def test_sliding_window_models_refuse_cu_seqlens_backends():
    model = tiny_model("gemma2")
    good = [(torch.tensor([1, 2]), torch.tensor([3]))]
    with pytest.raises(ValueError, match="does not do sliding-window layers"):
        packed_response_logprobs(model, good, token_budget=8, attn="sdpa_varlen")


def test_packed_is_not_fooled_by_neighbours(qwen2):
    """The same sequence gets the same log-probs whatever it is packed with."""
    context, response = torch.randint(0, VOCAB, (9,)), torch.randint(0, VOCAB, (6,))
    alone = packed_response_logprobs(qwen2, [(context, response)], token_budget=100)[0]
    neighbours = [(torch.randint(0, VOCAB, (n,)), torch.randint(0, VOCAB, (4,))) for n in (3, 11, 5)]
    packed = packed_response_logprobs(qwen2, neighbours + [(context, response)], token_budget=100)
    assert torch.allclose(packed[-1], alone, atol=1e-5)


def test_edge_cases_empty_response_single_token_context_and_no_sequences(qwen2):
    sequences = [
        (torch.randint(0, VOCAB, (1,)), torch.randint(0, VOCAB, (5,))),  # one-token context
        (torch.randint(0, VOCAB, (4,)), torch.zeros(0, dtype=torch.long)),  # empty response
        (torch.randint(0, VOCAB, (3,)), torch.randint(0, VOCAB, (1,))),  # one-token response
    ]
    packed = packed_response_logprobs(qwen2, sequences, token_budget=8)
    assert packed[1].shape == (0,) and packed[1].dtype == torch.float32
    assert_close_to_reference(packed, reference_logprobs(qwen2, sequences))
    assert packed_response_logprobs(qwen2, [], token_budget=8) == []


def test_model_state_restored_and_outputs_are_ordinary_tensors():
    model = tiny_model("qwen2")
    model.config.attention_dropout = 0.5  # only eval mode makes the scores deterministic
    model.set_attn_implementation("eager")
    model.train()
    sequences = make_views_workload(random.Random(5), num_samples=3, max_views=2, missing_rate=0.0)
    packed = packed_response_logprobs(model, sequences, token_budget=20, attn="sdpa_block")
    assert model.training and model.config._attn_implementation == "eager"  # restored
    assert_close_to_reference(packed, reference_logprobs(model, sequences))  # no dropout applied
    # Not inference tensors: the caller may update them in place and use them with autograd.
    assert not packed[0].is_inference()
    packed[0].add_(0.0)
    (packed[0] * torch.ones(len(packed[0]), requires_grad=True)).sum().backward()


def reference_varlen_kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale, calls=None):
    """flash attention's varlen contract, on the CPU: query run s attends to key run s, causal
    with the ends aligned (the last query sees every key). q [Tq, Hq, D], k/v [Tk, Hkv, D]."""
    if calls is not None:
        calls.append((cu_q.tolist(), cu_k.tolist(), max_q, max_k))
    assert cu_q.dtype == cu_k.dtype == torch.int32 and cu_q[-1] == q.shape[0] and cu_k[-1] == k.shape[0]
    group = q.shape[1] // k.shape[1]
    out = []
    for q0, q1, k0, k1 in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist()):
        assert 0 < q1 - q0 <= k1 - k0 and q1 - q0 <= max_q and k1 - k0 <= max_k
        qs = q[q0:q1].transpose(0, 1)  # [Hq, Lq, D]
        ks = k[k0:k1].transpose(0, 1).repeat_interleave(group, dim=0)
        vs = v[k0:k1].transpose(0, 1).repeat_interleave(group, dim=0)
        scores = (qs.double() @ ks.double().transpose(1, 2)) * scale  # [Hq, Lq, Lk]
        lq, lk = q1 - q0, k1 - k0
        visible = torch.ones(lq, lk, dtype=torch.bool).tril(diagonal=lk - lq)
        out.append((scores.masked_fill(~visible, float("-inf")).softmax(-1) @ vs.double()).to(q.dtype))
    return torch.cat(out, dim=1).transpose(0, 1)  # [Tq, Hq, D]


def test_varlen_adapter_feeds_cu_seqlens_to_the_kernel(qwen2, monkeypatch):
    """The GPU varlen/flash paths, with only the kernel swapped for a CPU reference.

    Everything else (attention registration, kwargs plumbing through the model, q/k/v layouts,
    GQA head grouping, cu_seqlens) is the code that runs on the GPU.
    """
    calls = []
    rng = random.Random(3)
    sequences = make_views_workload(rng, num_samples=5, max_views=3, missing_rate=0.2)
    reference = reference_logprobs(qwen2, sequences)
    for name in ("varlen", "flash_attn"):
        monkeypatch.setitem(prefill_attention._VARLEN_KERNELS, name, lambda *a: reference_varlen_kernel(*a, calls=calls))
        calls.clear()
        packed = packed_response_logprobs(qwen2, sequences, token_budget=30, attn=name, share_prefix_min_tokens=0)
        assert_close_to_reference(packed, reference)
        num_layers = qwen2.config.num_hidden_layers
        plan = plan_microbatches([len(c) + len(r) - 1 for c, r in sequences], 30)
        assert len(calls) == num_layers * len(plan)
        for batch, (cu_q, cu_k, max_q, max_k) in zip(plan, calls[::num_layers]):
            lengths = [len(sequences[i][0]) + len(sequences[i][1]) - 1 for i in batch]
            assert cu_q == cu_k == [sum(lengths[:k]) for k in range(len(lengths) + 1)]
            assert max_q == max_k == max(lengths)
    assert qwen2.config._attn_implementation == "sdpa"  # restored


# --------------------------------------------------------------------------------------------
# Shared context prefixes: fed once, attended to by every sequence that starts with them
# --------------------------------------------------------------------------------------------


def make_grpo_views_workload(rng: random.Random, prompts: int, rollouts: int, views: int, prompt_tokens=(12, 30)):
    """n rollouts per prompt x M views: contexts prompt + view, identical across a prompt's rollouts."""
    sequences = []
    for _ in range(prompts):
        prompt = torch.randint(0, VOCAB, (rng.randint(*prompt_tokens),))
        view_texts = [torch.randint(0, VOCAB, (rng.randint(0, 10),)) for _ in range(views)]
        for _ in range(rollouts):
            response = torch.randint(0, VOCAB, (rng.randint(1, 9),))
            sequences += [(torch.cat([prompt, view]), response) for view in view_texts]
    return sequences


@pytest.mark.parametrize("min_tokens", [1, 4, 16])
@pytest.mark.parametrize("token_budget", [45, 90, 4096])  # cut shared trees into copies ... one micro-batch
@pytest.mark.parametrize("attn", ["sdpa_varlen", "varlen"])
def test_shared_prefixes_match_reference(qwen2, monkeypatch, min_tokens, token_budget, attn):
    monkeypatch.setitem(prefill_attention._VARLEN_KERNELS, "varlen", reference_varlen_kernel)  # the GPU adapter path
    rng = random.Random(100 * min_tokens + token_budget)
    sequences = make_grpo_views_workload(rng, prompts=4, rollouts=3, views=3)
    # a context that is another's prefix, and a one-token response after a fully shared context
    sequences.append((sequences[0][0][:14], torch.randint(0, VOCAB, (4,))))
    sequences.append((sequences[0][0].clone(), torch.randint(0, VOCAB, (1,))))
    stats = {}
    packed = packed_response_logprobs(
        qwen2, sequences, token_budget=token_budget, logprob_chunk_tokens=6, attn=attn,
        share_prefix_min_tokens=min_tokens, stats=stats,
    )  # fmt: skip
    assert_close_to_reference(packed, reference_logprobs(qwen2, sequences))
    assert stats["sequence_tokens"] == sum(len(c) + len(r) - 1 for c, r in sequences)
    assert stats["fed_tokens"] < stats["sequence_tokens"]  # prompts of 12-30 tokens were shared
    assert (stats["microbatches"] > 2) == (token_budget < 4096)


def test_a_kernel_that_aligns_causal_top_left_turns_sharing_off(qwen2, monkeypatch):
    """A varlen kernel whose causal mask is aligned top-left when Lk > Lq (query i sees keys 0..i)
    would give shared-prefix sequences wrong log-probs: it is caught, sharing goes off, results stay exact."""

    def top_left_kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale):
        out = []
        for q0, q1, k0, k1 in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist()):
            group = q.shape[1] // k.shape[1]
            qs = q[None, q0:q1].transpose(1, 2)
            ks = k[None, k0:k1].transpose(1, 2).repeat_interleave(group, dim=1)
            vs = v[None, k0:k1].transpose(1, 2).repeat_interleave(group, dim=1)
            out.append(torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)[0])
        return torch.cat(out, dim=1).transpose(0, 1)  # sdpa's is_causal with Lq != Lk: top-left

    sequences = make_grpo_views_workload(random.Random(4), prompts=2, rollouts=2, views=2)
    for kernel, shares in ((reference_varlen_kernel, True), (top_left_kernel, False)):
        monkeypatch.setitem(prefill_attention._VARLEN_KERNELS, "varlen", kernel)
        stats = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            packed = packed_response_logprobs(qwen2, sequences, token_budget=1000, attn="varlen", stats=stats)
        assert (stats["fed_tokens"] < stats["sequence_tokens"]) == shares
        assert any("shared prefixes are off" in str(w.message) for w in caught) == (not shares)
        assert_close_to_reference(packed, reference_logprobs(qwen2, sequences))


def test_shared_prefix_fed_tokens_by_hand(qwen2):
    prompt, v1, v2 = (torch.randint(0, VOCAB, (n,)) for n in (20, 6, 5))
    r1, r2, r3 = (torch.randint(0, VOCAB, (n,)) for n in (4, 3, 7))
    sequences = [
        (torch.cat([prompt, v1]), r1),  # view 1, rollout 1
        (torch.cat([prompt, v2]), r2),  # view 2, rollout 1
        (torch.cat([prompt, v1]), r3),  # view 1, rollout 2: the whole context is shared
        (torch.randint(0, VOCAB, (9,)), r1),  # another prompt: nothing to share
    ]
    stats = {}
    packed = packed_response_logprobs(qwen2, sequences, token_budget=1000, share_prefix_min_tokens=4, stats=stats)
    assert_close_to_reference(packed, reference_logprobs(qwen2, sequences))
    # prompt once; v1 once (two rollouts continue it) ; v2 with its response; responses[:-1]
    assert stats["fed_tokens"] == 20 + 6 + (5 + 2) + 3 + 6 + (9 + 3)
    assert stats["sequence_tokens"] == (26 + 3) + (25 + 2) + (26 + 6) + (9 + 3)
    assert stats["microbatches"] == 1
    # v1 (6 tokens) below the threshold: only the prompt is shared
    packed_response_logprobs(qwen2, sequences, token_budget=1000, share_prefix_min_tokens=7, stats=stats)
    assert stats["fed_tokens"] == 20 + (6 + 3) + (5 + 2) + (6 + 6) + (9 + 3)
    for off in (dict(share_prefix_min_tokens=0), dict(attn="sdpa_block")):  # no sharing: every sequence whole
        packed_response_logprobs(qwen2, sequences, token_budget=1000, stats=stats, **off)
        assert stats["fed_tokens"] == stats["sequence_tokens"]


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(  # per prompt: its length, then per view (length, responses' lengths)
        st.tuples(
            st.integers(1, 12),
            st.lists(st.tuples(st.integers(0, 6), st.lists(st.integers(0, 5), min_size=1, max_size=3)), min_size=1, max_size=3),
        ),
        min_size=1,
        max_size=4,
    ),
    token_budget=st.integers(1, 40),
    min_tokens=st.integers(0, 5),
)
def test_forest_pieces_cover_every_sequence_within_the_budget(shape, token_budget, min_tokens):
    """_fit + plan: every scored sequence's leaf appears exactly once, below exactly its own
    context (its ancestors' tokens + its own = context + response[:-1]), and a micro-batch is over
    the budget only when it holds a single sequence's path."""
    generator = torch.Generator().manual_seed(len(shape) * 1000 + token_budget)
    sequences = []
    for prompt_length, views in shape:
        prompt = torch.randint(0, 3, (prompt_length,), generator=generator)  # 3 tokens: many accidental common prefixes
        for view_length, responses in views:
            view = torch.randint(0, 3, (view_length,), generator=generator)
            sequences += [(torch.cat([prompt, view]), torch.randint(0, 3, (n,), generator=generator)) for n in responses]
    scored = [i for i, (_, r) in enumerate(sequences) if len(r)]
    trees = [p for t in prefill_plan.prefix_forest(sequences, scored, min_tokens) for p in prefill_plan._fit(t, token_budget)]
    plan = plan_microbatches([t.cost() for t in trees], token_budget)
    seen = []

    def check(segment, prefix):
        tokens = torch.cat([prefix, segment.tokens])
        assert segment.start == len(prefix)
        if segment.sequence is not None:
            context, response = sequences[segment.sequence]
            assert torch.equal(tokens, torch.cat([context, response[:-1]]))
            assert not segment.children
            seen.append(segment.sequence)
        else:
            assert len(segment.tokens) >= max(min_tokens, 1) and segment.children
        for child in segment.children:
            check(child, tokens)

    for batch in plan:
        for j in batch:
            check(trees[j], torch.zeros(0, dtype=torch.long))
        cost = sum(trees[j].cost() for j in batch)
        leaves = [s for j in batch for s in prefill_plan._walk([trees[j]]) if s.sequence is not None]
        assert cost <= token_budget or len(leaves) == 1
    assert sorted(seen) == scored


# --------------------------------------------------------------------------------------------
# Memory: the chunked log-prob never materialises a full [N, V] float32
# --------------------------------------------------------------------------------------------


class LargestLogitsTensor(TorchDispatchMode):
    """Records the most rows of any new tensor an op produces whose last dim is the vocab size.

    Views of an op's inputs (e.g. `lm_head.weight.t()`, [H, V]) allocate nothing and are skipped.
    """

    def __init__(self):
        super().__init__()
        self.max_rows = {torch.float32: 0, torch.float64: 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        input_storages = {a.untyped_storage().data_ptr() for a in inputs}
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[-1] != VOCAB or not t.is_floating_point():
                continue
            if t.untyped_storage().data_ptr() in input_storages:
                continue  # a view
            self.max_rows[t.dtype] = max(self.max_rows.get(t.dtype, 0), t.numel() // VOCAB)
        return out


def test_logprob_chunks_bound_the_logits_tensor(qwen2):
    rng = random.Random(11)
    sequences = make_views_workload(rng, num_samples=6, max_views=3, missing_rate=0.0)
    num_scored = sum(len(r) for _, r in sequences)
    chunk = 4
    assert num_scored > 10 * chunk

    with LargestLogitsTensor() as chunked:
        packed_response_logprobs(qwen2, sequences, token_budget=10_000, logprob_chunk_tokens=chunk)
    assert 0 < chunked.max_rows[torch.float32] <= chunk

    # Control: the recorder does see a full [N, V] float32 when the chunk covers everything.
    with LargestLogitsTensor() as unchunked:
        packed_response_logprobs(qwen2, sequences, token_budget=10_000, logprob_chunk_tokens=10 * num_scored)
    assert unchunked.max_rows[torch.float32] == num_scored


# --------------------------------------------------------------------------------------------
# Bad input: clear errors naming the sequence and field
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        ((torch.zeros(0, dtype=torch.long), torch.tensor([1, 2])), r"sequences\[1\]\.context_ids is empty"),
        ((torch.tensor([[1, 2]]), torch.tensor([1])), r"sequences\[1\]\.context_ids must be a 1-D tensor"),
        ((torch.tensor([1, 2]), torch.tensor([0.5])), r"sequences\[1\]\.response_ids must hold integer"),
        ((torch.tensor([1, VOCAB]), torch.tensor([1])), r"sequences\[1\]\.context_ids has token ids outside"),
        ((torch.tensor([1, 2]), torch.tensor([-1])), r"sequences\[1\]\.response_ids has token ids outside"),
        ((torch.tensor([1, 2]),), r"sequences\[1\] must be a \(context_ids, response_ids\) pair"),
    ],
)
def test_bad_sequences_are_named(qwen2, bad, message):
    good = (torch.tensor([1, 2]), torch.tensor([3]))
    with pytest.raises(ValueError, match=message):
        packed_response_logprobs(qwen2, [good, bad], token_budget=8)


def test_bad_backend_and_chunk_and_cpu_flash(qwen2):
    good = [(torch.tensor([1, 2]), torch.tensor([3]))]
    with pytest.raises(ValueError, match="attn must be one of"):
        packed_response_logprobs(qwen2, good, token_budget=8, attn="paged")
    for flash_backend in ("varlen", "flash_attn"):
        with pytest.raises(ValueError, match="needs a CUDA model in float16/bfloat16"):
            packed_response_logprobs(qwen2, good, token_budget=8, attn=flash_backend)
    with pytest.raises(ValueError, match="logprob_chunk_tokens must be >= 1"):
        packed_response_logprobs(qwen2, good, token_budget=8, logprob_chunk_tokens=0)
    with pytest.raises(ValueError, match="token_budget"):
        packed_response_logprobs(qwen2, good, token_budget=0)
    assert qwen2.config._attn_implementation == "sdpa"


def test_auto_backend_choice_on_cpu(qwen2):
    assert prefill_attention.resolve_attn_backend(qwen2) == "sdpa_varlen"  # no [T, T] mask on CPU
    assert prefill_attention.resolve_attn_backend(tiny_model("gemma2")) == "sdpa_block"  # sliding windows
    assert prefill_attention.resolve_attn_backend(qwen2, "flex") == "flex"


def test_temperature_divides_the_logits(qwen2):
    """Log-probs at temperature tau are those of logits / tau, as verl scores a rollout sampled at tau."""
    sequences = make_views_workload(random.Random(13), num_samples=3, max_views=2, missing_rate=0.0)
    tau = 0.7
    packed = packed_response_logprobs(qwen2, sequences, token_budget=30, temperature=tau)
    reference = []
    with torch.no_grad():
        for context, response in sequences:
            logits = qwen2(torch.cat([context, response])[None]).logits[0].double() / tau
            logprobs = torch.log_softmax(logits, dim=-1)
            reference.append(logprobs[torch.arange(len(context) - 1, len(context) - 1 + len(response)), response])
    assert_close_to_reference(packed, reference)
    plain = packed_response_logprobs(qwen2, sequences, token_budget=30)
    assert max(float((a - b).abs().max()) for a, b in zip(packed, plain)) > 1e-2  # the knob does something
