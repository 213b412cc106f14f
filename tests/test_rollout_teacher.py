"""`teacher_placement: rollout`: each sample's views scored through prompt-log-prob requests as
its generation ends (workers/rollout_teacher.py) give the fields the packed actor-side prefill
gives (workers/teacher_worker.py), within 1e-5, for every view, with masked, truncated and
feedback views; a server answer that does not fit is an error naming the request."""

from __future__ import annotations

import asyncio
import contextlib
import time
import types

import pytest
import torch
from omegaconf import OmegaConf
from tensordict import NonTensorStack, TensorDict
from transformers import AutoModelForCausalLM, AutoTokenizer
from verl.utils import tensordict_utils as tu
from verl.workers.rollout.replica import TokenOutput

from verl_avsd.config import avsd_config
from verl_avsd.cpu.early_rows import FinishedRows
from verl_avsd.data_prep.contract import tests_json as make_tests  # aliased: pytest collects test*
from verl_avsd.feedback_view import feedback_for_rollouts
from verl_avsd.teacher_placement import check_rollout_placement, placement_timing
from verl_avsd.toy import TOY_MODEL_DIR
from verl_avsd.workers.rollout_teacher import PromptLogprobError, RolloutTeacherAgentLoopWorker, response_logprobs
from verl_avsd.workers.teacher_worker import AvsdActorRolloutRefWorker

PROGRAM = "```python\nprint(sum(map(int, input().split())))\n```"
WRONG_PROGRAM = "```python\nprint(7)\n```"
PUBLIC = make_tests(["2 3\n"], ["5\n"])


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(0)
    # float64: the two paths differ only by their order of float32 rounding otherwise (~2e-5 on
    # log-probs near -10), which would hide a real difference of that size
    model = AutoModelForCausalLM.from_pretrained(str(TOY_MODEL_DIR), dtype=torch.float64).eval()
    return model, AutoTokenizer.from_pretrained(str(TOY_MODEL_DIR))


class PromptLogprobServer:
    """A stand-in for the rollout server's prompt-log-prob answer (vLLM's layout): one plain
    forward pass over the whole sequence, in the model dtype, at the request's temperature. Records the
    requests and how many were in flight at once."""

    def __init__(self, model):
        self.model, self.requests, self.in_flight, self.max_in_flight = model, [], 0, 0

    async def generate(self, request_id, *, prompt_ids, sampling_params, **_):
        self.requests.append((request_id, list(prompt_ids), dict(sampling_params)))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(0)  # let the other requests of the sample start
        self.in_flight -= 1
        with torch.no_grad():
            logits = self.model(torch.tensor([prompt_ids])).logits[0].double() / sampling_params["temperature"]
        logp = torch.log_softmax(logits, -1)
        rows = [[float(logp[j, prompt_ids[j + 1]])] for j in range(len(prompt_ids) - 1)]
        return TokenOutput(
            token_ids=[0],
            extra_fields={
                "prompt_logprobs": rows + [[0.0]],
                "prompt_ids": [[t] for t in prompt_ids[1:]] + [[0]],
                "num_cached_tokens": 0,
            },
        )


