"""The `hf` rollout backend (verl_avsd.cpu.hf_rollout), in-process, without Ray.

The server's per-token log-probs are compared with a slow float64 recomputation (full
forward of prompt + response, no padding, temperature and top-k applied by hand), which
also checks the left padding of batched prompts.
"""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
import textwrap

import pytest
import torch
from hf_server_setup import build_tiny_model, hf_configs
from peak_rss import PEAK_GROWTH

from verl_avsd.cpu.hf_adapter import HFServerAdapter
from verl_avsd.cpu.hf_rollout import HFReplica, HFRolloutServer, _Request
from verl_avsd.toy.tiny_model import build_model

PROMPTS = ["Compute 12 + 34.", "Compute 56 - 7 + 81 - 20.", "Compute 99."]  # different lengths


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_model")
    build_tiny_model(out)
    return out


make_configs = hf_configs


@pytest.fixture
def server(model_dir):
    rollout, model = make_configs(model_dir)
    return HFRolloutServer(rollout, model, replica_rank=0)


def prompt_ids(server, text):
    encoded = server.model_config.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    return list(encoded["input_ids"])


def generate_all(server, prompts, params):
    """Send the requests concurrently, as verl's agent loop does, so they share batches."""

    async def run():
        return await asyncio.gather(
            *[server.generate(prompt, dict(params), request_id=f"req{i}") for i, prompt in enumerate(prompts)]
        )

    return asyncio.run(run())


def reference_log_probs(model, prompt, response, temperature, top_k):
    """float64, one unpadded sequence: log-softmax of (logits / T, top-k kept) at each response token."""
    model64 = copy.deepcopy(model).double().eval()
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model64(input_ids=ids).logits[0, len(prompt) - 1 : -1] / temperature  # [T, V]
    if top_k > 0:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits.log_softmax(-1).gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)


def test_sampled_log_probs_match_float64_reference(server):
    prompts = [prompt_ids(server, text) for text in PROMPTS]
    params = {"temperature": 0.7, "top_p": 1.0, "top_k": 20, "logprobs": True}
    outputs = generate_all(server, prompts, params)
    for prompt, output in zip(prompts, outputs, strict=True):
        assert 1 <= len(output.token_ids) <= 12 and len(output.log_probs) == len(output.token_ids)
        expected = reference_log_probs(server.model, prompt, output.token_ids, temperature=0.7, top_k=20)
        torch.testing.assert_close(torch.tensor(output.log_probs, dtype=torch.float64), expected, atol=1e-4, rtol=0)


