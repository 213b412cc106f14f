#!/usr/bin/env bash
# AVSD on math, the paper's setting: Qwen3-8B with LoRA (rank 64, alpha 128), lr 5e-6 decaying to
# 3e-6, no weight decay, gradient clipping 0.1, 32 prompts per step with one rollout each, 200
# steps, 4096-token responses at temperature 0.7 / top-p 0.95 / top-k 20, thinking off, three
# views [full, partial, answer], vLLM rollout, math-verify reward. launch/paper_settings.yaml
# (shown in launch/README.md) lists every setting beside the paper's and the authors' script's.
#
# Usage: launch/recipes/math_avsd_qwen3_8b.sh [--dry-run] [--help] [hydra overrides...]
#   --dry-run   print the full python -m verl.trainer.main_ppo command and exit
#   overrides   appended after the recipe's own, so they win (e.g. 'trainer.logger=[console,wandb]');
#               a key this recipe sets is changed without a leading + (algorithm.avsd.teacher=current),
#               hydra refuses to add it twice
#
# Environment (defaults in brackets):
#   AVSD_MODEL          model path or hub id [Qwen/Qwen3-8B]
#   AVSD_TRAIN_FILES    [data/math/train.parquet]          from `verl-avsd prep math ... --out data/math`
#   AVSD_VAL_FILES      [data/math/eval_aime2024.parquet]  from `--eval aime2024=...`
#   AVSD_NNODES         [1]   AVSD_GPUS_PER_NODE [8]
#   AVSD_OUTPUT_DIR     [runs]  the run goes to AVSD_OUTPUT_DIR/AVSD_EXPERIMENT (on a filesystem all nodes share)
#   AVSD_EXPERIMENT     [math_avsd_qwen3_8b]
#   AVSD_PYTHON         interpreter with verl-avsd installed [.venv/bin/python, else python3]
#
# The run directory holds verl_metrics.jsonl (verl's file logger: one line per step), .hydra/
# (the composed config and the overrides) and checkpoints/. The baselines (math_*_qwen3_8b.sh)
# run this script with the few overrides that differ appended.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_recipe_args "$0" "$@"

model=$(resolve_local_path "${AVSD_MODEL:-Qwen/Qwen3-8B}")
train_files=$(resolve_local_path "${AVSD_TRAIN_FILES:-data/math/train.parquet}")
val_files=$(resolve_local_path "${AVSD_VAL_FILES:-data/math/eval_aime2024.parquet}")
experiment=${AVSD_EXPERIMENT:-math_avsd_qwen3_8b}
run_dir=$(absolute_path "${AVSD_OUTPUT_DIR:-runs}/$experiment")

