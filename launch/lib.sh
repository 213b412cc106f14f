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

# use_ray_auth_mode: export RAY_AUTH_MODE, token or disabled, so that every Ray command of a run
# (the head's and workers' `ray start`, `ray status`, `ray job`, the driver's ray.init) agrees.
# Left unset, Ray 2.60 decides per command: `ray start --head` turns token auth on when a token
# exists (~/.ray/auth_token, which any local ray.init() creates), while worker `ray start`,
# `ray status` and `ray job` stay off and then fail with InvalidAuthToken. A RAY_AUTH_MODE
# already set wins; else token when Ray would find a token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH
# or ~/.ray/auth_token), else disabled. Other machines need the same token (a shared home, the
# file copied, or RAY_AUTH_TOKEN).
use_ray_auth_mode() {
    if [[ -z ${RAY_AUTH_MODE:-} ]]; then
        if [[ -n ${RAY_AUTH_TOKEN:-} || -s ${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token} ]]; then
            RAY_AUTH_MODE=token
        else
            RAY_AUTH_MODE=disabled
        fi
    fi
    case $RAY_AUTH_MODE in
        token | disabled) ;;
        *) die "RAY_AUTH_MODE must be 'token' or 'disabled', got '$RAY_AUTH_MODE'" ;;
    esac
    export RAY_AUTH_MODE
}

# routable_ip: this host's IPv4 address as other machines reach it: the source address of its
# route to a public address (how Ray picks a node's address), else the first non-loopback address
# of `hostname -I`; empty when the host has only loopback. (`hostname --ip-address` is no use: it
# reads /etc/hosts, which often maps the host name to 127.0.x.x.)
routable_ip() {
    local ip
    ip=$(ip -4 route get 8.8.8.8 2>/dev/null | sed -nE 's/.* src ([0-9.]+).*/\1/p' | head -n 1)
    if [[ -z $ip || $ip == 127.* ]]; then
        ip=$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+(\.[0-9]+){3}$' | grep -v '^127\.' | head -n 1 || true)
    fi
    echo "$ip"
}
