"""vLLM's prompt-log-prob requests on the `hf` rollout (verl_avsd/cpu/prompt_logprobs.py), in-process.

Every log-prob is compared with a slow float64 reference: one plain full forward of the whole
sequence, log_softmax(logits / T) gathered at the next token. The layout is checked against
verl's own `extract_prompt_logprobs` run on a vLLM-shaped output (vllm is not installed here, so
the function is taken from verl's source file and run alone).
"""

from __future__ import annotations

import ast
import asyncio
import copy
import importlib
import inspect
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import pytest
import torch
import verl.workers.rollout.replica as verl_replica
from hf_server_setup import build_tiny_model, hf_configs
from transformers import Gemma2Config, Gemma2ForCausalLM
from verl.workers.config import HFModelConfig, RolloutConfig

from verl_avsd.cpu.hf_rollout import HFRolloutServer
from verl_avsd.cpu.prefix_cache import Tail, group_tails
from verl_avsd.cpu.prompt_logprobs import SHARE_MIN_TOKENS, PromptLogProbScorer, ScoringRequest
from verl_avsd.toy.tiny_model import build_model

TEACHER_REQUEST = {"max_tokens": 1, "prompt_logprobs": 0, "detokenize": False}  # verl's, plus a temperature


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_model")
    build_tiny_model(out)
    return out


def make_server(model_dir, **rollout_kwargs):
    return HFRolloutServer(*hf_configs(model_dir, **rollout_kwargs), replica_rank=0)


@pytest.fixture
def server(model_dir):
    return make_server(model_dir)


def encode(server, text):
    return list(server.model_config.tokenizer.encode(text))


# A shared "view context" and responses, as AVSD sends them: n rollouts x M views of one prompt.
CONTEXT = "Compute 56 - 7 + 81 - 20. Hint: work left to right."
RESPONSES = ["56 - 7 = 49, 49 + 81 = 130, 130 - 20 = 110. The answer is 110.", "The answer is 100.", "49, 130, 110"]


def score(server, sequences, temperature, **extra):
    """Send the scoring requests concurrently, as the agent loop does."""

    async def run():
        params = {**TEACHER_REQUEST, "temperature": temperature, **extra}
        return await asyncio.gather(*[server.generate(s, dict(params), request_id=f"score{i}") for i, s in enumerate(sequences)])

    return asyncio.run(run())


def reference_log_probs(model, sequence, temperature):
    """float64, one plain forward of the whole sequence: [L - 1] log p(s[j + 1] | s[:j + 1])."""
    model64 = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        logits = model64(input_ids=torch.tensor([sequence])).logits[0, :-1] / temperature  # [L - 1, V]
    return logits.log_softmax(-1).gather(-1, torch.tensor(sequence[1:])[:, None])[:, 0]


def log_probs_of(output):
    """The scored positions (the dummy last entry dropped), float64 [L - 1]."""
    return torch.tensor([entry[0] for entry in output.extra_fields["prompt_logprobs"][:-1]], dtype=torch.float64)


def test_log_probs_equal_float64_reference_at_each_temperature(server):
    """Several temperatures on one server: the later ones reuse the earlier ones' cached prefixes
    (hidden states are cached, not log-probs), and each still equals its own reference.
    Greedy (T = 0) scores the raw logits, like vLLM."""
    sequences = [encode(server, CONTEXT + " " + response) for response in RESPONSES]
    for temperature, scale in [(0.6, 0.6), (1.0, 1.0), (1.7, 1.7), (0.0, 1.0)]:
        outputs = score(server, sequences, temperature)
        for sequence, output in zip(sequences, outputs, strict=True):
            expected = reference_log_probs(server.model, sequence, scale)
            torch.testing.assert_close(log_probs_of(output), expected, atol=1e-5, rtol=0)
    assert server.scorer.stats["cache_hits"] > 0


def vllm_extract_prompt_logprobs():
    """verl's extract_prompt_logprobs, compiled from its source alone (its module imports vllm)."""
    path = inspect.getsourcefile(verl_replica).replace("replica.py", "vllm_rollout/utils.py")
    tree = ast.parse(open(path).read())
    (function,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "extract_prompt_logprobs"]
    namespace = {"RequestOutput": object, "Optional": Optional}
    exec(compile(ast.Module(body=[function], type_ignores=[]), path, "exec"), namespace)
    return namespace["extract_prompt_logprobs"]


