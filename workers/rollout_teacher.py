"""The teacher on the rollout side (`algorithm.avsd.teacher_placement: rollout`).

With `actor` placement (the default) the teacher runs after generation: every rollout of the
batch goes through the packed M-view prefill on the actor workers (teacher_worker.py) while
nothing else runs. Generation has a long tail, though: most samples finish early and the
rollout servers sit idle while the last ones decode. With `rollout` placement each sample is
scored the moment its generation ends, inside verl's agent-loop worker (the hook verl 0.9.1
calls for its own distillation teacher, `_compute_teacher_logprobs`), by the rollout server
itself, while the other samples are still generating:

    sample b finishes -> [feedback view: its program on the public tests, in the sandbox]
        -> its M teacher contexts (teacher_context.build_teacher_contexts: the SAME token
           sequences the packed path feeds)
        -> one prompt-log-prob request per view to the rollout server, concurrently
           (`max_tokens=1, prompt_logprobs=0` at the rollout temperature; vLLM's contract)
        -> the per-sample fields the estimator reads, under the names the packed worker writes:
               avsd_view_logq [T, M] float32, avsd_view_mask [M] bool,
               avsd_view_tokens [M] int64, avsd_view_truncated [M] bool, avsd_view_fed_tokens [] float32
           and the timestamps of the metrics (wall clock, float64 seconds):
               avsd_gen_end_s, avsd_teacher_start_s, avsd_teacher_end_s

The rollout replicas hold the current policy weights, so this is the `teacher: current`
teacher. On the `hf` server (the CPU backend) the views are even scored while the sample is
still generating (`algorithm.avsd.teacher_stream_tokens`, verl_avsd/cpu/view_follower.py): the
sample's generate request carries its view contexts, the server scores them every few tokens
into its prefix cache and answers them with the response, so at the sample's end only its last
few tokens are left; views it could not follow (the feedback view, which needs the response
first) are requested here as above. The views of one prompt go to one server (one sticky request id per prompt), so its
shared prefix is cached once (vLLM's prefix caching; the `hf` server's own on the CPU).
The trainer (`AvsdTrainer._compute_view_log_probs`) then only reads and checks the fields.

What rollout placement refuses, and the trainer side (reading, metrics): verl_avsd/teacher_placement.py.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from types import SimpleNamespace
from uuid import uuid4

import ray
import torch
from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopManagerTQ, AgentLoopWorkerTQ

from verl_avsd.cpu.view_follower import FOLLOW_KWARG
from verl_avsd.teacher_placement import FEEDBACK_METRICS_FIELD
from verl_avsd.workers.teacher_context import (
    FEEDBACK_VIEW,
    TeacherContexts,
    build_teacher_contexts,
    views_of_row,
    with_rollout_view,
)


class PromptLogprobError(RuntimeError):
    """The server's prompt log-probs do not fit the request (wrong length, other tokens, None)."""


# ---- the run's views ----


def scored_views_config(config):
    """algorithm.avsd as the teacher step uses it: OPSD scores only its one view (as the trainer)."""
    from verl_avsd.config import avsd_config, scored_views

    return scored_views(avsd_config(config.algorithm), str(config.algorithm.adv_estimator))


# ---- one sample: contexts, requests, fields ----


def prompt_logprob_params(temperature: float) -> dict:
    """A request for the log-prob of every given token (vLLM's prompt_logprobs=0 layout)."""
    return {"max_tokens": 1, "temperature": float(temperature), "prompt_logprobs": 0, "detokenize": False}


def response_logprobs(output, sequence: list[int], context_len: int, where: str) -> torch.Tensor:
    """[R] float32: log p(sequence[context_len + t] | sequence[:context_len + t]) from a server's
    prompt log-probs, where entry j scores sequence[j + 1] and the last entry is a dummy."""
    extra = getattr(output, "extra_fields", None) or {}
    logprobs, ids = extra.get("prompt_logprobs"), extra.get("prompt_ids")
    if logprobs is None or ids is None:
        raise PromptLogprobError(f"{where}: the rollout server answered without prompt_logprobs/prompt_ids")
    if len(logprobs) != len(sequence) or len(ids) != len(sequence):
        raise PromptLogprobError(
            f"{where}: {len(logprobs)} prompt log-probs and {len(ids)} ids for a sequence of {len(sequence)} tokens"
        )
    rows = range(context_len - 1, len(sequence) - 1)  # the rows that score response tokens
    got = [ids[j][0] for j in rows]
    if got != sequence[context_len:]:
        first = next(t for t, (a, b) in enumerate(zip(got, sequence[context_len:])) if a != b)
        raise PromptLogprobError(
            f"{where}: the server scored token {got[first]} at response position {first}, not {sequence[context_len + first]}"
        )
    values = [logprobs[j][0] for j in rows]
    if any(v is None for v in values):
        raise PromptLogprobError(f"{where}: the server gave no log-prob for some response tokens")
    return torch.tensor(values, dtype=torch.float32)


