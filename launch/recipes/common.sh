# shellcheck shell=bash
# Sourced by every recipe in launch/recipes/ (never run on its own): argument parsing, --help,
# --dry-run, the Python interpreter and paths. The hydra overrides themselves live in each recipe.
#
# A recipe does, top to bottom:
#   source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
#   parse_recipe_args "$0" "$@"    # --help prints the recipe's header; sets DRY_RUN and EXTRA_OVERRIDES
#   overrides=(key=value ...)      # every setting, visible
#   run_main_ppo "${overrides[@]}" # runs python -m verl.trainer.main_ppo, EXTRA_OVERRIDES last (they win)

RECIPES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$RECIPES_DIR/../.." && pwd)

# The interpreter that has verl and verl-avsd installed: AVSD_PYTHON, else this checkout's .venv,
# else python3 from PATH (on a Ray cluster: the environment `ray start` ran in).
if [[ -n "${AVSD_PYTHON:-}" ]]; then
    PYTHON=$AVSD_PYTHON
elif [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
    PYTHON=$REPO_ROOT/.venv/bin/python
else
    PYTHON=python3
fi

DRY_RUN=0
EXTRA_OVERRIDES=()
# Words put before `python -m verl.trainer.main_ppo` (e.g. `env VAR=value`, `timeout 1800`).
MAIN_PPO_LAUNCHER=()

# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$RECIPES_DIR/../lib.sh"  # die, header_help, use_ray_auth_mode

# parse_recipe_args RECIPE ARGS...: --help, --dry-run; every other argument is a hydra override
# (key=value, +key=value, ++key=value or ~key) appended after the recipe's own, so it wins.
parse_recipe_args() {
    local recipe=$1 arg
    shift
    for arg in "$@"; do
        case $arg in
            -h | --help)
                header_help "$recipe"
                exit 0
                ;;
            --dry-run) DRY_RUN=1 ;;
            -*) die "$recipe: unknown option '$arg' (options: --dry-run, --help; anything else is a hydra override key=value)" ;;
            *=* | '~'*) EXTRA_OVERRIDES+=("$arg") ;;
            *) die "$recipe: argument '$arg' is not a hydra override (key=value, +key=value or ~key)" ;;
        esac
    done
}

# A path that exists here, made absolute: Ray actors (which read the data and write the run
# directory) do not run in this directory. Anything else (a hub model id, hdfs://..., a list)
# is returned unchanged.
resolve_local_path() {
    if [[ -e $1 && $1 != /* ]]; then
        echo "$PWD/$1"
    else
        echo "$1"
    fi
}

# An output path, always absolute (it may not exist yet), for the same reason.
absolute_path() {
    if [[ $1 == /* ]]; then echo "$1"; else echo "$PWD/$1"; fi
}

# One shell word, quoted only when the shell would otherwise split or expand it
# ([a,b] is a glob, {a,b} a brace expansion, ${x} an expansion): in single quotes, or in double
# quotes when it holds single quotes and nothing double quotes would expand.
shell_quote() {
    # a regex of what double quotes still expand: $ ` " ! and a backslash before $ ` " \
    # shellcheck disable=SC2016
    local double_quote_special='[$`"!]|\\[$`"\\]'
    if [[ $1 =~ ^[A-Za-z0-9_./:=+@%,-]+$ ]]; then
        printf '%s' "$1"
    elif [[ $1 == *"'"* && ! $1 =~ $double_quote_special ]]; then
        printf '"%s"' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

# print_main_ppo COMMAND_WORDS... -- OVERRIDES...: the command on one line, then one override a
# line, as a command one can paste into a shell.
print_main_ppo() {
    local line=""
    while (($# > 0)) && [[ $1 != -- ]]; do
        line+="$(shell_quote "$1") "
        shift
    done
    shift
    printf '%s\\\n' "$line"
    while (($# > 1)); do
        printf '    %s \\\n' "$(shell_quote "$1")"
        shift
    done
    printf '    %s\n' "$(shell_quote "$1")"
}

# run_main_ppo OVERRIDES...: exec python -m verl.trainer.main_ppo with the recipe's overrides, then
# the extra ones from the command line; with --dry-run, print that command and exit 0 instead.
run_main_ppo() {
    local command=("${MAIN_PPO_LAUNCHER[@]}" "$PYTHON" -m verl.trainer.main_ppo)
    local overrides=("$@" "${EXTRA_OVERRIDES[@]}")
    if ((DRY_RUN)); then
        print_main_ppo "${command[@]}" -- "${overrides[@]}"
        exit 0
    fi
    # Joining a cluster: ray.init with an explicit address (RAY_ADDRESS) never turns token auth on
    # by itself, so the driver gets the mode the head chose (lib.sh). A Ray job or the SLURM
    # script has set it already.
    [[ -z ${RAY_ADDRESS:-} ]] || use_ray_auth_mode
    exec "${command[@]}" "${overrides[@]}"
}
