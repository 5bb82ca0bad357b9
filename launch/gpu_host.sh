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

OPTS+=([--python]=PYTHON [--log-file]=LOG_FILE)

usage() {
  cat <<'EOF'
usage: launch/gpu_host.sh [OPTIONS] [--] CONFIG [ARGS...]

Runs `python -m act_jax.train --config CONFIG --workdir WORKDIR ARGS...` once
on this host with all its GPUs. ARGS (e.g. --config.x=y) pass through verbatim.
WORKDIR is a local path or gs://...; re-running the same command resumes from
the latest checkpoint there.

options (environment variable in brackets; flags win):
  --python PY             [PYTHON] interpreter (default: python)
  --log-file F            [LOG_FILE] also append the output to F (tee)
EOF
  options_usage
  gpu_xla_usage
}

main() {
  parse_options 1 "$@"
  need_config
  run_defaults ||
    die "needs WORKDIR: not set. Set WORKDIR (env WORKDIR or --workdir) or BUCKET."
  train_command "${PYTHON:-python}"

  # env -u: a stale coordinator in the caller's environment would make this
  # single process wait for peers that never come.
  local cmd=(env -u ACT_COORDINATOR_ADDRESS -u ACT_NUM_PROCESSES -u ACT_PROCESS_ID
    "XLA_FLAGS=$(gpu_xla_flags)" ${ENVS[@]+"${ENVS[@]}"} "${TRAIN[@]}")
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