def _rows(tokenizer):
    """Rows with every case: all views; `partial` missing (masked); a long `full` (truncated);
    no view at all but the feedback one; public tests and none (feedback masked)."""
    long_text = " ".join(["12 + 7 = 19"] * 40)
    views = lambda **kv: [{"name": k, "text": v} for k, v in kv.items()]  # noqa: E731
    infos = [
        {"index": 0, "views": views(full="3 + 4 = 7", partial="3 + 4", answer="7"), "public_tests": PUBLIC},
        {"index": 1, "views": views(full=long_text, answer="19"), "public_tests": PUBLIC},
        {"index": 2, "views": views(full="5 * 6 = 30", partial="5 * 6", answer="30"), "public_tests": None},
        {"index": 3, "views": [], "public_tests": PUBLIC},
    ]
    prompts = [[{"role": "user", "content": f"What is {q}?"}] for q in ("3 + 4", "12 + 7", "5 * 6", "2 + 3")]
    texts = [PROGRAM, "19 is the answer, wait 12 + 7 = 19", WRONG_PROGRAM, PROGRAM]
    responses = [torch.tensor(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    responses.append(torch.tensor([], dtype=torch.long))  # an empty response: nothing to score
    infos.append({"index": 4, "views": views(full="1 + 1 = 2"), "public_tests": None})
    prompts.append([{"role": "user", "content": "What is 1 + 1?"}])
    return prompts, infos, responses


def _cfg(views=("full", "partial", "answer", "feedback")):
    return avsd_config(
        {
            "avsd": {
                "views": list(views),
                "max_view_tokens": 40,
                "share_prefix_min_tokens": 4,
                "token_budget": 512,
                "teacher": "current",
            }
        }
    )


def _packed(model, tokenizer, prompts, infos, responses, feedbacks, cfg, temperature):
    """The actor placement: the packed worker method itself, on a plain module."""
    engine = types.SimpleNamespace(module=model, eval_mode=contextlib.nullcontext, disable_adapter=contextlib.nullcontext)
    worker = types.SimpleNamespace(
        actor=types.SimpleNamespace(model_config=types.SimpleNamespace(tokenizer=tokenizer)),
        ref=None,
        _teacher_training_worker=lambda teacher: types.SimpleNamespace(engine=engine),
    )
    data = TensorDict({"responses": torch.nested.as_nested_tensor(responses, layout=torch.jagged)}, batch_size=len(responses))
    data["extra_info"] = NonTensorStack(*infos)
    data["raw_prompt"] = NonTensorStack(*prompts)
    data["avsd_feedback"] = NonTensorStack(*feedbacks)
    tu.assign_non_tensor(data, avsd_config=cfg.to_dict(), avsd_chat_template_kwargs={}, temperature=temperature)
    return AvsdActorRolloutRefWorker.compute_view_log_probs.__wrapped__(worker, data)  # without verl's dispatch


def _rollout(server, tokenizer, prompts, infos, responses, cfg, temperature):
    """The rollout placement: each sample through the agent-loop worker's hook, as verl calls it
    when the sample's generation ends (the feedback program runs there, in the sandbox)."""
    worker = object.__new__(RolloutTeacherAgentLoopWorker)  # no Ray actor: the hook's attributes only
    worker.distillation_enabled = False  # verl's own distillation teacher (the base hook) is off
    worker.avsd, worker.tokenizer, worker.chat_kwargs, worker.teacher_temperature = cfg, tokenizer, {}, temperature
    worker.llm_client = server

    async def all_samples():
        results = []
        for b, (prompt, info, response) in enumerate(zip(prompts, infos, responses)):
            sample = {"raw_prompt": prompt, "extra_info": info, "uid": f"uid{b}"}  # what verl passes as sample_kwargs
            await worker._compute_teacher_logprobs(None, [1, 2], response.tolist(), False, sample)
            results.append(sample)
        return results

    return asyncio.run(all_samples())


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_placement_equals_packed_path(model_and_tokenizer, temperature):
    model, tokenizer = model_and_tokenizer
    prompts, infos, responses = _rows(tokenizer)
    cfg = _cfg()
    # the feedback view: the sandbox runs each program first (as both placements do)
    texts = [tokenizer.decode(r.tolist(), skip_special_tokens=True) for r in responses]
    feedbacks, feedback_stats = feedback_for_rollouts(texts, infos, cfg)
    assert feedbacks[0] and feedbacks[2] == "" and feedbacks[1] == ""  # a passing program; no tests; no program

    packed = _packed(model, tokenizer, prompts, infos, responses, feedbacks, cfg, temperature)
    server = PromptLogprobServer(model)
    rollout = _rollout(server, tokenizer, prompts, infos, responses, cfg, temperature)
    assert [fields["avsd_feedback"] for fields in rollout] == feedbacks  # the worker's sandbox run = the trainer's
    for name, rate in feedback_stats.items():  # the trainer logs the batch's rates as the samples' means
        assert sum(fields["avsd_feedback_metrics"][name] for fields in rollout) / len(rollout) == pytest.approx(rate), name
    assert all(fields["avsd_teacher_start_s"] <= fields["avsd_teacher_end_s"] for fields in rollout)

    mask = packed["avsd_view_mask"]  # [B, M]
    assert mask.tolist() == [
        [True, True, True, True],
        [True, False, True, False],  # partial missing, no program: masked
        [True, True, True, False],  # no public tests: no feedback view
        [False, False, False, True],  # only the feedback view
        [True, False, False, False],
    ]
    assert bool(packed["avsd_view_truncated"][1, 0])  # the long full view was cut
    for b, fields in enumerate(rollout):
        assert torch.equal(fields["avsd_view_mask"], mask[b])
        assert torch.equal(fields["avsd_view_truncated"], packed["avsd_view_truncated"][b])
        assert torch.equal(fields["avsd_view_tokens"], packed["avsd_view_tokens"][b])
        expected = packed["avsd_view_logq"][b]  # [T_b, M]
        assert fields["avsd_view_logq"].shape == expected.shape and fields["avsd_view_logq"].dtype == torch.float32
        assert torch.allclose(fields["avsd_view_logq"], expected, atol=1e-5, rtol=0), (
            b,
            (fields["avsd_view_logq"] - expected).abs().max(),
        )
        assert torch.isfinite(fields["avsd_view_logq"]).all()
        assert (fields["avsd_view_logq"][:, ~mask[b]] == 0).all()  # masked views stay 0, as packed
    # one request per unmasked view of each non-empty response, one sticky id per sample, all in flight together
    assert len(server.requests) == int(mask[:4].sum())
    assert server.max_in_flight == 4
    assert {r[0] for r in server.requests} == {f"avsd_teacher_uid{b}" for b in range(4)}
    assert all(
        r[2] == {"max_tokens": 1, "temperature": temperature, "prompt_logprobs": 0, "detokenize": False} for r in server.requests
    )


def test_non_finite_teacher_logprobs_pass_through_as_in_the_packed_path():
    seq = [5, 6, 7, 8]
    out = TokenOutput(
        token_ids=[0],
        extra_fields={"prompt_logprobs": [[-1.0], [float("-inf")], [float("nan")], [0.0]], "prompt_ids": [[6], [7], [8], [0]]},
    )
    lp = response_logprobs(out, seq, 2, "r")
    assert lp[0] == float("-inf") and torch.isnan(lp[1])


@pytest.mark.parametrize(
    "extra, match",
    [
        ({}, "without prompt_logprobs"),
        ({"prompt_logprobs": [[-1.0]] * 3, "prompt_ids": [[6]] * 3}, "3 prompt log-probs and 3 ids for a sequence of 4"),
        ({"prompt_logprobs": [[-1.0]] * 4, "prompt_ids": [[6], [7], [9], [0]]}, "scored token 9 at response position 1, not 8"),
        ({"prompt_logprobs": [[-1.0], [None], [-1.0], [0.0]], "prompt_ids": [[6], [7], [8], [0]]}, "no log-prob"),
    ],
)
def test_a_server_answer_that_does_not_fit_names_the_request(extra, match):
    with pytest.raises(PromptLogprobError, match=match):
        response_logprobs(TokenOutput(token_ids=[0], extra_fields=extra), [5, 6, 7, 8], 2, "request u7 view 1")


def _run_config(**rollout):
    return OmegaConf.create({"actor_rollout_ref": {"rollout": {"name": "hf", "temperature": 1.0, "agent": {}, **rollout}}})


@pytest.mark.parametrize(
    "avsd, rollout, match",
    [
        ({"teacher": "current", "views": ["full", "sibling"]}, {}, "has 'sibling'"),
        (
            {"teacher": "current"},
            {"name": "vllm", "temperature": 0.7},
            "rollout.name=vllm needs actor_rollout_ref.rollout.temperature=1",
        ),
        ({"teacher": "current"}, {"agent": {"agent_loop_manager_class": "my.Manager"}}, "agent_loop_manager_class=my.Manager"),
    ],
)
def test_what_rollout_placement_cannot_do_is_refused_naming_the_keys(avsd, rollout, match):
    with pytest.raises(ValueError, match=match) as error:
        check_rollout_placement(_run_config(**rollout), avsd_config({"avsd": avsd}))
    assert "algorithm.avsd.teacher_placement" in str(error.value)


def test_vllm_at_temperature_one_and_hf_at_any_temperature_are_fine():
    check_rollout_placement(_run_config(name="vllm"), avsd_config({"avsd": {"teacher": "current"}}))
    check_rollout_placement(_run_config(temperature=0.6), avsd_config({"avsd": {"teacher": "current"}}))


def test_overlap_metrics_against_a_hand_timeline():
    # three samples: generation ends at 1, 2, 4 s; teacher work [1, 2], [2, 3.5], [4, 5]
    gen_end = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    start = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    end = torch.tensor([2.0, 3.5, 5.0], dtype=torch.float64)
    m = placement_timing(gen_end, start, end)
    assert m["avsd/teacher_scoring_s"] == pytest.approx(3.5)
    assert m["avsd/teacher_hidden_fraction"] == pytest.approx(2.5 / 3.5)  # all but the last sample's second
    assert m["avsd/teacher_blocking_s"] == pytest.approx(1.0)
    # a teacher that straddles the last generation's end counts its part before it as hidden
    m = placement_timing(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 3.0]), torch.tensor([5.0, 3.5]))
    assert m["avsd/teacher_hidden_fraction"] == pytest.approx(2.0 / 4.5) and m["avsd/teacher_blocking_s"] == pytest.approx(2.0)
    # seconds scored while each sample still generated (teacher_stream_tokens) are all hidden
    m = placement_timing(gen_end, start, end, torch.tensor([0.5, 0.0, 2.0], dtype=torch.float64))
    assert m["avsd/teacher_scoring_s"] == pytest.approx(6.0) and m["avsd/teacher_streamed_s"] == pytest.approx(2.5)
    assert m["avsd/teacher_hidden_fraction"] == pytest.approx(5.0 / 6.0) and m["avsd/teacher_blocking_s"] == pytest.approx(1.0)


