"""The AVSD trainer: verl's V1 synchronous PPO trainer with a teacher step.

Select it with `trainer.v1.trainer_mode=avsd_sync`. One training step is verl's own:

    rollout (vLLM, or `hf` on CPU) -> reward -> balance -> old_log_prob
        -> [AVSD] teacher scores every rollout under each of its M views  (timing_s/teacher_views)
        -> [AVSD] estimator: avsd_signals(old_log_prob, view log-probs) -> token advantages
        -> verl's actor update (policy-gradient loss with those advantages)

Only three things differ from verl's `sync` trainer:
1. the actor workers are `AvsdActorRolloutRefWorker` (verl's worker + `compute_view_log_probs`),
   and the reference model is built whenever the actor workers score a `ref` teacher (even without a KL term);
2. the advantage step first builds the rollout-dependent views (`feedback`, `sibling`), runs the
   teacher step, then the AVSD-family estimator, and logs `avsd/*`, `credit/*`, `epistemic/*`
   and teacher throughput metrics through verl's tracker. It replaces verl's advantage step, so
   it takes that step's other parts itself or refuses them by name: verl's rollout correction
   (`algorithm.rollout_correction`: importance weights, rejection sampling) runs as in verl,
   `algorithm.use_kl_in_reward` and agent loops with several outputs per session are refused;
3. for estimators without a teacher (`grpo`, ...) it runs verl's own advantage step and
   still logs the credit, epistemic and GRPO-signal metrics, so runs compare side by side.

Every private verl name it relies on goes through verl_avsd/verl_trainer_seam.py.
"""

from __future__ import annotations

import time

import numpy as np
from omegaconf import OmegaConf
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.debug import marked_timer

from verl_avsd.config import avsd_config, scored_views
from verl_avsd.epistemic import EpistemicMarkers, epistemic_metrics
from verl_avsd.estimator_facts import needs_teacher
from verl_avsd.estimators import token_advantages
from verl_avsd.feedback_view import feedback_for_rollouts
from verl_avsd.metrics import signal_metrics, step_credit_metrics
from verl_avsd.resume import ResumableFileLogger
from verl_avsd.rollout_dumps import append_dump_rows, drop_dumps_after
from verl_avsd.rollout_failures import ConsecutiveFailures, dead_actors, failure_limit
from verl_avsd.sibling_view import sampling_order, sibling_views
from verl_avsd.teacher_placement import check_rollout_placement, read_rollout_teacher, use_rollout_teacher
from verl_avsd.verl_trainer_seam import (
    ADVANTAGES,
    EXTRA_INFO,
    OLD_LOG_PROBS,
    RESPONSE_MASK,
    RESPONSES,
    RETURNS,
    RM_SCORES,
    ROLLOUT_IS_WEIGHTS,
    ROLLOUT_LOG_PROBS,
    UID,
    actor_dp_size,
    add_tracking_backend,
    apply_rollout_correction,
    build_ref_model_with_actor,
    check_one_output_per_session,
    get_fields,
    has_separate_actor,
    is_real,
    nested_like,
    observe_group_status,
    put_fields,
    put_rows,
    rollout_actors,
    rollout_correction_config,
    seq_lens,
    use_actor_worker_class,
)
from verl_avsd.workers.teacher_context import SIBLING_VIEW, check_view_coverage
from verl_avsd.workers.teacher_worker import AvsdActorRolloutRefWorker
from verl_avsd.workers.verl_worker_seam import per_sample_list


def _lora_enabled(config) -> bool:
    model = config.actor_rollout_ref.model
    rank = model.get("lora", {}).get("rank", 0) or model.get("lora_rank", 0)
    return rank > 0 or model.get("lora_adapter_path") is not None


def teacher_rank_order(seq_lens: list[int], uids: list, dp_size: int) -> list[int] | None:
    """The row order for the teacher step over `dp_size` data-parallel ranks (verl's dispatch gives
    rank r the r-th of dp_size equal contiguous chunks): every prompt group (same uid) whole on one
    rank, so the identical contexts of its rollouts are fed once, with the ranks' workloads
    balanced (verl's Karmarkar-Karp over groups). None, to keep the order as it is, with one rank,
    or when the groups cannot split evenly (unequal sizes, or a count dp_size does not divide)."""
    from verl.utils.seqlen_balancing import get_group_balanced_partitions

    groups: dict = {}
    for i, uid in enumerate(uids):
        groups.setdefault(uid, []).append(i)
    sizes = {len(rows) for rows in groups.values()}
    if dp_size <= 1 or len(sizes) != 1 or len(groups) % dp_size:
        return None
    by_group = [i for rows in groups.values() for i in rows]  # verl's grouping wants each uid contiguous
    partitions = get_group_balanced_partitions([seq_lens[i] for i in by_group], [uids[i] for i in by_group], dp_size)
    return [by_group[j] for partition in partitions for j in partition]


