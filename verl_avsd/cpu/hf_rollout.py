"""An `hf` rollout backend for verl 0.9.1: generation with transformers `generate`, no vLLM.

verl's V1 trainer generates through "rollout replicas" (verl/workers/rollout/replica.py): each
replica launches a server Ray actor, the agent loop sends it one request per sample
(`server.generate(prompt_ids, sampling_params, request_id, ...) -> TokenOutput`), and after
each actor update the trainer worker pushes the new weights to it. vLLM, SGLang and TRT-LLM
are the built-in backends; none runs on a CPU-only machine. This module adds `hf`
(select it with `actor_rollout_ref.rollout.name=hf`), built from three small pieces that
mirror vLLM's (verl/workers/rollout/vllm_rollout/):

- `HFRolloutServer`: the Ray actor holding a `transformers` causal LM. Requests that arrive
  while a batch is generating are queued and run together as the next batch (left-padded,
  one `generate` call), so the n samples of a group cost one pass, not n. Each request is
  answered as soon as its own row ends (EOS or max_tokens), while `generate` runs on for the
  others (early_rows.py). Prompt-scoring requests have their own queue and batches, which run
  beside a generation batch (both only read the weights); loading weights waits for both.
- `HFReplica`: the `RolloutReplica` that launches one server per replica.
- `HFServerAdapter` (hf_adapter.py): the `BaseRollout` verl builds inside the trainer worker
  (`ActorRolloutRefWorker.init_model` -> `get_rollout_class(name, "async")`). Its
  `update_weights` receives the actor's full parameters after every update step and loads
  them into the server's model, so every rollout is sampled from the current policy.

Sampling follows vLLM's contract: temperature (0 = greedy), top_p, top_k (-1 = off),
repetition_penalty, `max_tokens` (default: `rollout.response_length`, capped by the room left
in `max_model_len`), and a per-request `seed` when verl passes one (`rollout.full_determinism`
makes verl's vLLM server seed every request with `rollout.seed + replica_rank`; this server
does the same). A seeded request is generated on its own so its tokens depend only on its seed.
With `logprobs=True` (verl asks for them when `rollout.calculate_log_probs=true`) each token's
log-probability comes back under the processed distribution (after temperature / top-k /
top-p), which is vLLM's `logprobs_mode=processed_logprobs`, verl's default; they are taken step by
step as generation runs (sampled_logprobs.py), never as a [B, T, V] tensor. A request with
`prompt_logprobs` (verl's teacher scoring) is answered like vLLM, with prefix caching, and
generates nothing (prompt_logprobs.py).

The name `hf` is registered by `verl_avsd.plugin` on every host, without importing this module:
verl imports it (and transformers' generation code) only when a run selects the `hf` rollout.

Limits: one process per replica (tensor/pipeline/data parallel size 1), text only, no LoRA
adapter sync (merged LoRA works), no partial-rollout abort (requests always run to the end).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from transformers import AutoModelForCausalLM, GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

from verl_avsd.workers.verl_worker_seam import attach_server

from .early_rows import FinishedRows, ModelLocks, eos_token_ids, resolve, response_length
from .prompt_logprobs import PromptLogProbScorer, ScoringRequest, scoring_request
from .sampled_logprobs import SampledTokenLogProbs, sampling_warpers
from .view_follower import FOLLOW_KWARG, Progress, follow_request, follow_views

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

HF_ROLLOUT_NAME = "hf"  # the name verl_avsd.plugin registers this backend under

# `actor_rollout_ref.rollout.dtype` spellings verl accepts elsewhere
_TORCH_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def server_actor_name(replica_rank: int, role: str = "", name_suffix: str = "") -> str:
    """Ray name of a replica's server actor (role: "", "reward_" or "teacher_").

    The trainer-side adapter finds the policy's server by this name.
    """
    return f"{HF_ROLLOUT_NAME}_server_{role}{replica_rank}{name_suffix}"


# --------------------------------------------------------------------------------------------
# The server: a Ray actor that owns the model and batches the requests it receives.
# --------------------------------------------------------------------------------------------


@dataclass
class _Request:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    want_logprobs: bool
    seed: Optional[int]
    result: asyncio.Future = field(repr=False)
    progress: Optional[Progress] = field(default=None, repr=False)  # set when the teacher views follow it

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one `generate` call; a seeded request never shares."""
        shared = (self.max_tokens, self.temperature, self.top_p, self.top_k, self.repetition_penalty)
        return shared + ((id(self),) if self.seed is not None else ())