def test_step_overhead_summary_compares_placements(monkeypatch):
    """bench/step_overhead.py: ratios against OPSD under the same placement, against GRPO, and
    rollout against actor placement (step and blocking teacher time, target 1/4)."""
    import importlib
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    step_overhead = importlib.import_module("step_overhead")
    warm = {"timing_s/step": 99.0, "timing_s/teacher_views": 9.0}
    run = lambda step, teacher, blocking=None, hidden=None: {  # noqa: E731
        0: warm,
        1: {"timing_s/step": step, "timing_s/teacher_views": teacher,
            **({"avsd/teacher_blocking_s": blocking, "avsd/teacher_hidden_fraction": hidden} if blocking is not None else {})},
    }  # fmt: skip
    summary = step_overhead.summarize(
        {
            "avsd": run(3.0, 0.8, 0.8, 0.0),
            "opsd": run(2.5, 0.3, 0.3, 0.0),
            "avsd@rollout": run(2.6, 0.1, 0.1, 0.9),
            "opsd@rollout": run(2.4, 0.1, 0.1, 0.8),
            "grpo": {0: warm, 1: {"timing_s/step": 2.0}},
        },
        warmup_steps=1,
    )
    assert summary["ratios"]["avsd/opsd"]["step"] == pytest.approx(1.2)
    assert summary["ratios"]["avsd@rollout/opsd@rollout"]["step"] == pytest.approx(2.6 / 2.4)
    assert summary["ratios"]["grpo/opsd"]["step"] == pytest.approx(0.8)
    assert summary["grpo_ratios"]["avsd@rollout/grpo"] == pytest.approx(1.3)
    assert summary["placements"]["avsd@rollout/avsd"] == pytest.approx(
        {"step": 2.6 / 3.0, "teacher_blocking": 0.125, "blocking_within_target": True}
    )
    assert summary["placements"]["opsd@rollout/opsd"]["blocking_within_target"] is False  # 0.1 / 0.3 > 1/4
    assert summary["methods"]["avsd@rollout"]["avsd/teacher_hidden_fraction"] == 0.9
    line = step_overhead.markdown(
        {"summary": summary, "config": {"model_kind": "x", "prompts_per_step": 4, "warmup_steps": 1, "steps": 2}}
    )
    assert "avsd@rollout/avsd step 0.87x, blocking teacher 0.12x (90% of teacher time hidden)" in line
    assert "avsd@rollout/grpo step 1.30x" in line