def sample_contexts(tokenizer, raw_prompt, extra_info, avsd, chat_kwargs: dict) -> TeacherContexts:
    """The M teacher contexts of one rollout, as `build_teacher_contexts` builds them for a batch.
    A row with none of the views is all masked here (the packed path also only masks it; the
    trainer raises when no row of the batch has a view, as the packed path does)."""
    names = list(avsd.views)
    if all(text is None for text in views_of_row(extra_info, names, 0)):  # also names a malformed row
        M = len(names)
        return TeacherContexts([[None] * M], torch.zeros(1, M, dtype=torch.bool), torch.zeros(1, M, dtype=torch.bool))
    return build_teacher_contexts(tokenizer, [list(raw_prompt)], [extra_info], avsd, chat_kwargs)


async def score_sample_views(
    generate,
    contexts: TeacherContexts,
    response_ids: list[int],
    *,
    temperature: float,
    request_id: str,
    answered: dict | None = None,
) -> dict:
    """The per-sample teacher fields of one rollout (B=1 contexts): one prompt-log-prob request per
    unmasked view, all at once. `generate` is `LLMServerClient.generate` (or a stand-in).
    `answered` {m: extra_fields}: views the server already scored, exactly these sequences
    (followed while generating); their answers are read and checked the same way."""
    M = contexts.view_mask.shape[1]
    R = len(response_ids)
    logq = torch.zeros(R, M, dtype=torch.float32)  # masked views stay 0, as in the packed path
    tokens = torch.zeros(M, dtype=torch.int64)
    views = [m for m in range(M) if contexts.view_mask[0, m]]
    sequences = {m: contexts.context_ids[0][m].tolist() + list(response_ids) for m in views}
    for m in views:
        tokens[m] = len(sequences[m])
    fed = 0.0
    if R:  # an empty response has nothing to score (the packed path runs nothing for it either)
        answered = answered or {}
        asked = [m for m in views if m not in answered]
        params = prompt_logprob_params(temperature)
        outputs = await asyncio.gather(
            *(generate(request_id=request_id, prompt_ids=sequences[m], sampling_params=dict(params)) for m in asked)
        )
        outputs = dict(zip(asked, outputs)) | {m: SimpleNamespace(extra_fields=answered[m]) for m in answered}
        for m in views:
            context_len = len(sequences[m]) - R
            logq[:, m] = response_logprobs(outputs[m], sequences[m], context_len, f"request {request_id} view {m}")
            if m in asked:  # (the follower counts what it ran for its views itself)
                cached = int((outputs[m].extra_fields or {}).get("num_cached_tokens", 0) or 0)
                fed += max(len(sequences[m]) - cached, 0)  # what the server ran, its cached prefix aside
    return {
        "avsd_view_logq": logq,  # [T, M]
        "avsd_view_mask": contexts.view_mask[0].clone(),  # [M]
        "avsd_view_tokens": tokens,  # [M]
        "avsd_view_truncated": contexts.truncated[0].clone(),  # [M]
        "avsd_view_fed_tokens": torch.tensor(fed, dtype=torch.float32),  # []
    }


# ---- following the views while the sample generates (the hf server) ----

# this sample's follow request ("follow"), set in the sample's own task (`_run_agent_loop`) and
# taken by the first generate call it makes (single-turn: its only one), and the contexts it was
# built from ("contexts": when the views need nothing from the response, the scoring at the end
# reuses them rather than render M chat templates again while other samples wait)
_FOLLOW: contextvars.ContextVar[dict | None] = contextvars.ContextVar("avsd_follow", default=None)
RECEIVED_KEY = "avsd_follow_received_s"  # extra_fields: when the followed answer came back (wall clock)


