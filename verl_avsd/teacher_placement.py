"""Where the AVSD teacher runs: `algorithm.avsd.teacher_placement: actor | rollout`.

- `actor` (default): after generation, the packed M-view prefill on the actor workers
  (workers/teacher_worker.py); the whole teacher time is on the step's critical path.
- `rollout`: each sample's views are scored as soon as its generation ends, by the rollout
  server, inside verl's agent-loop worker (workers/rollout_teacher.py), while the other samples
  of the batch are still generating. The trainer only reads and checks the fields here.

This module is the trainer's side of `rollout`: what it refuses at config time, how it tells
verl to use the agent-loop manager that scores, and the step's teacher fields and metrics:

    avsd/teacher_hidden_fraction  share of the teacher's scoring time that ran while generation
                                  of the batch was still going (1 = all of it hidden; 0 with actor
                                  placement). A sample's scoring time is its requests' time in
                                  flight, from the agent-loop worker: a server that queues them
                                  behind generation (the `hf` one) counts the wait as scoring
    avsd/teacher_blocking_s       how long the step waited for teacher work after the batch's
                                  last generation ended (actor placement: the whole teacher call)
    avsd/teacher_scoring_s        the samples' scoring times, summed
    avsd/teacher_streamed_s       the part of it that ran while its own sample still generated
                                  (the hf server's teacher_stream_tokens; 0 elsewhere)
    timing_s/teacher_views        the teacher time on the step's critical path: the blocking wait
                                  (inside timing_s/gen: verl's sample waits for every finished
                                  sample) plus reading the fields; with `actor`, the packed call
"""

from __future__ import annotations

import torch

from verl_avsd.workers.teacher_context import FEEDBACK_VIEW, SIBLING_VIEW, ViewDataError

PLACEMENT_KEY = "algorithm.avsd.teacher_placement"
MANAGER_KEY = "actor_rollout_ref.rollout.agent.agent_loop_manager_class"
# the class verl's TaskRunnerV1.init_agent_loop_manager loads from MANAGER_KEY
MANAGER_FQN = "verl_avsd.workers.rollout_teacher.RolloutTeacherAgentLoopManager"
# with algorithm.avsd.teacher=ref: the same, plus the reference teacher's own pool (workers/ref_teacher_pool.py)
REF_MANAGER_FQN = "verl_avsd.workers.ref_teacher_pool.RefTeacherAgentLoopManager"

# what the agent-loop worker writes per sample (names and dtypes of the packed worker's output)
VIEW_FIELDS = ("avsd_view_logq", "avsd_view_mask", "avsd_view_tokens", "avsd_view_truncated", "avsd_view_fed_tokens")
TIME_FIELDS = ("avsd_gen_end_s", "avsd_teacher_start_s", "avsd_teacher_end_s")  # wall clock, float64
STREAMED_FIELD = "avsd_teacher_streamed_s"  # seconds scored while the sample still generated (teacher_stream_tokens)
FEEDBACK_METRICS_FIELD = "avsd_feedback_metrics"  # per sample; the batch's feedback/* rates are their means


# ---- config time ----


def check_rollout_placement(config, avsd) -> None:
    """Refuse, naming the keys, what `rollout` placement cannot do."""
    rollout = config.actor_rollout_ref.rollout
    if avsd.teacher == "ref":
        check_ref_teacher_pool(config)
    if SIBLING_VIEW in list(avsd.views):
        raise ValueError(
            f"{PLACEMENT_KEY}=rollout scores a sample as soon as its generation ends, but algorithm.avsd.views has "
            f"{SIBLING_VIEW!r}, which needs the rewards of the whole prompt group: drop the view or use {PLACEMENT_KEY}=actor"
        )
    name, temperature = str(rollout.name), float(rollout.temperature)
    if name != "hf" and temperature != 1.0:
        # vLLM scores prompt log-probs from the raw logits whatever the request's temperature
        # (verl's own distillation teacher always asks at 1.0); the hf server applies it.
        raise ValueError(
            f"{PLACEMENT_KEY}=rollout with actor_rollout_ref.rollout.name={name} needs actor_rollout_ref.rollout.temperature=1: "
            f"{name} returns prompt log-probs of the raw logits (no temperature), but the student's log-probs are at "
            f"temperature {temperature}; use {PLACEMENT_KEY}=actor"
        )
    if rollout.get("multi_turn", {}).get("enable", False):
        raise ValueError(
            f"{PLACEMENT_KEY}=rollout scores single-turn rollouts, but actor_rollout_ref.rollout.multi_turn.enable=true"
        )
    current, wanted = rollout.get("agent", {}).get("agent_loop_manager_class"), manager_fqn(avsd.teacher)
    if current and current != wanted:
        raise ValueError(
            f"{PLACEMENT_KEY}=rollout brings its own agent-loop manager ({wanted}), but {MANAGER_KEY}={current} is set"
        )


