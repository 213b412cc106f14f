#!/usr/bin/env bash
# The recipe to try first: AVSD on math with Qwen3-1.7B on ONE GPU (about 40 GB is plenty). It is
# the paper recipe (math_avsd_qwen3_8b.sh) scaled down: 8 prompts per step (one rollout each),
# 2048-token responses, LoRA rank 32 / alpha 64, 100 steps, 4 validation samples per problem.
# Same data, views, reward, optimizer (lr 5e-6 decaying to 3e-6, clipping 0.1, no weight decay),
# sampling (temperature 0.7, top-p 0.95, top-k 20) and thinking mode; launch/paper_settings.yaml
# lists what it scales down.
#
# Usage: launch/recipes/small_qwen3_1p7b_1gpu.sh [--dry-run] [--help] [hydra overrides...]
# Environment: as math_avsd_qwen3_8b.sh, except AVSD_MODEL defaults to Qwen/Qwen3-1.7B
# (Qwen/Qwen3-0.6B fits smaller GPUs) and the node and GPU counts are fixed to 1.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_recipe_args "$0" "$@"

AVSD_MODEL=${AVSD_MODEL:-Qwen/Qwen3-1.7B} \
AVSD_EXPERIMENT=${AVSD_EXPERIMENT:-small_qwen3_1p7b_1gpu} \
    exec bash "$RECIPES_DIR/math_avsd_qwen3_8b.sh" \
    trainer.nnodes=1 \
    trainer.n_gpus_per_node=1 \
    data.train_batch_size=8 \
    actor_rollout_ref.actor.ppo_mini_batch_size=8 \
    data.max_response_length=2048 \
    actor_rollout_ref.model.lora_rank=32 \
    actor_rollout_ref.model.lora_alpha=64 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.5 \
    actor_rollout_ref.rollout.val_kwargs.n=4 \
    trainer.total_training_steps=100 \
    trainer.test_freq=25 \
    trainer.save_freq=50 \
    "$@"