def test_trainer_refuses_before_any_ray_work_and_otherwise_points_verl_at_the_scoring_manager():
    from verl_avsd.teacher_placement import MANAGER_FQN, use_rollout_teacher
    from verl_avsd.trainer import AvsdTrainer

    config = OmegaConf.create({
        "algorithm": {"adv_estimator": "avsd", "avsd": {"teacher_placement": "rollout", "teacher": "current"}},
        "actor_rollout_ref": {"rollout": {"name": "vllm", "temperature": 0.7, "n": 1, "agent": {"agent_loop_manager_class": None}}},
    })  # fmt: skip
    with pytest.raises(ValueError, match="teacher_placement=rollout with actor_rollout_ref.rollout.name=vllm needs"):
        AvsdTrainer(config)
    OmegaConf.set_struct(config, True)  # as verl's resolved config is
    use_rollout_teacher(config)
    assert config.actor_rollout_ref.rollout.agent.agent_loop_manager_class == MANAGER_FQN
    from verl.utils.import_utils import load_class_from_fqn  # what verl's TaskRunnerV1 does with the key

    assert load_class_from_fqn(MANAGER_FQN, "AgentLoopManager").__name__ == "RolloutTeacherAgentLoopManager"


def test_demo_flag_selects_the_placement_and_the_current_teacher(capsys):
    from verl_avsd.demo import parse_args
    from verl_avsd.toy_run import ToyRun

    assert parse_args([]).teacher_placement == "actor"
    args = parse_args(["--teacher-placement", "rollout"])
    run = ToyRun(model_dir="m", train_file="t", val_file="v", run_dir="r", teacher_placement=args.teacher_placement)
    overrides = run.overrides()
    assert "+algorithm.avsd.teacher_placement=rollout" in overrides and "+algorithm.avsd.teacher=current" in overrides
    assert not any("teacher_placement" in o for o in ToyRun(model_dir="m", train_file="t", val_file="v", run_dir="r").overrides())
    grpo = ToyRun(model_dir="m", train_file="t", val_file="v", run_dir="r", estimator="grpo", teacher_placement="rollout")
    assert not any("algorithm.avsd.teacher" in o for o in grpo.overrides())  # no teacher, nothing to place
    with pytest.raises(SystemExit):
        parse_args(["--teacher-placement", "gpu"])
    assert "invalid choice: 'gpu'" in capsys.readouterr().err


