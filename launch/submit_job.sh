#!/usr/bin/env bash
# Run a recipe on an existing Ray cluster as a Ray job:
#   ray job submit --address ADDRESS --working-dir . -- env AVSD_...=... bash RECIPE [overrides...]
#
# Usage: launch/submit_job.sh [--address URL] [--no-wait] [--dry-run] RECIPE [hydra overrides...]
#   RECIPE          a script under launch/recipes/, e.g. launch/recipes/math_avsd_qwen3_8b.sh
#   overrides       passed to the recipe, after its own (they win)
#   --address URL   the head's dashboard [RAY_ADDRESS, else http://127.0.0.1:8265]
#   --no-wait       return once the job is submitted instead of streaming its logs
#   --dry-run       print the `ray job submit` command instead of running it
#
# The working directory uploaded to the cluster is this checkout (Ray skips what .gitignore and
# .rayignore list, and refuses more than about 500 MiB: keep big data out of it, on storage the
# nodes share). Every AVSD_* variable exported here (AVSD_MODEL, AVSD_TRAIN_FILES, AVSD_OUTPUT_DIR,
# ...) is passed to the job, except AVSD_PYTHON and AVSD_RAY. Paths are read on the cluster: relative ones are relative to the
# uploaded copy, which Ray deletes eventually, so point AVSD_OUTPUT_DIR at shared storage.
# Environment: AVSD_RAY, the ray executable [ray from PATH]; RAY_AUTH_MODE, token or disabled
# [decided as launch/ray_start.sh does: token when a Ray token exists here, else disabled].
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
address=${RAY_ADDRESS:-http://127.0.0.1:8265}
no_wait=0
dry_run=0
recipe=""
recipe_args=()
while [[ $# -gt 0 ]]; do
    case $1 in
        -h | --help) header_help "$0"; exit 0 ;;
        --address)
            [[ $# -ge 2 && -n $2 ]] || die "--address needs a value, e.g. http://HEAD_IP:8265"
            address=$2
            shift 2
            ;;
        --no-wait) no_wait=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *)
            if [[ -z $recipe ]]; then recipe=$1; else recipe_args+=("$1"); fi
            shift
            ;;
    esac
done
[[ -n $recipe ]] || die "which recipe? e.g. launch/submit_job.sh launch/recipes/math_avsd_qwen3_8b.sh (see --help)"
[[ -f $recipe ]] || die "recipe '$recipe' not found"

# The job runs in the uploaded copy of the checkout, so the recipe is named relative to its root.
recipe_path=$(cd "$(dirname "$recipe")" && pwd)/$(basename "$recipe")
[[ $recipe_path == "$repo_root"/* ]] || die "recipe '$recipe' is not inside this checkout ($repo_root), so the job could not see it"
recipe_in_job=${recipe_path#"$repo_root"/}

# Every exported AVSD_* setting travels with the job (the cluster does not see this shell), but
# AVSD_PYTHON and AVSD_RAY, which name programs on this machine.
forwarded=()
while IFS= read -r name; do
    [[ $name == AVSD_* && $name != AVSD_PYTHON && $name != AVSD_RAY ]] && forwarded+=("$name=${!name}")
done < <(compgen -e | sort)
if [[ ${AVSD_OUTPUT_DIR:-} != /* ]]; then
    echo "warning: AVSD_OUTPUT_DIR is ${AVSD_OUTPUT_DIR:-unset}: the run directory (metrics, checkpoints)" \
        "lands in the job's temporary copy of the checkout; set it to an absolute path on shared storage" >&2
fi

command=("${AVSD_RAY:-ray}" job submit --address "$address" --working-dir .)
((no_wait == 0)) || command+=(--no-wait)
command+=(--)
((${#forwarded[@]} == 0)) || command+=(env "${forwarded[@]}")
command+=(bash "$recipe_in_job" "${recipe_args[@]}")

cd "$repo_root"
if ((dry_run)); then
    printf '%q ' "${command[@]}" | sed 's/ $//'
    echo
    exit 0
fi
use_ray_auth_mode
command -v "${command[0]}" >/dev/null || die "'${command[0]}' not found: activate the environment that has verl-avsd or set AVSD_RAY"
exec "${command[@]}"
