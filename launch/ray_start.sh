#!/usr/bin/env bash
# Start a Ray head or a Ray worker on this node for verl-avsd runs.
#
# Usage:
#   launch/ray_start.sh head   [options] [-- more `ray start` flags]
#   launch/ray_start.sh worker --address HEAD_IP:PORT [options] [-- more `ray start` flags]
#
# Options (default in brackets):
#   --port N               head: GCS port the workers and drivers connect to [6379]
#   --dashboard-port N     head: dashboard and job server, used by `ray job submit` [8265]
#   --address HOST:PORT    worker: the head's GCS address (required)
#   --node-ip IP           this node's address as the other nodes reach it [Ray's own guess]
#   --num-gpus N           GPUs Ray may schedule on this node [Ray detects them; respects CUDA_VISIBLE_DEVICES]
#   --num-cpus N           CPUs Ray may schedule on this node [Ray detects them]
#   --object-store-gb N    shared-memory object store size in GiB [Ray's default: 30% of RAM]
#   --temp-dir DIR         Ray's session/log folder on this node [/tmp/ray]; keep it short:
#                          Ray's unix socket paths under it must stay within ~107 characters
#   --block                stay in the foreground until Ray stops (what srun and containers need)
#   --dry-run              print the `ray start` command instead of running it
#   -h, --help
#   -- FLAGS...            passed to `ray start` as they are, after the options above: e.g.
#                          -- --dashboard-agent-listen-port=52366 when another Ray on the host has
#                          the default 52365 ("No available agent to submit job" otherwise)
#
# Environment: AVSD_RAY, the ray executable [ray from PATH: activate the environment with verl-avsd].
# RAY_AUTH_MODE, token or disabled [token when a Ray token exists: RAY_AUTH_TOKEN,
# RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, which any local ray.init() creates; else disabled],
# exported to `ray start` so that the head and the workers agree (launch/submit_job.sh and
# launch/slurm_avsd.sbatch decide the same way). In token mode every node and client needs the
# same token. Job submission needs Ray's dashboard (pip install "ray[default]"). After the head
# starts, this prints how to connect workers and submit a recipe (launch/submit_job.sh).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# An option's value: present and not another option.
value_of() {
    [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "$1 needs a value (see --help)"
    echo "$2"
}

[[ $# -ge 1 ]] || { header_help "$0" >&2; exit 2; }
case $1 in
    -h | --help) header_help "$0"; exit 0 ;;
    head | worker) role=$1; shift ;;
    *) die "the first argument must be 'head' or 'worker', got '$1' (see --help)" ;;
esac

port=6379
dashboard_port=8265
address=""
node_ip=""
num_gpus=""
num_cpus=""
object_store_gb=""
temp_dir=""
block=0
dry_run=0
ray_start_flags=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --) shift; ray_start_flags=("$@"); break ;;
        --port) port=$(value_of "$@"); shift 2 ;;
        --dashboard-port) dashboard_port=$(value_of "$@"); shift 2 ;;
        --address) address=$(value_of "$@"); shift 2 ;;
        --node-ip) node_ip=$(value_of "$@"); shift 2 ;;
        --num-gpus) num_gpus=$(value_of "$@"); shift 2 ;;
        --num-cpus) num_cpus=$(value_of "$@"); shift 2 ;;
        --object-store-gb) object_store_gb=$(value_of "$@"); shift 2 ;;
        --temp-dir) temp_dir=$(value_of "$@"); shift 2 ;;
        --block) block=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) header_help "$0"; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

is_count() { [[ $1 =~ ^[0-9]+$ ]]; }
is_count "$port" || die "--port must be a number, got '$port'"
is_count "$dashboard_port" || die "--dashboard-port must be a number, got '$dashboard_port'"
[[ -z $num_gpus ]] || is_count "$num_gpus" || die "--num-gpus must be a whole number, got '$num_gpus'"
[[ -z $num_cpus ]] || is_count "$num_cpus" || die "--num-cpus must be a whole number, got '$num_cpus'"
[[ -z $object_store_gb ]] || is_count "$object_store_gb" || die "--object-store-gb must be a whole number, got '$object_store_gb'"
if [[ $role == worker ]]; then
    [[ -n $address ]] || die "worker needs --address HEAD_IP:PORT (the head prints it)"
    [[ $address == *:* ]] || die "--address must be HOST:PORT, got '$address'"
else
    [[ -z $address ]] || die "--address is a worker option; the head listens on --port"
fi

ray=${AVSD_RAY:-ray}
command=("$ray" start)
if [[ $role == head ]]; then
    # 0.0.0.0: the dashboard (and with it `ray job submit`) is reachable from other machines
    command+=(--head "--port=$port" --dashboard-host=0.0.0.0 "--dashboard-port=$dashboard_port")
else
    command+=("--address=$address")
fi
[[ -z $temp_dir ]] || command+=("--temp-dir=$temp_dir")
[[ -z $node_ip ]] || command+=("--node-ip-address=$node_ip")
[[ -z $num_gpus ]] || command+=("--num-gpus=$num_gpus")
[[ -z $num_cpus ]] || command+=("--num-cpus=$num_cpus")
[[ -z $object_store_gb ]] || command+=("--object-store-memory=$((object_store_gb * 1024 * 1024 * 1024))")
((block == 0)) || command+=(--block)
command+=("${ray_start_flags[@]}")
use_ray_auth_mode
# SLURM sets both CUDA_ and ROCR_VISIBLE_DEVICES for some gres setups; verl's workers (started
# by this node's Ray, with its environment) refuse to start when both are set.
[[ -z ${CUDA_VISIBLE_DEVICES:-} ]] || unset ROCR_VISIBLE_DEVICES

# How to reach this node: --node-ip, else the address Ray picks itself (the source address of
# the route out), else loopback (a host with no network: single-node only).
ip=${node_ip:-$(routable_ip)}
ip=${ip:-127.0.0.1}
auth_prefix=""
[[ $RAY_AUTH_MODE == disabled ]] || auth_prefix="RAY_AUTH_MODE=token "
how_to_connect() {
    [[ $role == head ]] || return 0
    cat >&2 <<EOF
Ray head on $ip: GCS $ip:$port, dashboard http://$ip:$dashboard_port, auth $RAY_AUTH_MODE
  start a worker on each other node:  launch/ray_start.sh worker --address $ip:$port
  run a recipe on the cluster:        RAY_ADDRESS=http://$ip:$dashboard_port launch/submit_job.sh launch/recipes/math_avsd_qwen3_8b.sh
  or from this node:                  RAY_ADDRESS=$ip:$port bash launch/recipes/math_avsd_qwen3_8b.sh
  see the nodes:                      ${auth_prefix}ray status --address $ip:$port
EOF
    if [[ $RAY_AUTH_MODE == token ]]; then
        echo "  token auth is on: every other node and client needs the same token (copy ~/.ray/auth_token or set RAY_AUTH_TOKEN)" >&2
    fi
}

if ((dry_run)); then
    how_to_connect
    printf '%q ' "${command[@]}" | sed 's/ $//'
    echo
    exit 0
fi
command -v "$ray" >/dev/null || die "'$ray' not found: activate the environment that has verl-avsd (e.g. source .venv/bin/activate) or set AVSD_RAY"
if ((block)); then
    # `ray start --block` stays in the foreground: say how to connect now
    how_to_connect
    exec "${command[@]}"
fi
"${command[@]}" || die "'${command[*]}' failed (exit $?; RAY_AUTH_MODE=$RAY_AUTH_MODE)"
how_to_connect