def check_ref_teacher_pool(config) -> None:
    """`teacher: ref` scores on replicas of the actor's initial model built by verl's teacher_loop
    (workers/ref_teacher_pool.py) while verl's own distillation stays off: refuse what would
    switch it on or point the teacher at another model, then verl's own checks of the pool."""
    distillation = config.get("distillation") or {}
    where = f"algorithm.avsd.teacher=ref with {PLACEMENT_KEY}=rollout"
    if distillation.get("enabled", False):
        raise ValueError(
            f"{where} scores the views on reference-teacher replicas built from verl's teacher_loop, but "
            "distillation.enabled=true also turns on verl's own on-policy distillation (a distillation loss in the "
            "actor's update, teacher log-probs of every prompt+response): set distillation.enabled=false "
            f"(distillation.n_gpus_per_node / distillation.nnodes still size the reference pool) or use {PLACEMENT_KEY}=actor"
        )
    models = dict(distillation.get("teacher_models", None) or {})
    actor_path = str(config.actor_rollout_ref.model.path)
    for name, model in models.items():
        path = (model or {}).get("model_path", None)
        if name != "teacher_model" or path not in (None, actor_path):
            raise ValueError(
                f"{where}: the reference teacher is the actor's initial model (actor_rollout_ref.model.path={actor_path}), "
                f"but distillation.teacher_models.{name}.model_path={path} is set: remove it"
            )
    # verl's teacher_loop loads a teacher from its path alone (HFModelConfig defaults): what the
    # actor's model config changes beyond the attention kernel would be missing from the reference
    model = config.actor_rollout_ref.model
    overrides = sorted(set(model.get("override_config", None) or {}) - {"attn_implementation"})
    if overrides or model.get("trust_remote_code", False):
        keys = [f"actor_rollout_ref.model.override_config.{k}" for k in overrides]
        keys += ["actor_rollout_ref.model.trust_remote_code=true"] if model.get("trust_remote_code", False) else []
        raise ValueError(
            f"{where}: verl's teacher_loop builds the reference replicas from the model path alone, without "
            f"{', '.join(keys)}: use {PLACEMENT_KEY}=actor"
        )
    from verl_avsd.workers.ref_teacher_pool import check_ref_teacher_config

    check_ref_teacher_config(config)


def manager_fqn(teacher: str) -> str:
    """The agent-loop manager class that scores the views for this teacher."""
    return REF_MANAGER_FQN if teacher == "ref" else MANAGER_FQN


def use_rollout_teacher(config) -> None:
    """Point verl at the agent-loop manager that scores the views (verl's task runner reads the
    key from this same config object after the trainer is built); with `teacher: ref`, the one
    that also builds the reference teacher's pool. verl's `distillation.enabled` stays false
    (check_ref_teacher_pool): no distillation loss, no teacher pool of the trainer's own."""
    from omegaconf import open_dict

    from verl_avsd.config import avsd_config

    with open_dict(config):
        config.actor_rollout_ref.rollout.agent.agent_loop_manager_class = manager_fqn(avsd_config(config.algorithm).teacher)


# ---- each step: the fields the agent-loop workers wrote ----


def placement_timing(
    gen_end: torch.Tensor, start: torch.Tensor, end: torch.Tensor, streamed: torch.Tensor | None = None
) -> dict[str, float]:
    """The overlap metrics of one batch from its samples' wall-clock times ([B] float64 each):
    [start, end] is each sample's scoring after its generation ended, `streamed` its seconds of
    scoring while it still generated (before its own end, so before the last one: all hidden)."""
    if not len(gen_end):
        return {}
    streamed = torch.zeros_like(gen_end) if streamed is None else streamed.clamp(min=0)  # [B]
    last_gen = float(gen_end.max())
    busy = (end - start).clamp(min=0) + streamed  # [B]
    after = (torch.minimum(end, torch.full_like(end, last_gen)) - start).clamp(min=0)  # [B] before the last generation ended
    hidden = after + streamed  # [B]
    total = float(busy.sum())
    return {
        "avsd/teacher_hidden_fraction": float(hidden.sum()) / total if total > 0 else 1.0,
        "avsd/teacher_streamed_s": float(streamed.sum()),
        "avsd/teacher_blocking_s": max(float(end.max()) - last_gen, 0.0),
        "avsd/teacher_scoring_s": total,
    }