def test_layout_equals_verl_extract_prompt_logprobs_on_a_vllm_output(server):
    sequence = encode(server, CONTEXT + " " + RESPONSES[0])
    (output,) = score(server, [sequence], 1.0)
    reference = reference_log_probs(server.model, sequence, 1.0)
    # vLLM: one dict per prompt token, None for the first, {token: Logprob} for the others
    vllm_output = SimpleNamespace(
        prompt_logprobs=[None]
        + [{token: SimpleNamespace(logprob=float(lp), rank=1)} for token, lp in zip(sequence[1:], reference)]
    )
    expected: dict = {}
    vllm_extract_prompt_logprobs()(vllm_output, 0, expected)
    assert output.extra_fields["prompt_ids"] == expected["prompt_ids"]
    assert len(output.extra_fields["prompt_logprobs"]) == len(sequence) == len(expected["prompt_logprobs"])
    assert output.extra_fields["prompt_logprobs"][-1] == [0.0] and output.extra_fields["prompt_ids"][-1] == [0]
    torch.testing.assert_close(
        torch.tensor(output.extra_fields["prompt_logprobs"], dtype=torch.float64),
        torch.tensor(expected["prompt_logprobs"], dtype=torch.float64),
        atol=1e-5,
        rtol=0,
    )
    # what verl's teacher manager does with it (compute_teacher_logprobs_single)
    assert torch.tensor(output.extra_fields["prompt_ids"], dtype=torch.int32).shape == (len(sequence), 1)
    assert output.token_ids == [] and output.log_probs is None and output.stop_reason == "completed"
    assert "global_steps" in output.extra_fields and output.extra_fields["num_cached_tokens"] == 0


def test_top_k_prompt_logprobs_are_the_k_best_tokens_best_first(server):
    sequence = encode(server, CONTEXT)
    (output,) = score(server, [sequence], 0.8, prompt_logprobs=3)
    model64 = copy.deepcopy(server.model).double()
    with torch.no_grad():
        expected = (model64(input_ids=torch.tensor([sequence])).logits[0, :-1] / 0.8).log_softmax(-1).topk(3, dim=-1)
    assert output.extra_fields["prompt_ids"][:-1] == expected.indices.tolist()
    assert output.extra_fields["prompt_ids"][-1] == [0, 0, 0] and output.extra_fields["prompt_logprobs"][-1] == [0.0, 0.0, 0.0]
    torch.testing.assert_close(
        torch.tensor(output.extra_fields["prompt_logprobs"][:-1], dtype=torch.float64), expected.values, atol=1e-5, rtol=0
    )


def test_cached_results_equal_uncached_and_feed_fewer_tokens(server, model_dir):
    uncached = make_server(model_dir, enable_prefix_caching=False)
    first, repeat, sibling = (encode(server, CONTEXT + " " + r) for r in (RESPONSES[0], RESPONSES[0], RESPONSES[1]))
    (a,) = score(server, [first], 0.7)
    fed_once, head_once = server.scorer.stats["fed_tokens"], server.scorer.stats["head_tokens"]
    assert fed_once == len(first) - 1 and a.extra_fields["num_cached_tokens"] == 0
    (b,) = score(server, [repeat], 0.7)  # the same request again: nothing to run
    assert b.extra_fields["prompt_logprobs"] == a.extra_fields["prompt_logprobs"]
    assert b.extra_fields["num_cached_tokens"] == len(first) - 1 and server.scorer.stats["fed_tokens"] == fed_once
    assert server.scorer.stats["head_tokens"] == head_once + 1  # the head's output is reused but for the last position
    (c,) = score(server, [sibling], 0.7)  # shares the context: only the rest is run
    shared = next(j for j, (x, y) in enumerate(zip(first, sibling)) if x != y)
    assert c.extra_fields["num_cached_tokens"] == shared > 0
    assert server.scorer.stats["fed_tokens"] - fed_once == len(sibling) - 1 - shared
    assert server.scorer.stats["cache_hits"] == 2
    (c_uncached,) = score(uncached, [sibling], 0.7)
    assert c_uncached.extra_fields["num_cached_tokens"] == 0 and uncached.scorer.stats["fed_tokens"] == len(sibling) - 1
    torch.testing.assert_close(log_probs_of(c), log_probs_of(c_uncached), atol=1e-6, rtol=0)
    torch.testing.assert_close(log_probs_of(c), reference_log_probs(server.model, sibling, 0.7), atol=1e-5, rtol=0)