class FollowingClient:
    """verl's LLMServerClient, except that the generate request of a sample whose views are
    followed carries them (`FOLLOW_KWARG`, passed through to the server by verl's client)."""

    def __init__(self, client) -> None:
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    async def generate(self, request_id, **kwargs):
        holder = _FOLLOW.get()
        follow = holder.pop("follow", None) if holder is not None else None
        if follow is None:
            return await self._client.generate(request_id, **kwargs)
        output = await self._client.generate(request_id, **kwargs, **{FOLLOW_KWARG: follow})
        output.extra_fields[RECEIVED_KEY] = time.time()
        return output


def follow_payload(contexts: TeacherContexts, temperature: float, every: int) -> dict | None:
    """The `avsd_follow` keyword for one sample's B=1 contexts (None: no view to follow)."""
    ids = [
        c.tolist() if c is not None and bool(mask) else None for c, mask in zip(contexts.context_ids[0], contexts.view_mask[0])
    ]
    if all(c is None for c in ids):
        return None
    return {"contexts": ids, "temperature": float(temperature), "every": int(every)}


def followed_answers(followed: dict | None, contexts: TeacherContexts, response_ids: list[int]) -> dict:
    """{m: extra_fields} of the views the server scored with exactly this sample's sequences."""
    if not followed or list(followed.get("tokens", ())) != list(response_ids):
        return {}  # e.g. the agent loop cut the response: score it here
    answers = {}
    for m, answer in followed["views"].items():
        context = contexts.context_ids[0][int(m)]
        if contexts.view_mask[0, int(m)] and context is not None and context.tolist() == followed["contexts"][int(m)]:
            answers[int(m)] = answer
    return answers


def generation_end(extra_fields: dict) -> float:
    """When the sample's generation ended (wall clock, this process): now, or for a followed
    sample, whose answer came only after its views were scored, that much earlier."""
    followed = extra_fields.get(FOLLOW_KWARG)
    if followed:
        return float(extra_fields[RECEIVED_KEY]) - float(followed["after_end_s"])
    return time.time()


# ---- verl's agent-loop worker and manager, with the teacher hook filled in ----


