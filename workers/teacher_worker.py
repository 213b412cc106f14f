"""The teacher-ref worker: verl's ActorRolloutRefWorker plus one method that scores every
rollout's response under each of its M privileged views.

    compute_view_log_probs(batch) -> avsd_view_logq  [B, T_b, M] (nested over T_b)
                                     avsd_view_mask  [B, M] bool
                                     avsd_view_tokens, avsd_view_truncated  [B, M]
                                     avsd_view_fed_tokens  [B] float

It runs on the same Ray actors (and GPUs) as the actor, dispatched over the actor's
data-parallel mesh, so each rank scores its own shard. All B*M teacher sequences of a shard
go through the model as packed variable-length rows (`teacher_prefill`), micro-batched by
`algorithm.avsd.token_budget`, with log-probs of the response tokens only, in chunks. A context
prefix the sequences share (the problem, under every view; the whole context, for the rollouts
of one prompt) is fed once (`algorithm.avsd.share_prefix_min_tokens`).

Teacher weights (`algorithm.avsd.teacher`):
- `ref`: the frozen reference model; with LoRA there is no separate ref model and the
  teacher is the actor's base model with the adapter disabled, as verl does for ref.
- `current`: the live actor weights (no grad).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from verl.single_controller.base.decorator import make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker

from verl_avsd.config import AvsdConfig
from verl_avsd.workers.teacher_context import ROLLOUT_VIEW_FIELDS, build_teacher_contexts, with_rollout_view
from verl_avsd.workers.teacher_prefill import packed_response_logprobs
from verl_avsd.workers.verl_worker_seam import (  # verl's worker internals (the seam's items 1 and 2)
    per_sample_list,
    teacher_forward,
    teacher_training_worker,
    worker_tokenizer,
)


class AvsdActorRolloutRefWorker(ActorRolloutRefWorker):
    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_view_log_probs(self, data: TensorDict) -> TensorDict:
        cfg = AvsdConfig.from_dict(
            tu.get_non_tensor_data(data=data, key="avsd_config", default=None)
        )  # to_dict() of the trainer's
        chat_kwargs = tu.get_non_tensor_data(data=data, key="avsd_chat_template_kwargs", default=None) or {}
        temperature = float(tu.get_non_tensor_data(data=data, key="temperature", default=1.0))
        worker = self._teacher_training_worker(cfg.teacher)
        tokenizer = worker_tokenizer(self)

        responses = [r for r in data["responses"].unbind(0)]  # [B] x [T_b]
        extra_infos = per_sample_list(data["extra_info"])
        for name, field in ROLLOUT_VIEW_FIELDS.items():  # views the trainer built per rollout (feedback, sibling)
            if field in data.keys():
                extra_infos = [with_rollout_view(e, name, t) for e, t in zip(extra_infos, per_sample_list(data[field]))]
        contexts = build_teacher_contexts(tokenizer, per_sample_list(data["raw_prompt"]), extra_infos, cfg, chat_kwargs)
        B, M = contexts.view_mask.shape
        pairs = [(b, m) for b in range(B) for m in range(M) if contexts.view_mask[b, m]]
        sequences = [(contexts.context_ids[b][m], responses[b].cpu()) for b, m in pairs]

        # LoRA + ref: the base model is the actor's with its adapter disabled.
        no_adapter = cfg.teacher == "ref" and self.ref is None
        prefill = {}  # sequence_tokens, fed_tokens, microbatches
        with teacher_forward(worker, adapter_off=no_adapter) as model:
            logprobs = packed_response_logprobs(
                model,
                sequences,
                token_budget=int(cfg.token_budget),
                logprob_chunk_tokens=int(cfg.logprob_chunk_tokens),
                temperature=temperature,
                share_prefix_min_tokens=int(cfg.share_prefix_min_tokens),
                stats=prefill,
            )

        # [B] x [T_b, M]: nested over the response length, as verl stores per-token fields.
        per_sample = [torch.zeros(len(responses[b]), M, dtype=torch.float32) for b in range(B)]
        for (b, m), lp in zip(pairs, logprobs):
            per_sample[b][:, m] = lp
        tokens = torch.zeros(B, M, dtype=torch.int64)
        for b, m in pairs:
            tokens[b, m] = len(contexts.context_ids[b][m]) + len(responses[b])
        # The tokens the model ran on, spread over the rows in proportion to their sequences'
        # tokens (a shared prefix belongs to several rows): they sum to this shard's total.
        fed_fraction = prefill["fed_tokens"] / max(prefill["sequence_tokens"], 1)
        alone = [(tokens[b] - 1).clamp(min=0).sum() if len(responses[b]) else 0 for b in range(B)]  # Lc + R - 1 each
        fed_tokens = torch.tensor([float(n) for n in alone]) * fed_fraction  # [B]
        return TensorDict(
            {
                "avsd_view_logq": torch.nested.as_nested_tensor(per_sample, layout=torch.jagged),
                "avsd_view_mask": contexts.view_mask,
                "avsd_view_tokens": tokens,
                "avsd_view_truncated": contexts.truncated,
                "avsd_view_fed_tokens": fed_tokens,
            },
            batch_size=B,
        )

    def _teacher_training_worker(self, teacher: str):
        """The TrainingWorker whose model is the teacher."""
        return teacher_training_worker(self, teacher)
