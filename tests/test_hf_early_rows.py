"""The `hf` rollout's generation tail and scoring beside generation (verl_avsd/cpu/early_rows.py).

- Each generation request is answered when its own row ends, with exactly the answer the
  whole-batch path gives (same tokens up to the first EOS, same log-probs), before the batch's
  `generate` returns.
- Scoring requests run while a `generate` call runs; a weight update waits for a scoring batch
  in flight, and scoring after it equals the new model (float64 reference).
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from test_hf_prompt_logprobs import (
    CONTEXT,
    RESPONSES,
    TEACHER_REQUEST,
    encode,
    log_probs_of,
    make_server,
    model_dir,  # noqa: F401  (the module-scoped tiny model fixture)
    reference_log_probs,
)

from verl_avsd.cpu.early_rows import response_length
from verl_avsd.cpu.hf_rollout import _Request
from verl_avsd.toy.tiny_model import build_model

PROMPTS = ["Compute 12 + 34.", "Compute 56 - 7 + 81 - 20.", "Compute 99.", "Compute 3 + 4 - 5."]
MAX_TOKENS = 30
SEED = 3


@pytest.fixture
def server(model_dir):  # noqa: F811
    return make_server(model_dir, prompt_length=48, response_length=MAX_TOKENS)


def chat(server, text):
    encoded = server.model_config.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    return list(encoded["input_ids"])


def requests_for(prompts, futures=None):
    return [
        _Request(
            prompt_ids=p,
            max_tokens=MAX_TOKENS,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            repetition_penalty=1.0,
            want_logprobs=True,
            seed=None,
            result=None if futures is None else futures[i],
        )
        for i, p in enumerate(prompts)
    ]


def make_row0_end_at_step_2(server, prompts):
    """Pick an EOS so that row 0 ends after 2 tokens and row 1 runs all MAX_TOKENS steps.

    The random tiny model never emits its real EOS, so one of row 0's sampled tokens is made
    the EOS; the same seed then draws the same tokens (finished rows still draw).
    """
    torch.manual_seed(SEED)
    free = server._generate_batch(requests_for(prompts))
    assert all(len(tokens) == MAX_TOKENS for tokens, _ in free)
    row0, row1 = free[0][0], free[1][0]
    eos = row0[1]
    assert eos != row0[0] and eos not in row1, "the seed gives no usable EOS for this test; pick another"
    server.eos_token_ids = [eos]
    return eos


def test_early_rows_equal_the_whole_batch_path(server):
    """Rows of different lengths: each row's early answer is the batch path's answer, exactly."""
    prompts = [chat(server, text) for text in PROMPTS]
    make_row0_end_at_step_2(server, prompts)
    torch.manual_seed(SEED)
    batch_path = server._generate_batch(requests_for(prompts))
    reported: list[tuple[int, tuple]] = []
    torch.manual_seed(SEED)
    with_early = server._generate_batch(requests_for(prompts), on_finished=lambda row, result: reported.append((row, result)))
    assert with_early == batch_path
    assert sorted(row for row, _ in reported) == list(range(len(prompts)))  # every row reported once
    assert dict(reported) == dict(enumerate(batch_path))  # the same tokens and log-probs, bit for bit
    lengths = [len(tokens) for tokens, _ in batch_path]
    assert lengths[0] == 2 and lengths[1] == MAX_TOKENS
    assert reported[0][0] == 0 and reported[-1][0] in [row for row, n in enumerate(lengths) if n == MAX_TOKENS]
    for tokens, _ in batch_path:
        assert response_length(tokens, server.eos_token_ids) == len(tokens)  # nothing after the first EOS


def test_a_finished_request_is_answered_before_generate_returns(server):
    """Row 0 ends at step 2, row 1 runs 30 steps: row 0's caller has its answer while generate
    still runs (the patched generate waits for it before returning; without early rows it never
    comes, and the wait times out)."""
    prompts = [chat(server, text) for text in PROMPTS]
    make_row0_end_at_step_2(server, prompts)
    torch.manual_seed(SEED)
    expected = server._generate_batch(requests_for(prompts))

    row0_answered = threading.Event()
    answered_inside_generate: list[bool] = []
    real_generate = server.model.generate

    def generate(*args, **kwargs):
        out = real_generate(*args, **kwargs)
        answered_inside_generate.append(row0_answered.wait(timeout=10))
        return out

    server.model.generate = generate

    async def run():
        tasks = [
            asyncio.ensure_future(
                server.generate(p, {"temperature": 1.0, "logprobs": True, "max_tokens": MAX_TOKENS}, request_id=f"r{i}")
            )
            for i, p in enumerate(prompts)
        ]
        tasks[0].add_done_callback(lambda _: row0_answered.set())
        return await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)

    torch.manual_seed(SEED)
    outputs = asyncio.run(run())
    assert answered_inside_generate == [True]  # one batch, and row 0 was answered inside it
    assert [(o.token_ids, o.log_probs) for o in outputs] == expected


def test_scoring_runs_while_generate_runs(server):
    """A scoring request sent during a generate call is answered before that call returns."""
    sequence = encode(server, CONTEXT + " " + RESPONSES[0])
    scored = threading.Event()
    scored_inside_generate: list[bool] = []
    real_generate = server.model.generate

    def generate(*args, **kwargs):
        scored_inside_generate.append(scored.wait(timeout=10))
        return real_generate(*args, **kwargs)

    server.model.generate = generate

    async def run():
        generating = asyncio.ensure_future(server.generate(chat(server, PROMPTS[0]), {"temperature": 1.0}, request_id="gen"))
        await asyncio.sleep(0.2)  # the generate call is running in its thread now
        scoring = asyncio.ensure_future(server.generate(sequence, {**TEACHER_REQUEST, "temperature": 1.0}, request_id="score"))
        scoring.add_done_callback(lambda _: scored.set())
        return await asyncio.wait_for(asyncio.gather(generating, scoring), timeout=120)

    _, scoring_output = asyncio.run(run())
    assert scored_inside_generate == [True]
    torch.testing.assert_close(log_probs_of(scoring_output), reference_log_probs(server.model, sequence, 1.0), atol=1e-5, rtol=0)


def test_weight_update_waits_for_a_scoring_batch_in_flight(server):
    """The update starts while a scoring batch runs: it must wait (the batch reads the old weights
    to the end), and scoring after it equals the new model."""
    sequence = encode(server, CONTEXT + " " + RESPONSES[1])
    old_reference = reference_log_probs(server.model, sequence, 1.0)
    other = build_model(server.model_config.tokenizer, hidden=64, layers=2, heads=4, kv_heads=2, max_positions=128, seed=11)
    new_reference = reference_log_probs(other, sequence, 1.0)
    started, release = threading.Event(), threading.Event()
    real_score_batch = server.scorer.score_batch

    def score_batch(model, batch):
        started.set()
        assert release.wait(timeout=30)
        return real_score_batch(model, batch)

    server.scorer.score_batch = score_batch
    params = {**TEACHER_REQUEST, "temperature": 1.0}

    async def run():
        before = asyncio.ensure_future(server.generate(sequence, dict(params), request_id="before"))
        assert await asyncio.to_thread(started.wait, 30)
        update = asyncio.ensure_future(server.update_weights(list(other.state_dict().items()), global_steps=4))
        await asyncio.sleep(0.5)
        update_waited = not update.done()
        release.set()
        before_output = await asyncio.wait_for(before, timeout=60)
        await asyncio.wait_for(update, timeout=60)
        after_output = await server.generate(sequence, dict(params), request_id="after")
        return update_waited, before_output, after_output

    update_waited, before_output, after_output = asyncio.run(run())
    assert update_waited
    torch.testing.assert_close(log_probs_of(before_output), old_reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(log_probs_of(after_output), new_reference, atol=1e-5, rtol=0)
    assert after_output.extra_fields["global_steps"] == 4
    assert (new_reference - old_reference).abs().max() > 0.1  # the two models are far apart