def test_a_batch_of_views_times_rollouts_shares_prefixes_within_one_round(server):
    """4 views (of different lengths) x 3 rollouts sent at once: each view context is run once
    (first wave), then the 12 responses in padded forwards, each row on its own cached prefix."""
    views = ["Compute 56 - 7 + 81 - 20." + f" View {m}:" + " ok" * m for m in range(4)]
    sequences = [encode(server, view + " " + response) for view in views for response in RESPONSES]
    outputs = score(server, sequences, 1.0)
    for sequence, output in zip(sequences, outputs, strict=True):
        torch.testing.assert_close(log_probs_of(output), reference_log_probs(server.model, sequence, 1.0), atol=1e-5, rtol=0)
    total = sum(len(s) - 1 for s in sequences)
    assert server.scorer.stats["cached_tokens"] == sum(o.extra_fields["num_cached_tokens"] for o in outputs)
    assert server.scorer.stats["fed_tokens"] + server.scorer.stats["cached_tokens"] == total
    # at best each distinct prefix runs once (the trie of the fed sequences); a request may redo
    # a shared piece shorter than SHARE_MIN_TOKENS rather than wait a wave for it
    trie = len({tuple(s[: j + 1]) for s in sequences for j in range(len(s) - 1)})
    assert trie <= server.scorer.stats["fed_tokens"] <= trie + SHARE_MIN_TOKENS * len(sequences) < total
    assert server.scorer.stats["forwards"] <= 4  # not one per request


def test_update_weights_clears_the_prefix_cache(server, model_dir):
    sequence = encode(server, CONTEXT + " " + RESPONSES[0])
    (before,) = score(server, [sequence], 1.0)
    other = build_model(server.model_config.tokenizer, hidden=64, layers=2, heads=4, kv_heads=2, max_positions=128, seed=11)
    asyncio.run(server.update_weights(list(other.state_dict().items()), global_steps=3))
    assert len(server.scorer.cache) == 0
    (after,) = score(server, [sequence], 1.0)
    assert after.extra_fields["num_cached_tokens"] == 0 and after.extra_fields["global_steps"] == 3
    torch.testing.assert_close(log_probs_of(after), reference_log_probs(other, sequence, 1.0), atol=1e-5, rtol=0)
    assert (log_probs_of(after) - log_probs_of(before)).abs().max() > 0.1  # the old model's answer is far off


def test_sleep_and_clear_kv_cache_drop_the_cache(server):
    score(server, [encode(server, CONTEXT)], 1.0)
    assert len(server.scorer.cache) == 1
    asyncio.run(server.sleep())
    assert len(server.scorer.cache) == 0 and server.scorer.cache.nbytes == 0


def test_cache_stays_within_its_byte_bound(model_dir):
    server = make_server(model_dir, custom={"hf_prefix_cache_mb": 0.2})  # ~210 kB: three or four toy sequences (~55 kB each)
    sequences = [encode(server, f"Compute {i} + {i}. " + RESPONSES[0]) for i in range(10, 30)]
    outputs = score(server, sequences, 1.0)
    assert 0 < len(server.scorer.cache) < len(sequences) and server.scorer.cache.nbytes <= 0.2 * 2**20
    for sequence, output in zip(sequences[-3:], outputs[-3:]):
        torch.testing.assert_close(log_probs_of(output), reference_log_probs(server.model, sequence, 1.0), atol=1e-5, rtol=0)


def test_one_token_sequence_gets_only_the_dummy_entry_like_vllm(server):
    (output,) = score(server, [[7]], 1.0)
    assert output.extra_fields["prompt_ids"] == [[0]] and output.extra_fields["prompt_logprobs"] == [[0.0]]


@pytest.mark.parametrize(
    "sequence, params, match",
    [
        ([], {}, "prompt_ids is empty"),
        ([5, 100000], {}, r"prompt_ids\[1\]=100000 is outside the vocabulary"),
        ([5, -1], {}, r"prompt_ids\[1\]=-1"),
        ([5, 6], {"prompt_logprobs": -1}, "prompt_logprobs must be an int >= 0"),
        ([5, 6], {"prompt_logprobs": True}, "prompt_logprobs must be an int >= 0"),
        ([5, 6], {"prompt_logprobs": 10**6}, "exceeds the vocabulary"),
        ([5, 6], {"max_tokens": 8}, "max_tokens must be 1"),
        ([5, 6], {"temperature": "hot"}, "temperature must be a number"),
        ([5, 6], {"temperature": float("nan")}, "temperature must be finite"),
        ([5, 6], {"temperature": float("-inf")}, "temperature must be finite"),
        ([5] * 128, {}, "leaves no room within max_model_len=128"),
    ],
)
def test_bad_scoring_requests_get_clear_errors(server, sequence, params, match):
    with pytest.raises(ValueError, match=match):
        asyncio.run(server.generate(sequence, {**TEACHER_REQUEST, "temperature": 1.0, **params}, request_id="bad-one"))
    with pytest.raises(ValueError, match="request bad-one"):
        asyncio.run(server.generate(sequence, {**TEACHER_REQUEST, "temperature": 1.0, **params}, request_id="bad-one"))