def _attention_fallback(hf_config) -> dict:
    """verl's HFModelConfig asks for flash attention when the model config names no
    attn_implementation, as the configs verl builds for teacher replicas do (only a model path,
    verl/experimental/teacher_loop); without the flash-attn package (the CPU) use sdpa instead."""
    from transformers.utils import is_flash_attn_2_available

    if getattr(hf_config, "_attn_implementation", None) == "flash_attention_2" and not is_flash_attn_2_available():
        return {"attn_implementation": "sdpa"}
    return {}


class HFRolloutServer:
    """A transformers model serving verl's token-in / token-out `generate` requests."""

    def __init__(self, config: RolloutConfig, model_config: HFModelConfig, replica_rank: int):
        self.config: RolloutConfig = omega_conf_to_dataclass(config)
        self.model_config: HFModelConfig = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.replica_rank = replica_rank
        self.global_steps: Optional[int] = None  # version of the weights, set on each update

        dtype = _TORCH_DTYPES.get(str(self.config.dtype).lower())
        if dtype is None:
            raise ValueError(f"actor_rollout_ref.rollout.dtype={self.config.dtype!r} is not one of {sorted(_TORCH_DTYPES)}")
        # `hf_config` carries verl's overrides (attn_implementation, eos/pad ids from the tokenizer).
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_config.local_path,
            config=self.model_config.hf_config,
            dtype=dtype,
            trust_remote_code=self.model_config.trust_remote_code,
            **_attention_fallback(self.model_config.hf_config),
        ).eval()

        tokenizer = self.model_config.tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_token_ids = eos_token_ids(self.model_config, tokenizer)
        positions = getattr(self.model_config.hf_config, "max_position_embeddings", None)
        self.max_model_len = self.config.max_model_len or positions or (self.config.prompt_length + self.config.response_length)

        # two queues, each drained by its own batcher: scoring never waits behind a generate call
        self._pending: dict[str, list] = {"generate": [], "score": []}
        self._batchers: dict[str, Optional[asyncio.Task]] = {"generate": None, "score": None}
        self._locks = ModelLocks()  # generation and scoring overlap; weight loading excludes both
        self.scorer = PromptLogProbScorer.from_rollout_config(self.config)  # prompt_logprobs requests

    # --- generation ---------------------------------------------------------------------

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: Optional[list[Any]] = None,
        video_data: Optional[list[Any]] = None,
        audio_data: Optional[list[Any]] = None,
        mm_processor_kwargs: Optional[dict[str, Any]] = None,
        priority: int = 0,
        **kwargs: Any,
    ) -> TokenOutput:
        if image_data or video_data or audio_data:
            raise NotImplementedError(f"hf rollout is text-only; request {request_id} carries multimodal data")
        prompt_ids = [int(token) for token in prompt_ids]
        vocab_size = self.model.get_input_embeddings().num_embeddings
        request = scoring_request(prompt_ids, sampling_params, request_id, self.max_model_len, vocab_size)
        if isinstance(request, ScoringRequest):  # scored, nothing generated: verl reads extra_fields
            scored = await self._enqueue("score", request)
            return TokenOutput(
                token_ids=[],
                log_probs=[] if request.want_logprobs else None,
                stop_reason="completed",
                extra_fields={"global_steps": self.global_steps, **scored},
            )
        request = self._make_request(prompt_ids, dict(sampling_params), request_id)
        follower, extra_fields = None, {"global_steps": self.global_steps}
        if kwargs.get(FOLLOW_KWARG) is not None:  # the teacher's views, scored as this one grows
            follow = follow_request(kwargs[FOLLOW_KWARG], request_id)
            request.progress = Progress(follow["every"])
            follower = asyncio.create_task(follow_views(self._score, request.result, request.progress, follow))
        try:
            token_ids, log_probs = await self._enqueue("generate", request)
            if follower is not None:
                extra_fields[FOLLOW_KWARG] = await follower
        finally:
            if follower is not None and not follower.done():
                follower.cancel()
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs if request.want_logprobs else None,
            stop_reason="completed",  # vLLM reports both "stop" (EOS) and "length" as completed
            extra_fields=extra_fields,
        )

    async def _enqueue(self, kind: str, request):
        """Queue a request for its batcher ("generate" or "score") and wait for its answer."""
        self._pending[kind].append(request)
        if self._batchers[kind] is None or self._batchers[kind].done():
            self._batchers[kind] = asyncio.create_task(self._run_pending_batches(kind))
        return await request.result

    async def _score(self, prompt_ids: list[int], temperature: float) -> dict[str, Any]:
        """extra_fields of a prompt-log-prob request for `prompt_ids`, made here (the views followed)."""
        vocab_size = self.model.get_input_embeddings().num_embeddings
        params = {"max_tokens": 1, "temperature": temperature, "prompt_logprobs": 0}
        return await self._enqueue("score", scoring_request(prompt_ids, params, "avsd_follow", self.max_model_len, vocab_size))

    def _make_request(self, prompt_ids: list[int], params: dict[str, Any], request_id: str) -> _Request:
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise ValueError(
                f"request {request_id}: prompt of {len(prompt_ids)} tokens leaves no room to generate "
                f"within max_model_len={self.max_model_len}"
            )
        if "max_tokens" in params:
            max_tokens = params["max_tokens"]
        elif "max_new_tokens" in params:
            max_tokens = params["max_new_tokens"]
        else:  # same default as verl's vLLM server
            max_tokens = min(
                self.config.response_length,
                self.config.prompt_length + self.config.response_length - len(prompt_ids),
            )
        seed = params.get("seed")
        if seed is None and self.config.full_determinism:
            seed = self.config.seed + self.replica_rank
        top_k = params.get("top_k", -1)
        return _Request(
            prompt_ids=prompt_ids,
            max_tokens=max(1, min(int(max_tokens), room)),
            temperature=float(params.get("temperature", 1.0)),
            top_p=float(params.get("top_p", 1.0)),
            top_k=0 if top_k is None or top_k < 0 else int(top_k),  # transformers: 0 = off
            repetition_penalty=float(params.get("repetition_penalty", 1.0)),
            want_logprobs=bool(params.get("logprobs", False)),
            seed=None if seed is None else int(seed),
            result=asyncio.get_running_loop().create_future(),
        )

    async def _run_pending_batches(self, kind: str) -> None:
        """Drain one queue: each round takes every pending request that can share a batch."""
        pending = self._pending[kind]
        loop = asyncio.get_running_loop()
        while pending:
            key = pending[0].batch_key()
            batch = [request for request in pending if request.batch_key() == key]
            batch = batch[: max(1, self.config.max_num_seqs)]
            pending[:] = [request for request in pending if request not in batch]
            try:
                if kind == "score":
                    async with self._locks.scoring:
                        outputs = await asyncio.to_thread(self.scorer.score_batch, self.model, batch)
                else:

                    def on_finished(row: int, result, batch=batch) -> None:  # runs in generate's thread
                        if batch[row].progress is not None:
                            batch[row].progress.ended_s = time.time()
                        loop.call_soon_threadsafe(resolve, batch[row].result, result)

                    def on_progress(row: int, tokens: list[int], batch=batch) -> None:  # runs in generate's thread
                        loop.call_soon_threadsafe(batch[row].progress.update, tokens)

                    async with self._locks.generation:
                        outputs = await asyncio.to_thread(self._generate_batch, batch, on_finished, on_progress)
            except Exception as error:  # hand the error to every waiting caller
                for request in batch:
                    if not request.result.done():
                        request.result.set_exception(error)
                continue
            for request, output in zip(batch, outputs, strict=True):
                if not request.result.done():  # the caller may have given up (cancelled)
                    request.result.set_result(output)

    @torch.no_grad()
    def _generate_batch(self, batch: list[_Request], on_finished=None, on_progress=None) -> list[tuple[list[int], list[float]]]:
        """One `generate` call for requests with identical sampling settings.

        Returns per request the generated token ids (up to and including the first EOS)
        and their log-probabilities under the processed sampling distribution. With
        `on_finished(row, result)`, each row's same result is also passed there as soon as
        the row ends, while generate runs on for the others; with `on_progress(row, tokens)`, the
        tokens so far of each row whose request has `progress`, every `progress.every` steps.
        """
        first = batch[0]
        device = self.model.device
        # left padding, so every prompt ends at the same column and generation starts together
        width = max(len(request.prompt_ids) for request in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)  # [B, P]
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # [B, P]
        for row, request in enumerate(batch):
            input_ids[row, width - len(request.prompt_ids) :] = torch.tensor(request.prompt_ids)
            attention_mask[row, width - len(request.prompt_ids) :] = 1

        greedy = first.temperature <= 0
        # The sampling warpers go in our own processor list, followed by the recorder, so the
        # recorder sees the final processed distribution (generate would append its own
        # warpers after any custom processor). generate's are switched off explicitly: an
        # unset top_k would get transformers' global default of 50.
        warpers = [] if greedy else sampling_warpers(first.temperature, first.top_k, first.top_p)
        recorder = SampledTokenLogProbs(len(batch), first.max_tokens)
        generation_config = GenerationConfig(
            max_new_tokens=first.max_tokens,
            do_sample=not greedy,
            temperature=None if greedy else 1.0,
            top_p=None if greedy else 1.0,
            top_k=None if greedy else 0,
            repetition_penalty=first.repetition_penalty,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            return_dict_in_generate=True,
        )
        followed = {row: request.progress.every for row, request in enumerate(batch) if request.progress is not None}
        watchers = (
            []
            if on_finished is None
            else [FinishedRows(recorder, width, first.max_tokens, self.eos_token_ids, on_finished, on_progress, followed)]
        )
        if first.seed is not None:
            torch.manual_seed(first.seed)
        out = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=generation_config,
            logits_processor=LogitsProcessorList([*warpers, recorder]),
            stopping_criteria=StoppingCriteriaList(watchers),
        )
        new_tokens = out.sequences[:, width:].cpu()  # [B, T]
        token_log_probs = recorder.finish(out.sequences)  # [B, T]

        results = []
        for row in range(len(batch)):
            tokens = new_tokens[row].tolist()
            length = response_length(tokens, self.eos_token_ids)  # keeps the EOS, like vLLM
            results.append((tokens[:length], token_log_probs[row, :length].tolist()))
        return results

    # --- weights ------------------------------------------------------------------------

    async def update_weights(self, named_tensors: list[tuple[str, torch.Tensor]], global_steps: Optional[int] = None):
        """Load the actor's full parameters (HF names) into the model."""
        async with self._locks.exclusive():  # no generate or scoring batch reads half-loaded weights
            self.scorer.clear()  # cached prefixes hold the old weights' KV (cleared first: a load may fail halfway)
            await asyncio.to_thread(self._load_weights, named_tensors)
            if global_steps is not None:
                self.global_steps = global_steps

    @torch.no_grad()
    def _load_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        # state_dict names every tensor, tied ones (lm_head.weight = embed_tokens.weight) included
        targets = self.model.state_dict(keep_vars=True)
        unknown = [name for name, _ in named_tensors if name not in targets]
        if unknown:
            raise KeyError(f"hf rollout: the actor sent weights the rollout model does not have: {unknown[:5]}")
        for name, tensor in named_tensors:
            target = targets[name]
            if target.shape != tensor.shape:
                raise ValueError(f"hf rollout: weight {name} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}")
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))

    async def set_global_steps(self, global_steps: int):
        self.global_steps = global_steps

    # --- lifecycle calls verl makes on every server; nothing to do for an in-process model ----

    async def wake_up(self, tags: Optional[list[str]] = None):
        return None

    async def sleep(self):
        await self.clear_kv_cache()  # like vLLM's sleep, which drops its KV cache

    async def clear_kv_cache(self):
        async with self._locks.exclusive():  # after any scoring round in flight
            self.scorer.clear()  # generate() keeps no cache between calls; scoring's prefix cache

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False):
        return {"aborted_count": 0, "request_ids": []}  # requests always run to completion

    async def resume_generation(self):
        return None

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None


