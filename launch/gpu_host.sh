#!/usr/bin/env bash
# Single-host GPU launcher for act_jax: one process that sees every local GPU
# (8 on an H100/H200 box), so no jax.distributed set-up is needed and the mesh
# spans all local devices. Sets the GPU XLA flags and runs the command once.
#
# usage: launch/gpu_host.sh [OPTIONS] [--] CONFIG [ARGS...]
# Run `launch/gpu_host.sh --help` for the options.
set -euo pipefail

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/common.sh
source "$LAUNCH_DIR/common.sh"

usage() {
  cat <<'EOF'
usage: launch/gpu_host.sh [OPTIONS] [--] CONFIG [ARGS...]

Runs `python -m act_jax.train --config CONFIG --workdir WORKDIR ARGS...` once
on this host with all its GPUs. ARGS (e.g. --config.x=y) pass through verbatim.
Re-running the same command resumes from the latest checkpoint in WORKDIR.

options (environment variable in brackets; flags win):
  --workdir DIR       [WORKDIR] local path or gs://...; default
                      gs://BUCKET/act_jax/runs/RUN_NAME when BUCKET is set
  --bucket B          [BUCKET] GCS bucket (name or gs://name)
  --run-name R        [RUN_NAME] default: the config's file name
  --entry train|main  [ENTRY] act_jax.train (default) or act_jax.main
  --python PY         [PYTHON] interpreter (default: python)
  --env K=V           set K=V for the run (repeatable)
  --log-file F        [LOG_FILE] also append the output to F (tee)
  --dry-run           [DRY_RUN=1] print the command as "+ CMD", run nothing

XLA_FLAGS: ACT_GPU_XLA_FLAGS (default --xla_gpu_enable_latency_hiding_scheduler=true)
followed by the caller's XLA_FLAGS.
EOF
}

main() {
  local envs=() rest=()
  while (($#)); do
    local arg=$1 val="" has_val=0
    if [[ $arg == --*=* ]]; then
      val=${arg#*=}
      arg=${arg%%=*}
      has_val=1
    fi
    case $arg in
      --workdir | --bucket | --run-name | --entry | --python | --env | --log-file)
        if ((!has_val)); then
          need_value "$arg" $#
          val=$2
          shift
        fi
        case $arg in
          --workdir) WORKDIR=$val ;;
          --bucket) BUCKET=$val ;;
          --run-name) RUN_NAME=$val ;;
          --entry) ENTRY=$val ;;
          --python) PYTHON=$val ;;
          --env)
            [[ $val == [A-Za-z_]*=* ]] || die "--env wants KEY=VALUE, got '$val'"
            envs+=("$val") ;;
          --log-file) LOG_FILE=$val ;;
        esac
        ;;
      --dry-run)
        ((!has_val)) || die "--dry-run takes no value"
        DRY_RUN=1
        ;;
      -h | --help) usage; return 0 ;;
      --) shift; rest+=("$@"); break ;;
      -*) die "unknown option '$1' before CONFIG (options for act_jax go after CONFIG)" ;;
      *) rest+=("$@"); break ;;
    esac
    shift
  done
  ((${#rest[@]})) || { usage >&2; die "a CONFIG is required (e.g. configs/act_qwen.py)"; }

  local config=${rest[0]} module workdir run_name
  module=$(entry_module "${ENTRY:-train}")
  run_name=${RUN_NAME:-$(config_stem "$config")}
  if [[ -n ${WORKDIR:-} ]]; then
    workdir=$WORKDIR
  elif [[ -n ${BUCKET:-} ]]; then
    workdir="$(bucket_url "$BUCKET")/act_jax/runs/$run_name"
  else
    die "needs WORKDIR: not set. Set WORKDIR (env WORKDIR or --workdir) or BUCKET."
  fi

  # env -u: a stale coordinator in the caller's environment would make this
  # single process wait for peers that never come.
  local cmd=(env -u ACT_COORDINATOR_ADDRESS -u ACT_NUM_PROCESSES -u ACT_PROCESS_ID
    "XLA_FLAGS=$(gpu_xla_flags)" ${envs[@]+"${envs[@]}"}
    "${PYTHON:-python}" -m "$module" --config "$config" --workdir "$workdir"
    "${rest[@]:1}")
  if [[ -z ${LOG_FILE:-} ]]; then
    run_cmd "${cmd[@]}"
  elif is_dry; then
    printf '+ %s 2>&1 | %s\n' "$(shjoin "${cmd[@]}")" "$(shjoin tee -a "$LOG_FILE")"
  else
    printf '+ %s 2>&1 | %s\n' "$(shjoin "${cmd[@]}")" "$(shjoin tee -a "$LOG_FILE")" >&2
    mkdir -p "$(dirname "$LOG_FILE")"
    # pipefail: the exit status is the run's, not tee's.
    "${cmd[@]}" 2>&1 | tee -a "$LOG_FILE"
  fi
}

main "$@"