def test_bad_cache_size_names_the_key(model_dir):
    with pytest.raises(ValueError, match="actor_rollout_ref.rollout.custom.hf_prefix_cache_mb"):
        make_server(model_dir, custom={"hf_prefix_cache_mb": "big"})


def test_generation_and_scoring_requests_interleaved_both_correct(server):
    prompt = list(
        server.model_config.tokenizer.apply_chat_template(
            [{"role": "user", "content": "Compute 12 + 34."}], add_generation_prompt=True, tokenize=True
        )["input_ids"]
    )
    sequences = [encode(server, CONTEXT + " " + response) for response in RESPONSES]

    async def run():
        generating = [server.generate(prompt, {"temperature": 1.0, "logprobs": True}, request_id=f"gen{i}") for i in range(3)]
        scoring = [
            server.generate(s, {**TEACHER_REQUEST, "temperature": 1.0}, request_id=f"score{i}") for i, s in enumerate(sequences)
        ]
        mixed = [generating[0], scoring[0], generating[1], scoring[1], scoring[2], generating[2]]
        return await asyncio.wait_for(asyncio.gather(*mixed), timeout=120)

    outputs = asyncio.run(run())
    for output in (outputs[0], outputs[2], outputs[5]):
        assert len(output.token_ids) >= 1 and "prompt_logprobs" not in output.extra_fields
        expected = reference_log_probs(server.model, prompt + output.token_ids, 1.0)[len(prompt) - 1 :]
        torch.testing.assert_close(torch.tensor(output.log_probs, dtype=torch.float64), expected, atol=1e-4, rtol=0)
    for sequence, output in zip(sequences, (outputs[1], outputs[3], outputs[4]), strict=True):
        torch.testing.assert_close(log_probs_of(output), reference_log_probs(server.model, sequence, 1.0), atol=1e-5, rtol=0)


def test_final_logit_soft_capping_and_sliding_window_match_the_model():
    """Gemma 2 soft-caps its logits and alternates sliding-window layers: the scorer applies the cap
    (the packed path's transform) exactly once, and cached prefixes longer than the window stay exact."""
    config = Gemma2Config(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=6,
        final_logit_softcapping=2.0,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config).eval()
    scorer = PromptLogProbScorer()
    first, second = list(range(3, 23)), list(range(3, 17)) + list(range(40, 50))  # share 14 tokens > window 6

    def request(sequence):
        return ScoringRequest(prompt_ids=sequence, temperature=0.9, num_logprobs=0, want_logprobs=False, result=None)

    third = list(range(3, 9)) + list(range(50, 60))  # shares 6 with both; 9 uncached positions, like second
    scorer.score_batch(model, [request(first)])
    forwards = scorer.stats["forwards"]
    outs = scorer.score_batch(model, [request(second), request(third)])  # one padded forward, prefixes of 14 and 6
    assert scorer.stats["forwards"] == forwards + 1 and [out["num_cached_tokens"] for out in outs] == [14, 6]
    for sequence, out in zip((second, third), outs):
        got = torch.tensor([entry[0] for entry in out["prompt_logprobs"][:-1]], dtype=torch.float64)
        torch.testing.assert_close(got, reference_log_probs(model, sequence, 0.9), atol=1e-5, rtol=0)


def test_forwards_group_rows_of_similar_length_within_the_token_budget():
    def tail(length, reused):
        return Tail(ids=torch.zeros(length, dtype=torch.long), prefix=None, reused=reused)

    tails = [tail(12, 2), tail(30, 21), tail(4, 2), tail(40, 30)]  # uncached 10, 9, 2, 10
    assert group_tails(tails, max_batch_tokens=1000) == [[3, 0, 1], [2]]  # 3 x 10 <= 1.25 x 29; 4 x 10 > 1.25 x 31
    assert group_tails(tails, max_batch_tokens=80) == [[3, 0], [1], [2]]  # 2 x (30 + 10) = 80 fits, 3 x 40 does not


