# shellcheck shell=bash
# Sourced by the launch scripts (ray_start.sh, submit_job.sh, recipes/common.sh): the helpers all
# of them need. slurm_avsd.sbatch keeps its own copy: SLURM runs it from a spool folder, away
# from this checkout.

die() {
    echo "error: $*" >&2
    exit 2
}

# header_help FILE: the comment block at the top of FILE (after the shebang), its --help text.
header_help() {
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"
}
