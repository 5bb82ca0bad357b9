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
      hint+="${hint:+, }$m (env $m or --$(flag_of "$m"))"
    done
    die "$what needs ${missing[*]}: not set. Set $hint."
  fi
}

# flag_of VAR: the command-line flag that sets VAR (TPU_NAME -> name).
flag_of() {
  case $1 in
    TPU_NAME) printf 'name' ;;
    *) local f=${1,,}; printf '%s' "${f//_/-}" ;;
  esac
}

# need_value FLAG ARGC: a flag that takes a value got one.
need_value() {
  (($2 >= 2)) || die "$1 needs a value"
}

# entry_module ENTRY: the python module behind --entry.
entry_module() {
  case $1 in
    train) printf 'act_jax.train' ;;
    main) printf 'act_jax.main' ;;
    *) die "ENTRY must be train or main, got '$1'" ;;
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

# gpu_xla_flags: the XLA_FLAGS a GPU launch uses.
gpu_xla_flags() {
  local flags=${ACT_GPU_XLA_FLAGS-$ACT_DEFAULT_GPU_XLA_FLAGS}
  printf '%s' "$flags${XLA_FLAGS:+${flags:+ }$XLA_FLAGS}"
}
