#!/usr/bin/env bash
# AVSD on code: the paper recipe (math_avsd_qwen3_8b.sh: Qwen3-8B, LoRA 64/128, lr 5e-6 -> 3e-6,
# clipping 0.1, 32 prompts x 1 rollout, 200 steps, 4096-token responses, temperature 0.7, top-p
# 0.95, top-k 20, thinking off; the authors' code script has the same values) on the
# `verl-avsd prep code` output, with the code views:
#   reference  a reference program       (stored by prep code)
#   hint       the approach, read off it  (stored by prep code)
#   feedback   the rollout's own program run on the row's public tests in the sandbox, after
#              generation (built by the trainer, not stored; a rollout without a program has none)
# The reward runs the program on the hidden tests in the sandbox (share of tests passed).
#
# Usage: launch/recipes/code_avsd_qwen3_8b.sh [--dry-run] [--help] [hydra overrides...]
# Environment: as math_avsd_qwen3_8b.sh, with other defaults, plus the sandbox:
#   AVSD_TRAIN_FILES          [data/code/train.parquet]     from `verl-avsd prep code ... --out data/code`
#   AVSD_VAL_FILES            [data/code/eval_lcb.parquet]  from `--eval lcb=...`
#   AVSD_EXPERIMENT           [code_avsd_qwen3_8b]
#   AVSD_SANDBOX_ISOLATION    [auto]  bwrap | unshare | sandbox_fusion (for the feedback view and the reward)
#   AVSD_SANDBOX_FUSION_URL   [null]  a SandboxFusion server, e.g. http://host:8080/run_code
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_recipe_args "$0" "$@"

isolation=${AVSD_SANDBOX_ISOLATION:-auto}
fusion_url=${AVSD_SANDBOX_FUSION_URL:-null}

AVSD_TRAIN_FILES=${AVSD_TRAIN_FILES:-data/code/train.parquet} \
AVSD_VAL_FILES=${AVSD_VAL_FILES:-data/code/eval_lcb.parquet} \
AVSD_EXPERIMENT=${AVSD_EXPERIMENT:-code_avsd_qwen3_8b} \
    exec bash "$RECIPES_DIR/math_avsd_qwen3_8b.sh" \
    'algorithm.avsd.views=[reference,hint,feedback]' \
    algorithm.avsd.opsd_view=reference \
    +algorithm.avsd.sandbox_isolation="$isolation" \
    +algorithm.avsd.sandbox_fusion_url="$fusion_url" \
    +reward.custom_reward_function.reward_kwargs.code_reward=fraction \
    +reward.custom_reward_function.reward_kwargs.sandbox_isolation="$isolation" \
    +reward.custom_reward_function.reward_kwargs.sandbox_fusion_url="$fusion_url" \
    data.max_prompt_length=2048 \
    "$@"
