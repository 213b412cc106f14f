#!/usr/bin/env bash
# The CPU toy run, through the same launch layer as the GPU recipes: AVSD on the toy arithmetic
# task (views full, partial, answer) with the tiny model shipped in verl_avsd/assets/toy_model,
# 20 steps of 16 prompts x 1 rollout, on the CPU platform and the `hf` rollout. No GPU, nothing
# downloaded; a few minutes on 2 cores. The same run as `verl-avsd demo`.
#
# Usage: launch/recipes/cpu_toy.sh [--dry-run] [--help] [hydra overrides...]
#   --dry-run   print the full command and exit (builds nothing)
#
# Before training it writes the toy data (python -m verl_avsd.toy.task) when the data folder has
# none, and, when the model folder holds no model, builds an untrained tiny one (rewards then
# stay near 0; `python -m verl_avsd.toy.warmup` trains the shipped one).
#
# Environment (defaults in brackets):
#   AVSD_MODEL          [verl_avsd/assets/toy_model]
#   AVSD_TOY_DATA_DIR   [RUN_DIR/data]
#   AVSD_OUTPUT_DIR     [runs]   the run goes to AVSD_OUTPUT_DIR/AVSD_EXPERIMENT
#   AVSD_EXPERIMENT     [cpu_toy]
#   AVSD_TIMEOUT_S      [1800]   verl waits forever when Ray lacks CPUs, so the run has a timeout
#   AVSD_PYTHON         interpreter with verl-avsd installed [.venv/bin/python, else python3]
#   AVSD_NNODES         [1]   AVSD_GPUS_PER_NODE [1]: data-parallel ranks, one per placeholder
#                       "GPU" (verl_avsd/cpu/cpu.yaml); the 16 prompts of a step are split
#                       between them, so their product must divide 16
#   RAY_ADDRESS         a Ray cluster to join (set by launch/submit_job.sh's Ray job and by
#                       launch/slurm_avsd.sbatch); each node must offer AVSD_GPUS_PER_NODE
#                       placeholder GPUs (launch/ray_start.sh --num-gpus 1). Unset: main_ppo starts
#                       its own Ray on this machine (one node only).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_recipe_args "$0" "$@"

# Data-parallel ranks. verl splits each step's 16 prompts between them; every rank then takes its
# share in one micro-batch.
prompts_per_step=16
nnodes=${AVSD_NNODES:-1}
gpus_per_node=${AVSD_GPUS_PER_NODE:-1}
[[ $nnodes =~ ^[1-9][0-9]*$ ]] || die "$0: AVSD_NNODES must be a whole number >= 1, got '$nnodes'"
[[ $gpus_per_node =~ ^[1-9][0-9]*$ ]] || die "$0: AVSD_GPUS_PER_NODE must be a whole number >= 1, got '$gpus_per_node'"
ranks=$((nnodes * gpus_per_node))
((prompts_per_step % ranks == 0)) ||
    die "$0: AVSD_NNODES x AVSD_GPUS_PER_NODE = $ranks ranks must divide the $prompts_per_step prompts of a step"
micro_batch=$((prompts_per_step / ranks))
[[ -n ${RAY_ADDRESS:-} ]] || ((nnodes == 1)) ||
    die "$0: AVSD_NNODES=$nnodes needs a Ray cluster of $nnodes nodes: set RAY_ADDRESS, or submit with launch/submit_job.sh (see launch/README.md)"

experiment=${AVSD_EXPERIMENT:-cpu_toy}
run_dir=$(absolute_path "${AVSD_OUTPUT_DIR:-runs}/$experiment")
data_dir=$(absolute_path "${AVSD_TOY_DATA_DIR:-$run_dir/data}")
model=$(resolve_local_path "${AVSD_MODEL:-$REPO_ROOT/verl_avsd/assets/toy_model}")

make_data=("$PYTHON" -m verl_avsd.toy.task --out "$data_dir" --n-train 512 --n-val 64 --seed 0)
if [[ ! -f $model/config.json ]]; then
    echo "note: no model in $model; using an untrained tiny model in $run_dir/model" >&2
    model=$run_dir/model