@register_trainer("avsd_sync")
class AvsdTrainer(PPOTrainerSync):
    def __init__(self, config):
        self.avsd = avsd_config(config.algorithm)  # a typo in algorithm.avsd.* fails here, before Ray work
        self.estimator = str(config.algorithm.adv_estimator)
        self.needs_teacher = needs_teacher(self.estimator)
        self.avsd = scored_views(self.avsd, self.estimator)
        if self.needs_teacher and SIBLING_VIEW in self.avsd.views and int(config.actor_rollout_ref.rollout.get("n", 1)) < 2:
            raise ValueError(
                f"algorithm.avsd.views has {SIBLING_VIEW!r}, a correct response of another rollout of the same prompt, "
                f"but actor_rollout_ref.rollout.n={config.actor_rollout_ref.rollout.get('n', 1)} samples one rollout "
                "per prompt: set rollout.n >= 2 or drop the view"
            )
        if self.needs_teacher and config.algorithm.get("use_kl_in_reward", False):
            raise ValueError(
                f"algorithm.use_kl_in_reward is not supported with algorithm.adv_estimator={self.estimator}: "
                "the teacher advantage is per token already; use actor_rollout_ref.actor.use_kl_loss for a KL term"
            )
        if self.needs_teacher and self.avsd.teacher_placement == "rollout":  # verl_avsd/teacher_placement.py
            check_rollout_placement(config, self.avsd)
            use_rollout_teacher(config)  # verl's task runner builds the agent-loop manager that scores
        self.rollout_failures = ConsecutiveFailures(failure_limit(config), self._dead_rollout_actors)
        super().__init__(config)

    # ---- rollouts that keep failing stop the run (verl_avsd/rollout_failures.py) ----

    def _build_replay_buffer(self):
        buffer = super()._build_replay_buffer()

        def count_failures(finished, failed, in_flight):
            self.rollout_failures.observe(finished, failed, getattr(self, "global_steps", 0), in_flight)

        # each time the buffer reads the groups' status (a custom sampler of another shape: its own rules)
        observe_group_status(buffer, count_failures)
        return buffer

    def _dead_rollout_actors(self) -> list[str]:
        return dead_actors(rollout_actors(self))

    # ---- workers: verl's, plus the teacher method; the ref model whenever the teacher needs it ----

    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        # verl builds the ref model only for a KL term; the AVSD teacher needs it too, where the actor
        # workers score the views (with rollout placement the ref teacher has replicas of its own)
        scores_on_actor = self.avsd.teacher_placement == "actor"
        if self.needs_teacher and self.avsd.teacher == "ref" and scores_on_actor and not _lora_enabled(self.config):
            build_ref_model_with_actor(self)
        if has_separate_actor(self):
            raise NotImplementedError(
                "trainer.v1.trainer_mode=avsd_sync runs the teacher on the colocated actor workers "
                "(actor_rollout_ref.hybrid_engine=True)"
            )
        use_actor_worker_class(self, AvsdActorRolloutRefWorker)

    # ---- resume: each step's metrics and rollout dumps exactly once (verl_avsd/resume.py) ----

    def fit(self, agent_loop_manager):
        resumed_step = int(self.global_steps)  # set by _load_checkpoint: the checkpoint's step, 0 if fresh
        if self.avsd.dump_rollouts_dir:
            drop_dumps_after(self.avsd.dump_rollouts_dir, resumed_step)
        backends = self.config.trainer.logger
        backends = [backends] if isinstance(backends, str) else list(backends or [])
        if "file" in backends:
            # verl's FileLogger would truncate the metrics of steps 1..K; PPOTrainer.fit builds its
            # Tracking without it, and the `logger` setter below adds ResumableFileLogger instead
            self.__dict__["_file_backend"] = (backends, resumed_step)
            self.config.trainer.logger = [b for b in backends if b != "file"]
        try:
            return super().fit(agent_loop_manager)
        finally:
            self.config.trainer.logger = backends

    @property
    def logger(self):
        """verl's Tracking of this run (PPOTrainer.fit sets it)."""
        return self.__dict__.get("_tracking")

    @logger.setter
    def logger(self, tracking) -> None:
        pending = self.__dict__.pop("_file_backend", None)
        if pending is not None:
            backends, resumed_step = pending
            self.config.trainer.logger = backends  # as the user set it, for everything after Tracking
            trainer = self.config.trainer
            add_tracking_backend(
                tracking, "file", ResumableFileLogger(trainer.project_name, trainer.experiment_name, resumed_step)
            )
        self.__dict__["_tracking"] = tracking

    # ---- the teacher step ----

    def _compute_view_log_probs(self, batch, metrics: dict):
        if self.avsd.teacher_placement == "rollout":  # scored in the agent loop as each rollout finished
            read_rollout_teacher(batch, list(self.avsd.views), metrics, self.timing_raw)
            return batch
        chat_kwargs = self.config.data.get("apply_chat_template_kwargs", None) or {}
        batch.extra_info.update(
            {
                "avsd_config": self.avsd.to_dict(),  # plain data through TransferQueue; AvsdConfig.from_dict there
                # the student's chat template arguments (e.g. enable_thinking); the teacher uses them unless
                # algorithm.avsd.teacher_chat_template_kwargs is set (resolved in build_teacher_contexts)
                "avsd_chat_template_kwargs": dict(
                    OmegaConf.to_container(chat_kwargs, resolve=True) if OmegaConf.is_config(chat_kwargs) else chat_kwargs
                ),
                # the student's old_log_prob is at the rollout temperature; score the teacher alike
                "temperature": self.config.actor_rollout_ref.rollout.temperature,
            }
        )
        order = self._teacher_order(batch, metrics) if self.avsd.teacher_group_by_prompt else None
        if order is not None:
            batch.reorder(order)
        start = time.perf_counter()
        output = self.actor_rollout_wg.compute_view_log_probs(batch)
        assert len(output) == len(batch)
        elapsed = time.perf_counter() - start
        if order is not None:  # outputs are stored per sample key; the update keeps verl's order
            batch.reorder(np.argsort(order).tolist())
        stats = get_fields(
            batch, ["avsd_view_tokens", "avsd_view_truncated", "avsd_view_fed_tokens"]
        ).to_padded_tensor()  # TransferQueue hands per-sample fields back nested
        teacher_tokens = int(stats["avsd_view_tokens"].sum())
        fed_tokens = float(stats["avsd_view_fed_tokens"].sum())  # after shared prefixes ran once
        metrics.update(
            {
                "avsd/teacher_tokens": float(teacher_tokens),
                "avsd/teacher_tokens_per_s": teacher_tokens / max(elapsed, 1e-9),
                "avsd/teacher_fed_tokens": fed_tokens,
                "avsd/teacher_fed_fraction": fed_tokens / max(teacher_tokens, 1),
                "avsd/views_truncated": float(stats["avsd_view_truncated"].sum()),
                # as logged with teacher_placement=rollout: here the step waits for all of it
                "avsd/teacher_blocking_s": elapsed,
                "avsd/teacher_hidden_fraction": 0.0,
            }
        )
        return batch

    def _teacher_order(self, batch, metrics: dict) -> list[int] | None:
        """`teacher_rank_order` for this batch on the actor's data-parallel ranks."""
        dp_size = actor_dp_size(self.actor_rollout_wg)
        if dp_size <= 1:
            return None
        uids = per_sample_list(get_fields(batch, [UID])[UID])
        order = teacher_rank_order(seq_lens(batch), uids, dp_size)
        metrics["avsd/teacher_grouped_by_prompt"] = float(order is not None)
        return order

    def _build_feedback_views(self, batch, metrics: dict):
        """Run every rollout's program on its row's public tests; the teacher worker reads the
        result (field `avsd_feedback`) as that rollout's `feedback` view."""
        if self.avsd.teacher_placement == "rollout":  # the agent-loop worker ran them, before scoring
            return batch
        data = get_fields(batch, [RESPONSES, EXTRA_INFO])
        texts = self.tokenizer.batch_decode(list(data[RESPONSES].unbind(0)), skip_special_tokens=True)
        views, feedback_stats = feedback_for_rollouts(texts, per_sample_list(data[EXTRA_INFO]), self.avsd)
        metrics.update(feedback_stats)
        # the returned batch meta lists the new field, so the teacher worker receives it
        return put_rows(batch, [{"avsd_feedback": v} for v in views])

    # ---- rollouts as text: the sibling view and the epistemic metrics ----

    def _decoded_rollouts(self, batch) -> dict:
        """The responses of the batch decoded (once a step), with their prompt uid, sequence reward,
        response tokens (response_mask) and whether each is a real rollout (not verl's padding)."""
        data = get_fields(batch, [UID, RESPONSES, RESPONSE_MASK, RM_SCORES])
        padded = data.select(RESPONSE_MASK, RM_SCORES).to_padded_tensor()
        return {
            "texts": self.tokenizer.batch_decode(list(data[RESPONSES].unbind(0)), skip_special_tokens=True),
            "uids": per_sample_list(data[UID]),
            "rewards": padded[RM_SCORES].sum(-1).tolist(),  # [B]
            "tokens": padded[RESPONSE_MASK].sum(-1).tolist(),  # [B]
            "real": is_real(batch),
        }

    def _build_sibling_views(self, batch, rollouts: dict, metrics: dict):
        """Each rollout's `sibling` view (verl_avsd/sibling_view.py), for the teacher worker to read
        from field `avsd_sibling` ("" = no view)."""
        views, stats = sibling_views(
            rollouts["texts"], rollouts["uids"], rollouts["rewards"], float(self.avsd.wrong_below),
            rollouts["real"], sampling_order(batch.keys, rollouts["uids"]),
        )  # fmt: skip
        metrics.update(stats)
        return put_rows(batch, [{"avsd_sibling": v} for v in views])

    def _epistemic_metrics(self, rollouts: dict, metrics: dict) -> None:
        """`epistemic/*` over the real rollouts (verl_avsd/epistemic.py), whatever the estimator."""
        if getattr(self, "_epistemic_markers", None) is None:  # compiled once a run
            self._epistemic_markers = EpistemicMarkers(list(self.avsd.epistemic_markers))
        real = [b for b, is_real in enumerate(rollouts["real"]) if is_real]
        pick = lambda key: [rollouts[key][b] for b in real]  # noqa: E731
        metrics.update(
            epistemic_metrics(
                pick("texts"), pick("tokens"), pick("rewards"), self._epistemic_markers, float(self.avsd.wrong_below)
            )
        )

    # ---- the advantage step ----

    def _compute_advantage(self, batch, metrics: dict):
        if not self.needs_teacher:
            batch = super()._compute_advantage(batch, metrics)
            self._comparison_metrics(batch, metrics)
            self._epistemic_metrics(self._decoded_rollouts(batch), metrics)
            return batch

        # verl groups several outputs of one session (a multi-output agent loop); the teacher path would not
        check_one_output_per_session(batch.keys, self.estimator)
        if not getattr(self, "_views_checked", False):  # first batch: a misspelt view fails here, by name
            check_view_coverage(per_sample_list(get_fields(batch, [EXTRA_INFO])[EXTRA_INFO]), list(self.avsd.views))
            self._views_checked = True
        if "feedback" in self.avsd.views:
            with marked_timer("feedback_view", self.timing_raw, color="olive"):
                batch = self._build_feedback_views(batch, metrics)
        rollouts = None  # decoded once a step, for the sibling view and the epistemic metrics
        if SIBLING_VIEW in self.avsd.views:
            with marked_timer("sibling_view", self.timing_raw, color="olive"):
                rollouts = self._decoded_rollouts(batch)
                batch = self._build_sibling_views(batch, rollouts, metrics)
        with marked_timer("teacher_views", self.timing_raw, color="olive"):
            batch = self._compute_view_log_probs(batch, metrics)

        correction = rollout_correction_config(self.config.algorithm)
        padded_fields = [RESPONSE_MASK, RM_SCORES, OLD_LOG_PROBS, "avsd_view_logq", "avsd_view_mask"]
        padded_fields += [ROLLOUT_LOG_PROBS] if correction is not None else []  # left out where the rollout gave none
        data = get_fields(batch, [UID, *padded_fields])
        response_mask_nested = data[RESPONSE_MASK]
        uids = per_sample_list(data[UID])
        padded = data.select(*[f for f in padded_fields if f in data.keys()]).to_padded_tensor()
        response_mask = padded[RESPONSE_MASK]  # [B, T]
        rewards = padded[RM_SCORES]  # [B, T]
        view_logq = padded["avsd_view_logq"].permute(0, 2, 1)  # [B, T, M] -> [B, M, T]
        out = {}  # per-token fields for the actor update, [B, T]
        if correction is not None and ROLLOUT_LOG_PROBS in padded.keys():
            # verl's rollout correction, as in its own advantage step: importance weights for the actor's
            # loss and rejection sampling (rejected tokens leave response_mask, so they get no advantage)
            response_mask, is_weights, correction_metrics = apply_rollout_correction(
                correction, padded[OLD_LOG_PROBS], padded[ROLLOUT_LOG_PROBS], response_mask
            )
            metrics.update(correction_metrics)
            out[RESPONSE_MASK] = response_mask
            if is_weights is not None:
                out[ROLLOUT_IS_WEIGHTS] = is_weights
        advantages, signals = token_advantages(
            self.estimator,
            self.avsd,  # parsed once in __init__; its views are the ones the teacher scored, in its order
            student_logp=padded[OLD_LOG_PROBS],
            view_logq=view_logq,
            view_mask=padded["avsd_view_mask"].bool(),  # [B, M]
            response_mask=response_mask,
            token_level_rewards=rewards,
            index=np.array(uids, dtype=object),
            norm_adv_by_std_in_grpo=self.config.algorithm.get("norm_adv_by_std_in_grpo", True),
        )
        metrics.update(signal_metrics(signals, float(self.avsd.gate_open_threshold)))
        metrics["avsd/views_scored"] = float(view_logq.shape[1])  # M the teacher ran
        metrics.update(self._credit_metrics(advantages, response_mask, rewards.sum(-1), uids, batch))

        if self.avsd.dump_rollouts_dir:
            self._dump_rollouts(batch, padded, view_logq, padded["avsd_view_mask"], advantages, signals.gate)
        self._epistemic_metrics(rollouts if rollouts is not None else self._decoded_rollouts(batch), metrics)

        out.update({ADVANTAGES: advantages, RETURNS: advantages})
        return put_fields(batch, {name: nested_like(value, response_mask_nested) for name, value in out.items()})

    def _dump_rollouts(self, batch, padded, view_logq, view_mask, advantages, gate) -> None:
        """One JSON line per rollout with its token-level signals (`algorithm.avsd.dump_rollouts_dir`)."""
        extra = get_fields(batch, [EXTRA_INFO, RESPONSES])
        extra_infos = per_sample_list(extra[EXTRA_INFO])
        rows = []
        for b, (key, real) in enumerate(zip(batch.keys, is_real(batch))):
            info = extra_infos[b] if isinstance(extra_infos[b], dict) else {}
            rows.append(
                {
                    "step": self.global_steps,
                    "key": key,
                    "is_padding": not real,
                    "index": info.get("index"),
                    "estimator": self.estimator,
                    "views": list(self.avsd.views),
                    "reward": float(padded[RM_SCORES][b].sum()),
                    "response_ids": extra[RESPONSES][b].tolist(),
                    "response_mask": padded[RESPONSE_MASK][b].tolist(),
                    "student_logp": padded[OLD_LOG_PROBS][b].tolist(),
                    "view_logq": [[x if x == x and abs(x) != float("inf") else None for x in v] for v in view_logq[b].tolist()],
                    "view_mask": view_mask[b].tolist(),
                    "advantage": advantages[b].tolist(),
                    "gate": gate[b].tolist(),
                }
            )
        append_dump_rows(self.avsd.dump_rollouts_dir, self.global_steps, rows)

    def _comparison_metrics(self, batch, metrics: dict) -> None:
        """Credit reliability and GRPO signal share for estimators without a teacher (after verl's step)."""
        data = get_fields(batch, [UID, RESPONSE_MASK, RM_SCORES, ADVANTAGES])
        padded = data.select(RESPONSE_MASK, RM_SCORES, ADVANTAGES).to_padded_tensor()
        uids = per_sample_list(data[UID])
        metrics.update(self._credit_metrics(padded[ADVANTAGES], padded[RESPONSE_MASK], padded[RM_SCORES].sum(-1), uids, batch))

    def _credit_metrics(self, advantages, response_mask, sequence_reward, uids: list, batch) -> dict:
        """`credit/*` (and `grpo/groups_without_signal` with groups) over the batch's real rollouts, the
        same for every estimator. advantages, response_mask [B, T]; sequence_reward [B]."""
        return step_credit_metrics(
            advantages, response_mask, sequence_reward, uids, is_real(batch),
            float(self.avsd.wrong_below), int(self.avsd.credit_top_k), grouped=self.config.actor_rollout_ref.rollout.n > 1,
        )  # fmt: skip
