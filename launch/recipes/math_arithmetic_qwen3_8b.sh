#!/usr/bin/env bash
# Arithmetic-pool ablation on math: the AVSD recipe (math_avsd_qwen3_8b.sh) with the advantage
# log(mean_m q_m) - log p over the three views (the pool that can flip the consensus sign).
# Everything else (views, model, data, steps, rollouts per step) as AVSD.
#
# Usage: launch/recipes/math_arithmetic_qwen3_8b.sh [--dry-run] [--help] [hydra overrides...]
# Environment: as math_avsd_qwen3_8b.sh (AVSD_EXPERIMENT defaults to math_arithmetic_qwen3_8b).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_recipe_args "$0" "$@"

AVSD_EXPERIMENT=${AVSD_EXPERIMENT:-math_arithmetic_qwen3_8b} exec bash "$RECIPES_DIR/math_avsd_qwen3_8b.sh" \
    algorithm.adv_estimator=avsd_arithmetic \
    "$@"