fi
make_model=("$PYTHON" -c 'import sys; from verl_avsd.toy_run import random_toy_model; random_toy_model(sys.argv[1])' "$model")

if ((DRY_RUN)); then
    [[ -f $data_dir/train.parquet ]] || echo "note: the run first writes the toy data: ${make_data[*]}" >&2
    [[ -f $model/config.json ]] || echo "note: the run first builds the tiny model: ${make_model[*]}" >&2
else
    mkdir -p "$run_dir"
    [[ -f $data_dir/train.parquet ]] || "${make_data[@]}"
    [[ -f $model/config.json ]] || "${make_model[@]}"
fi

# The overrides every CPU run needs (CPU platform, hf rollout, Ray CPUs, fp32, sdpa), from
# verl_avsd/cpu/cpu.yaml.
cpu_overrides_text=$("$PYTHON" -m verl_avsd.cpu 2>/dev/null) ||
    die "$0: '$PYTHON -m verl_avsd.cpu' failed; run it to see why (is verl-avsd installed? set AVSD_PYTHON)"
mapfile -t cpu_overrides <<<"$cpu_overrides_text"

cpu_overrides+=(trainer.nnodes="$nnodes" trainer.n_gpus_per_node="$gpus_per_node")
if [[ -n ${RAY_ADDRESS:-} ]]; then
    # Joining a cluster: its nodes declare their own CPUs and GPUs, and ray.init refuses
    # num_cpus/num_gpus when connecting to an existing cluster.
    cpu_overrides+=(ray_kwargs.ray_init.num_cpus=null ray_kwargs.ray_init.num_gpus=null)
else
    # main_ppo's own Ray: one placeholder GPU a rank
    cpu_overrides+=(ray_kwargs.ray_init.num_gpus="$gpus_per_node")
fi

overrides=(
    "${cpu_overrides[@]}"
    # --- the AVSD trainer and estimator; the view wording the toy model was warmed up on ---
    trainer.v1.trainer_mode=avsd_sync
    algorithm.adv_estimator=avsd
    '+algorithm.avsd.views=[full,partial,answer]'
    +algorithm.avsd.opsd_view=full
    "+algorithm.avsd.view_template='Reference ({view_name}):\n{view}\n\n{prompt}'"

    # --- toy model and data: 16 prompts per step, short prompts and answers ---
    actor_rollout_ref.model.path="$model"
    data.train_files="$data_dir/train.parquet"
    data.val_files="$data_dir/val.parquet"
    data.train_batch_size="$prompts_per_step"
    data.max_prompt_length=96
    data.max_response_length=48
    data.seed=0

    # --- one rollout per prompt; one on-policy update per step, each rank's share in one micro-batch ---
    actor_rollout_ref.rollout.n=1
    actor_rollout_ref.rollout.temperature=1.0
    actor_rollout_ref.actor.ppo_mini_batch_size="$prompts_per_step"
    actor_rollout_ref.actor.ppo_epochs=1
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu="$micro_batch"
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu="$micro_batch"
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu="$micro_batch"
    actor_rollout_ref.actor.optim.lr=1e-4
    actor_rollout_ref.actor.use_kl_loss=false
    actor_rollout_ref.actor.entropy_coeff=0

    # --- the toy task's exact-answer reward ---
    reward.custom_reward_function.path=pkg://verl_avsd.toy.task
    reward.custom_reward_function.name=compute_score

    # --- trainer: 20 steps, no validation or checkpoints ---
    trainer.total_training_steps=20
    trainer.val_before_train=false
    trainer.test_freq=-1
    trainer.save_freq=-1
    trainer.resume_mode=disable
    trainer.project_name=verl_avsd_toy
    trainer.experiment_name="$experiment"
    'trainer.logger=[console,file]'
    trainer.default_local_dir="$run_dir/checkpoints"
    +ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH="$run_dir/verl_metrics.jsonl"
    hydra.run.dir="$run_dir"
)

# Offline (nothing to download) and under a timeout, as every CPU run.
MAIN_PPO_LAUNCHER=(env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    timeout -k 30 "${AVSD_TIMEOUT_S:-1800}")
run_main_ppo "${overrides[@]}"
