#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to try launch/slurm_avsd.sbatch for real (the CPU
# toy recipe; `make slurm-up`, `make slurm-down`, tests/test_real_slurm.py and CI use it).
#
# Usage: launch/local_slurm.sh up|down|status [--dir DIR]
#   up       install slurm-wlm and munge when missing (apt-get, as root), write a private
#            slurm.conf, start munged, slurmctld and slurmd, wait until the node is idle
#   down     cancel this cluster's jobs and stop the daemons `up` started (by their PIDs)
#   status   say whether it is up
#   --dir DIR  config, state, logs, PIDs and munge key [AVSD_SLURM_DIR, else /tmp/avsd-slurm]
#
# Everything is private to DIR: its own munge socket and key, SLURM on ports 6398 (slurmctld)
# and 6399 (slurmd), so a system SLURM or munge on this machine is left alone. Point the SLURM
# commands at it with `export SLURM_CONF=DIR/slurm.conf` (printed by `up`), then e.g.
#   sbatch --nodes=1 --cpus-per-task=16 --export=ALL,AVSD_CPU=1,RECIPE=launch/recipes/cpu_toy.sh launch/slurm_avsd.sbatch
# The node is localhost (127.0.0.1) with 16 CPUs whatever the machine has
# (SlurmdParameters=config_overrides): Ray's CPU counts for the toy run are logical.
# Environment: AVSD_SLURM_CPUS [16], AVSD_SLURM_MEMORY_MB [20000], AVSD_SLURM_START_S [90].
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -ge 1 ]] || { header_help "$0" >&2; exit 2; }
case $1 in
    -h | --help) header_help "$0"; exit 0 ;;
    up | down | status) action=$1; shift ;;
    *) die "the first argument must be up, down or status, got '$1' (see --help)" ;;
esac
dir=${AVSD_SLURM_DIR:-/tmp/avsd-slurm}
while [[ $# -gt 0 ]]; do
    case $1 in
        --dir)
            [[ $# -ge 2 && -n $2 ]] || die "--dir needs a value"
            dir=$2
            shift 2
            ;;
        -h | --help) header_help "$0"; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
[[ $dir == /* ]] || dir=$PWD/$dir
export SLURM_CONF=$dir/slurm.conf
cpus=${AVSD_SLURM_CPUS:-16}
memory_mb=${AVSD_SLURM_MEMORY_MB:-20000}
start_s=${AVSD_SLURM_START_S:-90}

# is_up: slurmctld answers and the node takes jobs.
is_up() {
    [[ -f $SLURM_CONF ]] || return 1
    timeout 10 scontrol ping 2>/dev/null | grep -q 'is UP' || return 1
    timeout 10 sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'
}

# running PIDFILE: the PID in PIDFILE, when that process is still alive.
running() {
    local pid
    [[ -f $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

install_slurm() {
    local missing=()
    for tool in sbatch slurmctld slurmd munged mungekey; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null ||
        die "${missing[*]} not found: install slurm-wlm and munge (as root: apt-get install -y slurm-wlm munge)"
    echo "[slurm] installing slurm-wlm and munge (missing: ${missing[*]})" >&2
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq >&2 || die "apt-get update failed"
    timeout 900 apt-get install -y -qq slurm-wlm munge >&2 || die "apt-get install -y slurm-wlm munge failed"
}

write_config() {
    mkdir -p "$dir"/{state,spool,log,munge}
    # munged runs as the munge user and checks that its key and socket folders are its own
    chown munge:munge "$dir/munge"
    chmod 0755 "$dir/munge"
    if [[ ! -s $dir/munge/munge.key ]]; then
        setpriv --reuid=munge --regid=munge --init-groups mungekey --create --keyfile="$dir/munge/munge.key" >/dev/null
    fi
    cat >"$SLURM_CONF" <<EOF
# Written by launch/local_slurm.sh: a one-node cluster for tests, everything under $dir.
ClusterName=avsd-local
SlurmctldHost=localhost
SlurmctldPort=6398
SlurmdPort=6399
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# the toy run's Ray asks for more logical CPUs than a small machine has
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# start NAME COMMAND...: COMMAND in the background (its own session, output to DIR/log/NAME.out),
# its PID in DIR/NAME.daemon.pid.
start() {
    local name=$1
    shift
    setsid "$@" >"$dir/log/$name.out" 2>&1 </dev/null &
    echo $! >"$dir/$name.daemon.pid"
}

up() {
    if is_up; then
        echo "[slurm] already up ($SLURM_CONF)" >&2
    else
        install_slurm
        write_config
        running "$dir/munged.daemon.pid" >/dev/null ||
            start munged setpriv --reuid=munge --regid=munge --init-groups munged -F --socket="$dir/munge/munge.socket" \
                --key-file="$dir/munge/munge.key" --pid-file="$dir/munge/munged.pid" \
                --seed-file="$dir/munge/munged.seed" --log-file="$dir/log/munged.log"
        running "$dir/slurmctld.daemon.pid" >/dev/null || start slurmctld slurmctld -D -c -f "$SLURM_CONF"
        running "$dir/slurmd.daemon.pid" >/dev/null || start slurmd slurmd -D -N localhost -f "$SLURM_CONF"
        local waited=0
        until is_up; do
            for name in munged slurmctld slurmd; do
                running "$dir/$name.daemon.pid" >/dev/null ||
                    die "$name stopped while starting; its output: $(tail -n 20 "$dir/log/$name.out" 2>/dev/null)"
            done
            ((waited < start_s)) || die "SLURM not up after ${start_s}s; see $dir/log/"
            sleep 1
            waited=$((waited + 1))
        done
        echo "[slurm] up in ${waited}s: one node, $cpus CPUs, partition debug" >&2
    fi
    echo "export SLURM_CONF=$SLURM_CONF"
}

down() {
    if is_up; then
        timeout 30 scancel --full --user="$(id -un)" 2>/dev/null || true
        local waited=0
        while [[ -n $(timeout 10 squeue -h -o %i 2>/dev/null) ]] && ((waited < 30)); do
            sleep 1
            waited=$((waited + 1))
        done
    fi
    local name pid
    for name in slurmd slurmctld munged; do
        pid=$(running "$dir/$name.daemon.pid") || continue
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/$name.daemon.pid"
    done
    echo "[slurm] down ($dir kept: logs in $dir/log)" >&2
}

case $action in
    up) up ;;
    down) down ;;
    status)
        if is_up; then
            echo "[slurm] up: export SLURM_CONF=$SLURM_CONF"
            timeout 10 sinfo
        else
            echo "[slurm] not running ($SLURM_CONF)"
            exit 1
        fi
        ;;
esac