def test_bench_script_reports_cached_and_uncached_scoring(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    bench = importlib.import_module("hf_prompt_logprobs")
    bench.main(["--views", "2", "--rollouts", "2", "--response-tokens", "8", "--repeats", "1", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "hf_prompt_logprobs_toy.json").read_text())
    for order in ("per_rollout", "all_at_once"):
        cached, uncached = report["results"][order]["cache"], report["results"][order]["no_cache"]
        assert cached["scored_tokens"] == uncached["scored_tokens"] == uncached["fed_tokens"] > cached["fed_tokens"] > 0
        assert cached["cached_tokens"] + cached["fed_tokens"] == cached["scored_tokens"]
        # every position counts here, the view contexts' unlikely tokens too (log-probs near -10):
        # float32 rounding of the shipped toy model reaches ~1e-4 there, batched or not
        assert report["results"][order]["max_abs_diff"] < 1e-4 and cached["tokens_per_s"] > 0
    assert "2 views x 2 rollouts" in (tmp_path / "hf_prompt_logprobs_toy.md").read_text()


@pytest.mark.slow
def test_scoring_through_the_ray_actor_with_a_weight_update(model_dir):
    """The server as verl runs it: a Ray actor (HFReplica's options), scoring and generation sent
    concurrently, then a weight update through the actor: no stale cached prefix survives it."""
    import shutil
    import tempfile

    import ray

    temp_dir = tempfile.mkdtemp(prefix="hfp_ray_", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(
        address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir, _metrics_export_port=27301
    )  # its own cluster
    try:
        settings = dict(name="hf", prompt_length=48, response_length=12, dtype="float32", tensor_model_parallel_size=1)
        model_config = HFModelConfig(path=str(model_dir), override_config={"attn_implementation": "sdpa"})
        server = ray.remote(HFRolloutServer).options(max_concurrency=16).remote(RolloutConfig(**settings), model_config, 0)
        local = make_server(model_dir)  # the same weights, for the references
        sequences = [encode(local, CONTEXT + " " + response) for response in RESPONSES]
        params = {**TEACHER_REQUEST, "temperature": 0.8}
        calls = [server.generate.remote(s, dict(params), f"s{i}") for i, s in enumerate(sequences)]
        calls.insert(1, server.generate.remote(sequences[0][:20], {"temperature": 1.0, "max_tokens": 4}, "gen"))
        outputs = ray.get(calls, timeout=300)
        assert 1 <= len(outputs[1].token_ids) <= 4 and "prompt_logprobs" not in outputs[1].extra_fields
        for sequence, output in zip(sequences, outputs[:1] + outputs[2:]):
            torch.testing.assert_close(log_probs_of(output), reference_log_probs(local.model, sequence, 0.8), atol=1e-5, rtol=0)
        assert sum(output.extra_fields["num_cached_tokens"] for output in outputs[2:]) > 0

        other = build_model(local.model_config.tokenizer, hidden=64, layers=2, heads=4, kv_heads=2, max_positions=128, seed=11)
        ray.get(server.update_weights.remote(list(other.state_dict().items()), 2), timeout=120)
        after = ray.get(server.generate.remote(sequences[0], dict(params), "after"), timeout=120)
        assert after.extra_fields["num_cached_tokens"] == 0 and after.extra_fields["global_steps"] == 2
        torch.testing.assert_close(log_probs_of(after), reference_log_probs(other, sequences[0], 0.8), atol=1e-5, rtol=0)
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_growing_sequence_keeps_one_cache_entry_and_reuses_it(server):
    """The views followed while generating (view_follower.py) score context + response so far
    every few tokens: each round's entry replaces the one it extended, so the cache holds the
    sequence once, and each round runs only its new tokens."""
    server.scorer.clear()
    sequence = encode(server, CONTEXT + " " + RESPONSES[0])
    rounds = [sequence[:n] for n in range(len(sequence) - 12, len(sequence) + 1, 4)]
    outputs = [score(server, [part], 1.0)[0] for part in rounds]
    assert len(server.scorer.cache) == 1
    for previous, output in zip([None, *rounds], outputs):
        if previous is not None:  # reused all it fed before (its last token is fed now, as part of the new ones)
            assert output.extra_fields["num_cached_tokens"] == len(previous) - 1
    torch.testing.assert_close(log_probs_of(outputs[-1]), reference_log_probs(server.model, sequence, 1.0), atol=1e-5, rtol=0)