def read_rollout_teacher(batch, views: list[str], metrics: dict, timing_raw: dict) -> None:
    """Check the teacher fields the agent-loop workers wrote for this batch and log the teacher
    metrics (the estimator then reads the fields as it reads the packed path's)."""
    from verl_avsd.verl_trainer_seam import get_fields
    from verl_avsd.workers.verl_worker_seam import per_sample_list

    names = list(VIEW_FIELDS + TIME_FIELDS) + [STREAMED_FIELD] + ([FEEDBACK_METRICS_FIELD] if FEEDBACK_VIEW in views else [])
    try:
        data = get_fields(batch, names + ["responses", "extra_info"])
    except Exception as error:  # noqa: BLE001 - TransferQueue names no field; this message does
        raise RuntimeError(
            f"{PLACEMENT_KEY}=rollout: the rollouts of this batch carry no teacher fields {names}; they are written by "
            f"{MANAGER_FQN}, which {MANAGER_KEY} must name (the trainer sets it)"
        ) from error
    real = [not tag.get("is_padding", False) for tag in batch.tags]
    responses = list(data["responses"].unbind(0))
    logq = list(data["avsd_view_logq"].unbind(0))  # [B] x [T_b, M]
    padded = data.select(*[n for n in names if n not in ("avsd_view_logq", FEEDBACK_METRICS_FIELD)]).to_padded_tensor()
    M = len(views)
    for b, (key, is_real) in enumerate(zip(batch.keys, real)):
        shape, want = tuple(logq[b].shape), (len(responses[b]), M)
        if is_real and shape != want:
            raise RuntimeError(
                f"{PLACEMENT_KEY}=rollout: sample {key} has avsd_view_logq of shape {shape}, expected {want} (response tokens, views {views})"
            )
    view_mask = padded["avsd_view_mask"].bool()  # [B, M]
    if view_mask.shape != (len(batch), M):
        raise RuntimeError(
            f"{PLACEMENT_KEY}=rollout: avsd_view_mask is {tuple(view_mask.shape)}, expected {(len(batch), M)} (views {views})"
        )
    extra_infos = per_sample_list(data["extra_info"])
    feedback_possible = FEEDBACK_VIEW in views and any(
        isinstance(e, dict) and e.get("public_tests") is not None for e in extra_infos
    )
    if len(batch) and not view_mask.any() and not feedback_possible:  # as build_teacher_contexts on a batch
        raise ViewDataError(f"no row of this batch has any of the views algorithm.avsd.views={views}")

    keep = torch.tensor(real)
    timing = placement_timing(
        padded["avsd_gen_end_s"][keep],
        padded["avsd_teacher_start_s"][keep],
        padded["avsd_teacher_end_s"][keep],
        padded[STREAMED_FIELD][keep],
    )
    teacher_tokens = int(padded["avsd_view_tokens"].sum())
    fed_tokens = float(padded["avsd_view_fed_tokens"].sum())
    metrics.update(timing)
    metrics.update(
        {
            "avsd/teacher_tokens": float(teacher_tokens),
            "avsd/teacher_tokens_per_s": teacher_tokens / max(timing.get("avsd/teacher_scoring_s", 0.0), 1e-9),
            "avsd/teacher_fed_tokens": fed_tokens,
            "avsd/teacher_fed_fraction": fed_tokens / max(teacher_tokens, 1),
            "avsd/views_truncated": float(padded["avsd_view_truncated"].sum()),
        }
    )
    if FEEDBACK_VIEW in views:  # each sample's rates are 0/1: the batch's are their means
        per_sample = [m for m, r in zip(per_sample_list(data[FEEDBACK_METRICS_FIELD]), real) if r and isinstance(m, dict)]
        for name in sorted({k for m in per_sample for k in m}):
            metrics[name] = sum(m.get(name, 0.0) for m in per_sample) / len(per_sample)
    # the wait after the last generation is teacher time on the critical path (verl's timer adds the read)
    timing_raw["teacher_views"] = timing_raw.get("teacher_views", 0.0) + timing.get("avsd/teacher_blocking_s", 0.0)
