# Helpers shared by the act_jax launchers; sourced, never run.
# One place for quoting, dry runs and required variables, so that what a dry
# run prints is exactly what a real run executes.
# shellcheck shell=bash

# XLA flags every GPU launch starts from; the caller's XLA_FLAGS come after
# them, so a user's setting of the same flag wins. Override the defaults with
# ACT_GPU_XLA_FLAGS. Each flag is checked against the pinned jaxlib by
# tests/test_launch.py (XLA aborts on an unknown flag).
ACT_DEFAULT_GPU_XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true"

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

note() {
  printf '%s\n' "$*" >&2
}

# shquote WORD: quote one word so that any POSIX shell reads it back verbatim.
# Single quotes make everything literal ($, `, ", \, newlines); a ' inside
# becomes '\''. Plain words stay unquoted so printed commands stay readable.
shquote() {
  local s=$1 q="'\\''"
  if [[ -n $s && $s != *[!A-Za-z0-9_./=:,@%+-]* ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/$q}"
  fi
}

# shjoin WORD...: the words as one command line, each word quoted.
shjoin() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(shquote "$word")"
  done
  printf '%s' "$out"
}

# is_dry: true when --dry-run was given or DRY_RUN is set to anything but 0.
is_dry() {
  [[ -n ${DRY_RUN:-} && ${DRY_RUN} != 0 ]]
}

# run_cmd CMD...: run CMD, or under a dry run print it as "+ CMD" on stdout.
# Real runs echo the same line on stderr first, like `set -x`.
run_cmd() {
  if is_dry; then
    printf '+ %s\n' "$(shjoin "$@")"
  else
    printf '+ %s\n' "$(shjoin "$@")" >&2
    "$@"
  fi
}