# --------------------------------------------------------------------------------------------
# The replica: launches the server actor next to the trainer worker it serves.
# --------------------------------------------------------------------------------------------


class HFReplica(RolloutReplica):
    """One `hf` rollout replica = one `HFRolloutServer` actor."""

    async def launch_servers(self):
        if self.world_size != 1:
            raise ValueError(
                "hf rollout runs one process per replica: set actor_rollout_ref.rollout."
                "tensor_model_parallel_size, data_parallel_size and pipeline_model_parallel_size to 1 "
                f"(their product is {self.world_size})"
            )
        node_id = (
            await self.workers[0].__ray_call__.remote(lambda worker: ray.get_runtime_context().get_node_id())
            if self.workers
            else ray.get_runtime_context().get_node_id()
        )
        role = "reward_" if self.is_reward_model else "teacher_" if self.is_teacher_model else ""
        name = server_actor_name(self.replica_rank, role, self.name_suffix)
        server = (
            ray.remote(HFRolloutServer)
            .options(
                name=name,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
                max_concurrency=self.max_concurrency,
            )
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        )
        self.servers = [server]
        # verl's load balancer only uses the address as a key; there is no HTTP endpoint.
        attach_server(self, server, address=name)


__all__ = ["HFReplica", "HFRolloutServer", "HF_ROLLOUT_NAME", "server_actor_name"]