def padded_batch(prompts, pad_id):
    """Left-padded [B, P] ids and mask, as the server lays out a batch."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def full_scores_log_probs(server, prompts, max_tokens, temperature, top_k, top_p, seed):
    """The previous implementation, in float64: plain `generate` with its own warpers and
    `output_scores`, then log-softmax of the stacked [B, T, V] scores at the sampled tokens."""
    ids, mask = padded_batch(prompts, server.pad_token_id)
    sampling = (
        dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        out = server.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            eos_token_id=server.eos_token_ids,
            pad_token_id=server.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
            **sampling,
        )
    tokens = out.sequences[:, ids.shape[1] :]  # [B, T]
    log_probs = torch.stack(out.scores, dim=1).double().log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, log_probs


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, 20, 0.9), (1.3, 0, 1.0), (0.0, 0, 1.0)])
def test_step_by_step_log_probs_equal_full_log_softmax(server, temperature, top_k, top_p):
    """One batch of prompts of different lengths, sampled with the same seed both ways: the same
    tokens (so the warpers run in generate's order) and the same log-probs to 1e-6."""
    prompts = [prompt_ids(server, text) for text in PROMPTS]
    requests = [
        _Request(
            prompt_ids=p,
            max_tokens=12,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=1.0,
            want_logprobs=True,
            seed=None,
            result=None,
        )
        for p in prompts
    ]
    torch.manual_seed(7)
    got = server._generate_batch(requests)
    tokens, expected = full_scores_log_probs(server, prompts, 12, temperature, top_k, top_p, seed=7)
    for row, (token_ids, log_probs) in enumerate(got):
        assert token_ids == tokens[row, : len(token_ids)].tolist()
        torch.testing.assert_close(
            torch.tensor(log_probs, dtype=torch.float64), expected[row, : len(token_ids)], atol=1e-6, rtol=0
        )


# Runs in a fresh process so that its peak RSS measures only this generation.
_PEAK_RSS_SCRIPT = PEAK_GROWTH + textwrap.dedent("""
    import sys, torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from verl.workers.config import HFModelConfig, RolloutConfig
    from verl_avsd.cpu.hf_rollout import HFRolloutServer, _Request

    model_dir, batch, tokens, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rollout = RolloutConfig(name="hf", prompt_length=16, response_length=tokens, dtype="float32", tensor_model_parallel_size=1)
    server = HFRolloutServer(rollout, HFModelConfig(path=model_dir, override_config={"attn_implementation": "sdpa"}), replica_rank=0)
    torch.manual_seed(0)  # a big vocabulary on a tiny body: the [B, T, V] scores dominate everything else
    server.model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)).eval()
    server.eos_token_ids = [vocab - 1]
    def run(max_tokens):
        requests = [_Request(prompt_ids=list(range(3, 15)), max_tokens=max_tokens, temperature=1.0, top_p=1.0, top_k=0,
                             repetition_penalty=1.0, want_logprobs=True, seed=None, result=None) for _ in range(batch)]
        torch.manual_seed(1)
        return server._generate_batch(requests)
    run(4)  # warm-up: everything but the per-step tensors is allocated now
    growth, outputs = peak_growth(lambda: run(tokens))
    print(min(len(t) for t, _ in outputs), growth)
""")


def test_log_prob_memory_does_not_grow_with_response_length_times_vocab(model_dir):
    """8 x 128 tokens over a 65,536-token vocabulary: one float32 [B, T, V] tensor is 268 MB and
    the full log-softmax path held three; step by step the peak grows by a small fraction of one."""
    batch, tokens, vocab = 8, 128, 65536
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_SCRIPT, str(model_dir), str(batch), str(tokens), str(vocab)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shortest, growth = map(int, proc.stdout.split()[-2:])
    assert shortest == tokens  # no EOS cut a response short, so all T steps were scored
    one_btv_tensor = batch * tokens * vocab * 4
    assert growth < one_btv_tensor / 4, (growth, one_btv_tensor)


def test_log_probs_only_when_asked(server):
    (output,) = generate_all(server, [prompt_ids(server, PROMPTS[0])], {"temperature": 1.0, "logprobs": False})
    assert output.log_probs is None and len(output.token_ids) > 0


def test_greedy_batch_equals_one_at_a_time(server):
    prompts = [prompt_ids(server, text) for text in PROMPTS]
    batched = generate_all(server, prompts, {"temperature": 0.0})
    alone = [generate_all(server, [prompt], {"temperature": 0.0})[0] for prompt in prompts]
    assert [o.token_ids for o in batched] == [o.token_ids for o in alone]


def test_response_ends_at_first_eos_and_respects_max_tokens(server):
    prompt = prompt_ids(server, PROMPTS[1])
    params = {"temperature": 1.0, "seed": 0, "max_tokens": 10}
    (sampled,) = generate_all(server, [prompt], params)
    assert len(sampled.token_ids) == 10  # random weights: no EOS in sight, so max_tokens ends it
    # make the first token that is new at position i >= 1 the EOS; the same seed then draws the
    # same tokens, so the response must stop right after it
    i = next(i for i in range(1, 10) if sampled.token_ids[i] not in sampled.token_ids[:i])
    server.eos_token_ids = [sampled.token_ids[i]]
    (stopped,) = generate_all(server, [prompt], params)
    assert stopped.token_ids == sampled.token_ids[: i + 1]  # EOS kept, nothing after it


def test_seeded_request_is_reproducible_among_other_requests(server):
    prompt = prompt_ids(server, PROMPTS[0])
    seeded = {"temperature": 1.0, "seed": 123, "logprobs": True}
    (alone,) = generate_all(server, [prompt], seeded)
    mixed = generate_all(server, [prompt, prompt, prompt], {"temperature": 1.0})  # unseeded traffic
    together = generate_all(server, [prompt, prompt], seeded)
    assert together[0].token_ids == together[1].token_ids == alone.token_ids
    assert len({tuple(o.token_ids) for o in mixed}) > 1  # unseeded samples differ


def test_full_determinism_seeds_every_request(model_dir):
    rollout, model = make_configs(model_dir, full_determinism=True, seed=5)
    server = HFRolloutServer(rollout, model, replica_rank=0)
    prompt = prompt_ids(server, PROMPTS[2])
    first = generate_all(server, [prompt], {"temperature": 1.0})[0].token_ids
    second = generate_all(server, [prompt], {"temperature": 1.0})[0].token_ids
    assert first == second


def test_update_weights_makes_the_server_sample_from_the_new_policy(server, model_dir):
    other = build_model(server.model_config.tokenizer, hidden=64, layers=2, heads=4, kv_heads=2, max_positions=128, seed=11)
    named = list(other.state_dict().items())  # includes the tied lm_head.weight
    asyncio.run(server.update_weights(named, global_steps=5))
    prompt = prompt_ids(server, PROMPTS[0])
    (output,) = generate_all(server, [prompt], {"temperature": 1.0, "logprobs": True})
    assert output.extra_fields["global_steps"] == 5
    expected = reference_log_probs(other, prompt, output.token_ids, temperature=1.0, top_k=0)
    torch.testing.assert_close(torch.tensor(output.log_probs, dtype=torch.float64), expected, atol=1e-4, rtol=0)


def test_update_weights_rejects_unknown_name_and_wrong_shape(server):
    with pytest.raises(KeyError, match="model.not_a_layer.weight"):
        asyncio.run(server.update_weights([("model.not_a_layer.weight", torch.zeros(2))]))
    with pytest.raises(ValueError, match="model.norm.weight"):
        asyncio.run(server.update_weights([("model.norm.weight", torch.zeros(3))]))


def test_bad_requests_name_the_request(server):
    too_long = [5] * server.max_model_len
    with pytest.raises(ValueError, match="request long-one"):
        asyncio.run(server.generate(too_long, {"temperature": 1.0}, request_id="long-one"))
    with pytest.raises(NotImplementedError, match="request pic"):
        asyncio.run(server.generate([5, 6], {}, request_id="pic", image_data=["an image"]))


def test_bad_dtype_is_named(model_dir):
    rollout, model = make_configs(model_dir, dtype="int8")
    with pytest.raises(ValueError, match="actor_rollout_ref.rollout.dtype"):
        HFRolloutServer(rollout, model, replica_rank=0)


def test_replica_refuses_model_parallelism(model_dir):
    rollout, model = make_configs(model_dir, tensor_model_parallel_size=2)
    replica = HFReplica(replica_rank=0, config=rollout, model_config=model, gpus_per_node=2)
    with pytest.raises(ValueError, match="tensor_model_parallel_size"):
        asyncio.run(replica.launch_servers())


def test_adapter_refuses_what_it_cannot_load(model_dir):
    rollout, model = make_configs(model_dir)
    adapter = HFServerAdapter(rollout, model, device_mesh=None)
    with pytest.raises(NotImplementedError, match="wire_format"):
        asyncio.run(adapter.update_weights(iter([]), wire_format="delta_flush"))
    with pytest.raises(NotImplementedError, match="lora.merge"):
        asyncio.run(adapter.update_weights(iter([]), peft_config={"r": 8}))


def test_registered_with_verl():
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    assert RolloutReplicaRegistry.get("hf") is HFReplica
    assert get_rollout_class("hf", "async") is HFServerAdapter