class RolloutTeacherAgentLoopWorker(AgentLoopWorkerTQ.__ray_actor_class__):  # verl's class under its Ray wrapper
    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        from omegaconf import OmegaConf

        self.avsd = scored_views_config(config)
        chat_kwargs = config.data.get("apply_chat_template_kwargs", None) or {}
        self.chat_kwargs = dict(
            OmegaConf.to_container(chat_kwargs, resolve=True) if OmegaConf.is_config(chat_kwargs) else chat_kwargs
        )
        self.teacher_temperature = float(config.actor_rollout_ref.rollout.temperature)
        # follow the views while generating: only the hf server shows a request's tokens as they come
        rollout_name = str(config.actor_rollout_ref.rollout.name)
        self.follow_every = self.avsd.teacher_stream_tokens if rollout_name == "hf" and self.avsd.teacher == "current" else 0
        if self.follow_every:
            self.llm_client = FollowingClient(self.llm_client)  # the agent loops' server_manager

    async def _run_agent_loop(self, sampling_params, trajectory, *, agent_name, trace=True, **kwargs):
        if self.follow_every and not trajectory["validate"]:
            _FOLLOW.set(self._follow_request(kwargs))  # this sample's task only
        return await super()._run_agent_loop(sampling_params, trajectory, agent_name=agent_name, trace=trace, **kwargs)

    def _follow_request(self, sample) -> dict:
        """{"follow": payload, "contexts": ...} for the views known before generation (all but the
        feedback view); {} for a malformed row (the scoring at the end raises its error)."""
        try:
            extra_info = sample.get("extra_info")
            if FEEDBACK_VIEW in self.avsd.views:
                extra_info = with_rollout_view(extra_info, FEEDBACK_VIEW, None)
            contexts = sample_contexts(self.tokenizer, sample["raw_prompt"], extra_info, self.avsd, self.chat_kwargs)
        except Exception:  # noqa: BLE001 - reported where the sample is scored
            return {}
        return {"follow": follow_payload(contexts, self.teacher_temperature, self.follow_every), "contexts": contexts}

    async def _agent_loop_postprocess(self, output, validate, **kwargs):
        if not validate:
            kwargs["avsd_gen_end_s"] = torch.tensor(generation_end(output.extra_fields), dtype=torch.float64)
        return await super()._agent_loop_postprocess(output, validate, **kwargs)

    async def _compute_teacher_logprobs(self, output, prompt_ids, response_ids, validate, sample_kwargs=None) -> None:
        await super()._compute_teacher_logprobs(output, prompt_ids, response_ids, validate, sample_kwargs)
        extra_fields = output.extra_fields if output is not None else {}
        followed = extra_fields.pop(FOLLOW_KWARG, None)  # not for the TransferQueue row
        received = extra_fields.pop(RECEIVED_KEY, None)
        if validate or sample_kwargs is None:
            return
        began = time.time()
        extra_info = sample_kwargs.get("extra_info")
        if FEEDBACK_VIEW in self.avsd.views:
            text, metrics = await asyncio.to_thread(self._feedback, response_ids, extra_info)  # the sandbox blocks
            extra_info = with_rollout_view(extra_info, FEEDBACK_VIEW, text)
            sample_kwargs.update(avsd_feedback=text, **{FEEDBACK_METRICS_FIELD: metrics})
        holder = _FOLLOW.get() or {}
        if FEEDBACK_VIEW not in self.avsd.views and holder.get("contexts") is not None:
            contexts = holder["contexts"]  # the same call on the same row, before generation
        else:
            contexts = sample_contexts(self.tokenizer, sample_kwargs["raw_prompt"], extra_info, self.avsd, self.chat_kwargs)
        uid = sample_kwargs.get("uid") or uuid4().hex
        answered = followed_answers(followed, contexts, list(response_ids))
        fields = await score_sample_views(
            self._teacher_client().generate,
            contexts,
            list(response_ids),
            temperature=self.teacher_temperature,
            request_id=f"avsd_teacher_{uid}",
            answered=answered,
        )
        if answered:  # what the follower ran for them, its streaming rounds included
            fields["avsd_view_fed_tokens"] += float(followed["fed_tokens"])
        start, end = began, time.time()
        if followed:
            # its views were scored on the server from the row's end until the answer came back;
            # the reward ran since (not teacher work), then this call: the teacher's time is the
            # server's part followed by this call's, as if this call had begun on receipt
            start, end = float(sample_kwargs["avsd_gen_end_s"]), float(received) + (end - began)
        # verl writes every key of the sample's kwargs into its TransferQueue row (field.update(kwargs))
        sample_kwargs.update(
            fields,
            avsd_teacher_start_s=torch.tensor(start, dtype=torch.float64),
            avsd_teacher_end_s=torch.tensor(end, dtype=torch.float64),
            # scoring that ran while this sample still generated (all of it hidden)
            avsd_teacher_streamed_s=torch.tensor(float(followed["streamed_s"]) if answered else 0.0, dtype=torch.float64),
        )

    def _teacher_client(self):
        """The client whose servers score the views: the rollout replicas (`teacher: current`), or
        the reference teacher's own replicas (`teacher: ref`, workers/ref_teacher_pool.py)."""
        if self.avsd.teacher == "ref":
            from verl_avsd.workers.ref_teacher_pool import ref_teacher_client

            return ref_teacher_client(self.teacher_client)
        return self.llm_client

    def _feedback(self, response_ids, extra_info) -> tuple[str, dict]:
        """This rollout's feedback view text ("" = none) and its feedback metrics (one sample: the
        batch's `feedback/*` rates are their means), built as the trainer builds them."""
        from verl_avsd.feedback_view import feedback_for_rollouts

        text = self.tokenizer.decode(list(response_ids), skip_special_tokens=True)  # as the trainer decodes
        (view,), metrics = feedback_for_rollouts([text], [extra_info], self.avsd)
        return view, metrics


class RolloutTeacherAgentLoopManager(AgentLoopManagerTQ):
    """verl's TransferQueue agent-loop manager with `RolloutTeacherAgentLoopWorker` workers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.agent_loop_workers_class = ray.remote(RolloutTeacherAgentLoopWorker)
