#!/usr/bin/env bash
# OPSD baseline on math: the AVSD recipe (math_avsd_qwen3_8b.sh) with one view, the full worked
# solution, and the OPSD advantage log q_full - log p. Same model, data, steps and rollouts per
# step (32 prompts x 1) as AVSD.
#
# Usage: launch/recipes/math_opsd_qwen3_8b.sh [--dry-run] [--help] [hydra overrides...]
# Environment: as math_avsd_qwen3_8b.sh (AVSD_EXPERIMENT defaults to math_opsd_qwen3_8b).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_recipe_args "$0" "$@"

# Only the full view: OPSD reads nothing else, so the teacher scores nothing else.
AVSD_EXPERIMENT=${AVSD_EXPERIMENT:-math_opsd_qwen3_8b} exec bash "$RECIPES_DIR/math_avsd_qwen3_8b.sh" \
    algorithm.adv_estimator=opsd \
    'algorithm.avsd.views=[full]' \
    algorithm.avsd.opsd_view=full \
    "$@"