# ---- views followed while the sample generates (teacher_stream_tokens, the hf server) ----


class _SlowRows(FinishedRows):
    """FinishedRows that takes 50 ms a step, so that each streaming round finishes before the
    next tokens are published (the test then knows what the final request has left to run)."""

    def __call__(self, input_ids, scores, **kwargs):
        time.sleep(0.05)
        return super().__call__(input_ids, scores, **kwargs)


@pytest.mark.parametrize("temperature, with_feedback", [(1.0, True), (0.7, True), (1.0, False)])
def test_views_followed_while_generating_equal_the_packed_path(
    model_and_tokenizer, monkeypatch, tmp_path, temperature, with_feedback
):
    """The real hf server generates the responses; the worker's generate request carries the
    views (FollowingClient), the server scores them every 4 tokens and with the response; the
    fields equal the packed path's on those responses within 1e-5, and each followed view's final
    request ran at most its last 4 tokens (the rest came from the streaming rounds' cache)."""
    from hf_server_setup import hf_configs

    from verl_avsd.cpu import hf_rollout
    from verl_avsd.workers.rollout_teacher import _FOLLOW, FollowingClient, generation_end

    model, tokenizer = model_and_tokenizer
    monkeypatch.setattr(hf_rollout, "FinishedRows", _SlowRows)
    rollout_config, model_config = hf_configs(TOY_MODEL_DIR, response_length=20, prompt_length=64)
    server = hf_rollout.HFRolloutServer(rollout_config, model_config, replica_rank=0)
    server.model = model  # the float64 model: the two paths then differ by far less than 1e-5
    prompts, infos, _ = _rows(tokenizer)
    cfg = _cfg() if with_feedback else _cfg(("full", "partial", "answer"))
    every = 4
    if not with_feedback:  # the views need nothing from the response: the end reuses the contexts built before
        from verl_avsd.workers import rollout_teacher

        built = rollout_teacher.sample_contexts
        calls = []
        monkeypatch.setattr(rollout_teacher, "sample_contexts", lambda *a: calls.append(1) or built(*a))

    class Direct:  # verl's LLMServerClient, in process: keywords pass through to the server
        async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
            return await server.generate(prompt_ids, sampling_params, request_id, **kwargs)

    worker = object.__new__(RolloutTeacherAgentLoopWorker)
    worker.distillation_enabled = False
    worker.avsd, worker.tokenizer, worker.chat_kwargs, worker.teacher_temperature = cfg, tokenizer, {}, temperature
    worker.follow_every = every
    worker.llm_client = FollowingClient(Direct())
    finals = []  # (sequence length, cached tokens) of each followed view's answer
    real_score = server._score

    async def recording_score(prompt_ids, t):
        answer = await real_score(prompt_ids, t)
        finals.append((len(prompt_ids), answer["num_cached_tokens"]))
        return answer

    server._score = recording_score

    async def one(b):
        sample = {"raw_prompt": prompts[b], "extra_info": infos[b], "uid": f"uid{b}"}
        _FOLLOW.set(worker._follow_request(sample))  # as _run_agent_loop, in this sample's task
        text = tokenizer.apply_chat_template(prompts[b], add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer.encode(text, add_special_tokens=False)
        params = {"temperature": temperature, "top_p": 1.0, "top_k": -1, "logprobs": False}
        output = await worker.llm_client.generate(request_id=f"g{b}", prompt_ids=prompt_ids, sampling_params=params)
        followed = output.extra_fields.get("avsd_follow")
        sample["avsd_gen_end_s"] = torch.tensor(generation_end(output.extra_fields), dtype=torch.float64)
        await worker._compute_teacher_logprobs(output, prompt_ids, list(output.token_ids), False, sample)
        assert "avsd_follow" not in output.extra_fields  # never written to the TransferQueue row
        return sample, list(output.token_ids), followed

    async def all_samples():
        return await asyncio.gather(*(one(b) for b in range(len(prompts))))

    results = asyncio.run(all_samples())
    responses = [torch.tensor(tokens, dtype=torch.long) for _, tokens, _ in results]
    texts = [tokenizer.decode(r.tolist(), skip_special_tokens=True) for r in responses]
    feedbacks, _ = feedback_for_rollouts(texts, infos, cfg)
    packed = _packed(model, tokenizer, prompts, infos, responses, feedbacks, cfg, temperature)
    followed_views = 0
    for b, (fields, tokens, followed) in enumerate(results):
        assert torch.equal(fields["avsd_view_mask"], packed["avsd_view_mask"][b])
        assert torch.equal(fields["avsd_view_tokens"], packed["avsd_view_tokens"][b])
        expected = packed["avsd_view_logq"][b]  # [T_b, M]
        assert torch.allclose(fields["avsd_view_logq"], expected, atol=1e-5, rtol=0), (
            b,
            (fields["avsd_view_logq"] - expected).abs().max(),
        )
        if followed is None or not tokens:
            continue
        assert followed["tokens"] == tokens
        assert 3 not in followed["views"]  # the feedback view needs the response first: never followed
        for m, answer in followed["views"].items():
            followed_views += 1
            sequence = len(followed["contexts"][m]) + len(tokens)
            assert sequence - 1 - answer["num_cached_tokens"] <= every, (b, m, answer["num_cached_tokens"], sequence)
        if len(tokens) > every:
            assert float(fields["avsd_teacher_streamed_s"]) > 0
    assert followed_views >= 5  # rows 0, 2, 4 have 3, 3 and 1 views known before generation
    assert len(finals) > followed_views  # the streaming rounds ran requests of their own
    if not with_feedback:
        assert len(calls) == len(prompts)  # once per sample, before generation


def test_a_follow_that_fails_leaves_the_views_to_the_end_and_a_bad_keyword_names_the_request():
    from verl_avsd.cpu.view_follower import Progress, follow_request, follow_views

    async def failing_score(prompt_ids, temperature):
        raise ValueError("sequence too long")

    async def run():
        result = asyncio.get_running_loop().create_future()
        progress = Progress(every=2)
        task = asyncio.create_task(
            follow_views(failing_score, result, progress, {"contexts": [[5, 6]], "temperature": 1.0, "every": 2})
        )
        progress.update([7, 8])
        await asyncio.sleep(0.01)
        result.set_result(([7, 8, 9], []))
        return await task

    assert asyncio.run(run()) is None  # the worker then requests every view itself (and raises there)
    with pytest.raises(ValueError, match="request g7: avsd_follow must be"):
        follow_request({"contexts": [[]], "temperature": 1.0, "every": 2}, "g7")  # an empty context
    with pytest.raises(ValueError, match="request g7: avsd_follow must be"):
        follow_request({"contexts": [[1]], "temperature": 1.0, "every": 0}, "g7")
