#!/usr/bin/env bash
# Consensus-only ablation on math: the AVSD recipe (math_avsd_qwen3_8b.sh) with the advantage
# A_G = mean_m (log q_m - log p) over the three views, without the gated residual. Everything
# else (views, model, data, steps, rollouts per step) as AVSD.
#
# Usage: launch/recipes/math_consensus_qwen3_8b.sh [--dry-run] [--help] [hydra overrides...]
# Environment: as math_avsd_qwen3_8b.sh (AVSD_EXPERIMENT defaults to math_consensus_qwen3_8b).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_recipe_args "$0" "$@"

AVSD_EXPERIMENT=${AVSD_EXPERIMENT:-math_consensus_qwen3_8b} exec bash "$RECIPES_DIR/math_avsd_qwen3_8b.sh" \
    algorithm.adv_estimator=avsd_consensus \
    "$@"
