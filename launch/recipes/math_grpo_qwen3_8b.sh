#!/usr/bin/env bash
# GRPO baseline on math: the AVSD recipe (math_avsd_qwen3_8b.sh) with verl's own `grpo` estimator
# (outcome reward only, no teacher).
#
# Budget: GRPO needs several rollouts per prompt (its advantage is the reward relative to the
# prompt's group), so it samples 4 prompts x 8 rollouts per step, the same 32 rollouts per step
# (the same generation and update cost) and the same 200 steps as AVSD's 32 prompts x 1 rollout.
# It sees 8x fewer distinct prompts; that is the trade GRPO makes at a fixed rollout budget.
#
# Sampling and loss as the paper's GRPO baseline: temperature 1.0 (the paper), no top-p / top-k
# truncation and a per-sequence mean loss (OPSD's GRPO script: trl's defaults, --loss_type grpo);
# validation samples as every other method. The rest (lr, schedule, clipping, steps) as AVSD.
#
# The trainer stays avsd_sync: for estimators without a teacher it runs verl's own advantage
# step and also logs the credit metrics, so the runs compare side by side.
#
# Usage: launch/recipes/math_grpo_qwen3_8b.sh [--dry-run] [--help] [hydra overrides...]
# Environment: as math_avsd_qwen3_8b.sh (AVSD_EXPERIMENT defaults to math_grpo_qwen3_8b).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_recipe_args "$0" "$@"

AVSD_EXPERIMENT=${AVSD_EXPERIMENT:-math_grpo_qwen3_8b} exec bash "$RECIPES_DIR/math_avsd_qwen3_8b.sh" \
    algorithm.adv_estimator=grpo \
    algorithm.norm_adv_by_std_in_grpo=true \
    data.train_batch_size=4 \
    actor_rollout_ref.rollout.n=8 \
    actor_rollout_ref.actor.ppo_mini_batch_size=4 \
    actor_rollout_ref.rollout.temperature=1.0 \
    actor_rollout_ref.rollout.top_p=1.0 \
    actor_rollout_ref.rollout.top_k=-1 \
    actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean \
    "$@"