# require SUBCOMMAND VAR...: fail, naming every unset variable, before
# anything runs. Each VAR may be set in the environment or by its flag.
require() {
  local what=$1 name missing=()
  shift
  for name in "$@"; do
    [[ -n ${!name:-} ]] || missing+=("$name")
  done
  if ((${#missing[@]})); then
    local hint="" m
    for m in "${missing[@]}"; do
      hint+="${hint:+, }$m (env $m or $(flag_of "$m"))"
    done
    die "$what needs ${missing[*]}: not set. Set $hint."
  fi
}

# Options every launcher takes; each adds its own before parse_options. OPTS:
# flag -> the variable its value sets (VAR+: appended to the array VAR, for a
# repeatable flag); SWITCHES: flag -> VAR=VALUE.
declare -A OPTS=([--workdir]=WORKDIR [--bucket]=BUCKET [--run-name]=RUN_NAME
  [--entry]=ENTRY [--env]=ENVS+)
declare -A SWITCHES=([--dry-run]=DRY_RUN=1)

# options_usage: the usage lines of the options every launcher takes.
options_usage() {
  cat <<'EOF'
  --workdir DIR           [WORKDIR] run directory; default
                          gs://BUCKET/act_jax/runs/RUN_NAME when BUCKET is set
  --bucket B              [BUCKET] GCS bucket (name or gs://name)
  --run-name R            [RUN_NAME] default: the config's file name
  --entry main|train      [ENTRY] act_jax.main, the ACT pipeline (default), or
                          act_jax.train, one stage (e.g. configs/tiny_cpu.py)
  --env K=V               export K=V for the run (repeatable)
  --dry-run               [DRY_RUN=1] print each command as "+ CMD", run nothing
EOF
}

# parse_options CONFIG_FOLLOWS ARGS...: set the variable of each option in
# ARGS (--flag VALUE or --flag=VALUE); REST gets the first other word and all
# after it (or all after `--`). CONFIG_FOLLOWS=1: that word is CONFIG, so an
# unknown option is most likely one for act_jax put before it.
parse_options() {
  local config_follows=$1 arg val has_val var
  shift
  for var in "${OPTS[@]}"; do
    [[ $var != *+ ]] || declare -ga "${var%+}=()"
  done
  REST=()
  while (($#)); do
    arg=$1 val="" has_val=0
    if [[ $arg == --*=* ]]; then
      val=${arg#*=}
      arg=${arg%%=*}
      has_val=1
    fi
    case $arg in
      -h | --help) usage; exit 0 ;;
      --) shift; REST=("$@"); break ;;
      -*)
        if [[ -n ${SWITCHES[$arg]:-} ]]; then
          ((!has_val)) || die "$arg takes no value"
          var=${SWITCHES[$arg]}
          printf -v "${var%%=*}" '%s' "${var#*=}"
        elif [[ -n ${OPTS[$arg]:-} ]]; then
          if ((!has_val)); then
            (($# >= 2)) || die "$arg needs a value"
            val=$2
            shift
          fi
          [[ $arg != --env || $val == [A-Za-z_]*=* ]] ||
            die "--env wants KEY=VALUE, got '$val'"
          set_option "${OPTS[$arg]}" "$val"
        elif ((config_follows)); then
          die "unknown option '$1' before CONFIG (options for act_jax go after CONFIG)"
        else
          die "unknown option '$1'"
        fi
        ;;
      *) REST=("$@"); break ;;
    esac
    shift
  done
}

# set_option VAR VALUE: VAR=VALUE, or for VAR+ append VALUE to the array VAR.
set_option() {
  if [[ $1 == *+ ]]; then
    local -n list=${1%+}
    list+=("$2")
  else
    printf -v "$1" '%s' "$2"
  fi
}

# flag_of VAR: the flag that sets VAR (TPU_NAME -> --name).
flag_of() {
  local flag
  for flag in "${!OPTS[@]}"; do
    [[ ${OPTS[$flag]} != "$1" ]] || printf '%s' "$flag"
  done
}

# need_config: REST starts with a CONFIG.
need_config() {
  ((${#REST[@]})) || { usage >&2; die "a CONFIG is required (e.g. configs/paper_qwen3_8b.py)"; }
}

# run_defaults: default RUN_NAME from the CONFIG in REST and WORKDIR to the
# run's directory in BUCKET; false when neither WORKDIR nor BUCKET is set.
run_defaults() {
  RUN_NAME=${RUN_NAME:-$(config_stem "${REST[0]}")}
  if [[ -z ${WORKDIR:-} ]]; then
    [[ -n ${BUCKET:-} ]] || return 1
    WORKDIR="$(bucket_url "$BUCKET")/act_jax/runs/$RUN_NAME"
  fi
}

# train_command PYTHON: TRAIN, the command every process runs:
# PYTHON -m MODULE --config CONFIG --workdir WORKDIR ARGS..., REST = CONFIG ARGS...
train_command() {
  local module
  module=$(entry_module "${ENTRY:-main}")
  # shellcheck disable=SC2034  # TRAIN is for the launcher that sources this
  TRAIN=("$1" -m "$module" --config "${REST[0]}" --workdir "$WORKDIR" "${REST[@]:1}")
}

# entry_module ENTRY: the python module behind --entry.
entry_module() {
  case $1 in
    train) printf 'act_jax.train' ;;
    main) printf 'act_jax.main' ;;
    *) die "ENTRY must be main or train, got '$1'" ;;
  esac
}

# config_stem CONFIG: default run name, stable across re-launches so that the
# same command finds the same workdir and resumes (configs/x.py:arg -> x_arg).
config_stem() {
  local base=${1##*/} arg=""
  if [[ $base == *:* ]]; then
    arg=${base#*:}
    base=${base%%:*}
  fi
  base=${base%.py}
  [[ -n $arg ]] && base+="_$arg"
  printf '%s' "${base//[^A-Za-z0-9_.-]/_}"
}

# bucket_url BUCKET: gs://name from "name", "gs://name" or "gs://name/".
bucket_url() {
  local b=${1%/}
  [[ $b == gs://* ]] || b="gs://$b"
  printf '%s' "$b"
}

# gpu_xla_usage: the usage note on gpu_xla_flags.
gpu_xla_usage() {
  printf "\nXLA_FLAGS: ACT_GPU_XLA_FLAGS (default %s)\nfollowed by the caller's XLA_FLAGS.\n" \
    "$ACT_DEFAULT_GPU_XLA_FLAGS"
}

# gpu_xla_flags: the XLA_FLAGS a GPU launch uses.
gpu_xla_flags() {
  local flags=${ACT_GPU_XLA_FLAGS-$ACT_DEFAULT_GPU_XLA_FLAGS}
  printf '%s' "$flags${XLA_FLAGS:+${flags:+ }$XLA_FLAGS}"
}