overrides=(
    # --- the AVSD trainer and estimator ---
    trainer.v1.trainer_mode=avsd_sync
    algorithm.adv_estimator=avsd
    '+algorithm.avsd.views=[full,partial,answer]'
    +algorithm.avsd.opsd_view=full
    # teacher = the frozen base model; with LoRA that is the actor with its adapter disabled
    +algorithm.avsd.teacher=ref
    +algorithm.avsd.max_view_tokens=2048
    +algorithm.avsd.token_budget=16384
    +algorithm.avsd.epistemic_tau=0.0
    algorithm.use_kl_in_reward=false

    # --- data: 32 prompts per step; prompts within 1024 tokens (prep filters the problems) ---
    data.train_files="$train_files"
    data.val_files="$val_files"
    data.train_batch_size=32
    data.max_prompt_length=1024
    data.max_response_length=4096
    data.filter_overlong_prompts=true
    data.filter_overlong_prompts_workers=8
    data.shuffle=true
    data.seed=42
    # Qwen3 without thinking; the teacher reads the same chat template arguments
    +data.apply_chat_template_kwargs.enable_thinking=false

    # --- model: LoRA on every linear layer ---
    actor_rollout_ref.model.path="$model"
    actor_rollout_ref.model.lora_rank=64
    actor_rollout_ref.model.lora_alpha=128
    actor_rollout_ref.model.target_modules=all-linear
    actor_rollout_ref.model.use_remove_padding=true
    actor_rollout_ref.model.enable_gradient_checkpointing=true

    # --- actor: one on-policy update per step (mini-batch = the whole batch), no KL, no entropy ---
    actor_rollout_ref.actor.optim.lr=5e-6
    # the authors' optimizer (transformers' defaults): no weight decay, no warmup, and a linear decay
    # over 500 steps read at step 200, i.e. 5e-6 -> 3e-6. verl has only constant and cosine: a half
    # cosine down to 0.6 x lr over these 200 steps has the same start, end and mean
    actor_rollout_ref.actor.optim.weight_decay=0.0
    actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.0
    actor_rollout_ref.actor.optim.lr_scheduler_type=cosine
    actor_rollout_ref.actor.optim.min_lr_ratio=0.6
    actor_rollout_ref.actor.optim.num_cycles=0.5
    # the authors clip the gradient norm at 0.1 (verl: 1.0); verl 0.9.1's FSDP engine reads
    # optim.clip_grad, actor.grad_clip is set alike so the config shows one value
    actor_rollout_ref.actor.optim.clip_grad=0.1
    actor_rollout_ref.actor.grad_clip=0.1
    actor_rollout_ref.actor.ppo_mini_batch_size=32
    actor_rollout_ref.actor.ppo_epochs=1
    actor_rollout_ref.actor.use_kl_loss=false
    actor_rollout_ref.actor.entropy_coeff=0
    actor_rollout_ref.actor.loss_agg_mode=token-mean
    # micro-batches by token count (responses of up to 4096 tokens vary a lot in length)
    actor_rollout_ref.actor.use_dynamic_bsz=true
    actor_rollout_ref.actor.ppo_max_token_len_per_gpu=16384
    actor_rollout_ref.actor.fsdp_config.param_offload=false
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=false

    # --- rollout: vLLM, one sample per prompt at temperature 0.7, top-p 0.95, top-k 20 (the authors') ---
    actor_rollout_ref.rollout.name=vllm
    actor_rollout_ref.rollout.n=1
    actor_rollout_ref.rollout.temperature=0.7
    actor_rollout_ref.rollout.top_p=0.95
    actor_rollout_ref.rollout.top_k=20
    actor_rollout_ref.rollout.tensor_model_parallel_size=1
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6
    # LoRA: vLLM loads the base weights itself and receives only the adapter after each update
    actor_rollout_ref.rollout.load_format=safetensors
    actor_rollout_ref.rollout.layered_summon=true
    # validation (AIME 2024): Avg@8 sampled as the authors' evaluation (temperature 0.7, top-p 0.95),
    # the same for every method
    actor_rollout_ref.rollout.val_kwargs.n=8
    actor_rollout_ref.rollout.val_kwargs.do_sample=true
    actor_rollout_ref.rollout.val_kwargs.temperature=0.7
    actor_rollout_ref.rollout.val_kwargs.top_p=0.95
    actor_rollout_ref.rollout.val_kwargs.top_k=-1

    # --- reward: math-verify on the final answer ---
    reward.custom_reward_function.path=pkg://verl_avsd.rewards
    reward.custom_reward_function.name=compute_score

    # --- trainer: the paper's 200 steps, validation every 50, a checkpoint every 100 ---
    trainer.nnodes="${AVSD_NNODES:-1}"
    trainer.n_gpus_per_node="${AVSD_GPUS_PER_NODE:-8}"
    trainer.total_training_steps=200
    trainer.val_before_train=true
    trainer.test_freq=50
    trainer.save_freq=100
    trainer.max_actor_ckpt_to_keep=2
    trainer.resume_mode=auto
    trainer.project_name=verl_avsd
    trainer.experiment_name="$experiment"
    'trainer.logger=[console,file]'
    trainer.default_local_dir="$run_dir/checkpoints"
    # verl's file logger runs in a Ray actor, so its path travels in the job's runtime env
    +ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH="$run_dir/verl_metrics.jsonl"
    hydra.run.dir="$run_dir"
)

run_main_ppo "${overrides[@]}"
