#!/usr/bin/env bash
# RLSD baseline on math: the AVSD recipe (math_avsd_qwen3_8b.sh) with the `rlsd` estimator: the
# sequence-level GRPO advantage A sets each token's sign, the teacher gap sets its magnitude,
# A ((1-lam) + lam clip(exp(sign(A) delta), 1-eps_w, 1+eps_w)), with one teacher view (the full
# solution, as OPSD) and the default lam 0.5, eps_w 0.2.
#
# The teacher is the current policy, as in RLSD's paper (which refreshes it every 10 steps;
# verl-avsd has no lagged teacher), not AVSD's frozen base model.
#
# Budget: A is a GRPO advantage, which needs several rollouts per prompt, so RLSD samples, like
# math_grpo_qwen3_8b.sh, 4 prompts x 8 rollouts at temperature 1.0 without top-p / top-k, with
# the same per-sequence mean loss: the same 32 rollouts per step and 200 steps as AVSD (32 x 1),
# and exactly the GRPO run's batches (lam = 0 is GRPO).
#
# Usage: launch/recipes/math_rlsd_qwen3_8b.sh [--dry-run] [--help] [hydra overrides...]
# Environment: as math_avsd_qwen3_8b.sh (AVSD_EXPERIMENT defaults to math_rlsd_qwen3_8b).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_recipe_args "$0" "$@"

AVSD_EXPERIMENT=${AVSD_EXPERIMENT:-math_rlsd_qwen3_8b} exec bash "$RECIPES_DIR/math_avsd_qwen3_8b.sh" \
    algorithm.adv_estimator=rlsd \
    'algorithm.avsd.views=[full]' \
    algorithm.avsd.opsd_view=full \
    +algorithm.avsd.rlsd_lam=0.5 \
    +algorithm.avsd.rlsd_eps_w=0.2 \
    algorithm.norm_adv_by_std_in_grpo=true \
    data.train_batch_size=4 \
    actor_rollout_ref.rollout.n=8 \
    actor_rollout_ref.actor.ppo_mini_batch_size=4 \
    actor_rollout_ref.rollout.temperature=1.0 \
    actor_rollout_ref.rollout.top_p=1.0 \
    actor_rollout_ref.rollout.top_k=-1 \
    actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean \
    algorithm.avsd.teacher=current \
    "$@"
