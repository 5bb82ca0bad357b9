#!/usr/bin/env bash
# SLURM launcher for act_jax on GPU clusters: writes an sbatch script for
# N nodes x 8 GPUs and submits it. One process per node, each driving all of
# its node's GPUs (as on a TPU host), so ACT_NUM_PROCESSES = nodes and the
# same `srun` command runs everywhere; only ACT_PROCESS_ID differs, taken
# from SLURM_PROCID inside each task. Process 0 (first node) hosts the
# jax.distributed coordinator.
#
# usage: launch/slurm.sh [OPTIONS] [--] CONFIG [ARGS...]
# Run `launch/slurm.sh --help` for the options.
#
# The generated script's $VARS stay literal here: they expand on the nodes.
# shellcheck disable=SC2016
set -euo pipefail

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/common.sh
source "$LAUNCH_DIR/common.sh"

OPTS+=([--nodes]=NODES [--gpus-per-node]=GPUS_PER_NODE [--partition]=PARTITION
  [--account]=ACCOUNT [--time]=TIME_LIMIT [--job-name]=JOB_NAME [--port]=COORDINATOR_PORT
  [--python]=PYTHON [--setup]=SETUP_CMD [--code-dir]=CODE_DIR [--log-dir]=LOG_DIR
  [--sbatch-arg]=SBATCH_ARGS+ [--script-out]=SCRIPT_OUT)
SWITCHES+=([--no-submit]=SUBMIT=0)

usage() {
  cat <<'EOF'
usage: launch/slurm.sh [OPTIONS] [--] CONFIG [ARGS...]

Writes an sbatch script that runs, on every node, the same
`python -m act_jax.train --config CONFIG --workdir WORKDIR ARGS...`, and
submits it with sbatch. ARGS (e.g. --config.x=y) pass through verbatim.
WORKDIR must be shared by all nodes (shared FS or gs://...); a requeued or
resubmitted job resumes from the latest checkpoint there. A dry run prints the
script, the commands and the srun command each node runs; it writes and submits
nothing. XLA_FLAGS (below) are fixed into the script when it is written.

options (environment variable in brackets; flags win):
  --nodes N               [NODES] nodes (= processes), default 2
  --gpus-per-node G       [GPUS_PER_NODE] default 8
  --partition P           [PARTITION]
  --account A             [ACCOUNT]
  --time T                [TIME_LIMIT] e.g. 2-00:00:00
  --job-name J            [JOB_NAME] default RUN_NAME
  --port PORT             [COORDINATOR_PORT] coordinator port on node 0, default 8476
  --python PY             [PYTHON] interpreter on the nodes (default: python)
  --setup CMD             [SETUP_CMD] shell line run first on the batch host,
                          e.g. 'source /shared/act_venv/bin/activate'
  --code-dir DIR          [CODE_DIR] checkout on the shared FS (default: this one)
  --log-dir DIR           [LOG_DIR] job logs (default CODE_DIR/runs/slurm)
  --sbatch-arg ARG        extra `#SBATCH ARG` line, e.g. --sbatch-arg=--qos=high
  --script-out F          [SCRIPT_OUT] where the script is written
                          (default LOG_DIR/JOB_NAME.sbatch)
  --no-submit             [SUBMIT=0] write the script, don't call sbatch
EOF
  options_usage
  gpu_xla_usage
}

# directive_ok VALUE NAME: #SBATCH lines are not shell-parsed, so no spaces.
directive_ok() {
  [[ $1 != *[[:space:]]* ]] || die "$2 may not contain whitespace: '$1'"
}

main() {
  parse_options 1 "$@"
  need_config

  local nodes=${NODES:-2} gpus=${GPUS_PER_NODE:-8} port=${COORDINATOR_PORT:-8476}
  [[ $nodes =~ ^[1-9][0-9]*$ ]] || die "NODES must be a positive integer, got '$nodes'"
  [[ $gpus =~ ^[1-9][0-9]*$ ]] || die "GPUS_PER_NODE must be a positive integer, got '$gpus'"
  [[ $port =~ ^[1-9][0-9]*$ ]] || die "COORDINATOR_PORT must be a port number, got '$port'"

  run_defaults ||
    die "needs WORKDIR: not set. Set WORKDIR (env WORKDIR or --workdir) or BUCKET."
  train_command "${PYTHON:-python}"
  local job code_dir log_dir script
  job=${JOB_NAME:-$RUN_NAME}
  code_dir=${CODE_DIR:-$(cd "$LAUNCH_DIR/.." && pwd)}
  log_dir=${LOG_DIR:-$code_dir/runs/slurm}
  script=${SCRIPT_OUT:-$log_dir/$job.sbatch}
  directive_ok "$job" JOB_NAME
  directive_ok "$log_dir" LOG_DIR
  local x
  for x in "${PARTITION:-}" "${ACCOUNT:-}" "${TIME_LIMIT:-}" ${SBATCH_ARGS[@]+"${SBATCH_ARGS[@]}"}; do
    directive_ok "$x" "an #SBATCH value"
  done

  # SLURM_PROCID is read inside each task; "$@" carries the command as words,
  # so the overrides are quoted once, here, and never re-parsed.
  local task=(bash -c 'export ACT_PROCESS_ID="$SLURM_PROCID"; exec "$@"' act_jax
    "${TRAIN[@]}")

  local body
  body=$(
    printf '#!/bin/bash\n'
    printf '# act_jax job written by launch/slurm.sh; submit with: sbatch %s\n' "$(shquote "$script")"
    printf '# One task per node; each process drives all %s GPUs of its node.\n' "$gpus"
    printf '#SBATCH --job-name=%s\n' "$job"
    printf '#SBATCH --nodes=%s\n' "$nodes"
    printf '#SBATCH --ntasks-per-node=1\n'
    printf '#SBATCH --gpus-per-node=%s\n' "$gpus"
    printf '#SBATCH --exclusive\n'
    printf '#SBATCH --requeue\n'
    printf '#SBATCH --open-mode=append\n'
    printf '#SBATCH --output=%s/%%x-%%j.out\n' "$log_dir"
    [[ -n ${PARTITION:-} ]] && printf '#SBATCH --partition=%s\n' "$PARTITION"
    [[ -n ${ACCOUNT:-} ]] && printf '#SBATCH --account=%s\n' "$ACCOUNT"
    [[ -n ${TIME_LIMIT:-} ]] && printf '#SBATCH --time=%s\n' "$TIME_LIMIT"
    for x in ${SBATCH_ARGS[@]+"${SBATCH_ARGS[@]}"}; do printf '#SBATCH %s\n' "$x"; done
    printf 'set -euo pipefail\n'
    printf 'cd %s\n' "$(shquote "$code_dir")"
    [[ -n ${SETUP_CMD:-} ]] && printf '%s\n' "$SETUP_CMD"
    for x in ${ENVS[@]+"${ENVS[@]}"}; do printf 'export %s\n' "$(shquote "$x")"; done
    printf '# Process 0 runs on the first node of the allocation and hosts the coordinator.\n'
    printf 'ACT_COORDINATOR_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)\n'
    printf 'export ACT_COORDINATOR_ADDRESS="$ACT_COORDINATOR_HOST:%s"\n' "$port"
    printf 'export ACT_NUM_PROCESSES="$SLURM_NNODES"\n'
    printf 'export XLA_FLAGS=%s\n' "$(shquote "$(gpu_xla_flags)")"
    printf 'echo "act_jax: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}):'
    printf ' $ACT_NUM_PROCESSES processes, coordinator $ACT_COORDINATOR_ADDRESS"\n'
    # --kill-on-bad-exit: one failed node ends all, instead of peers hanging
    # in a collective until the time limit.
    printf 'srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 %s\n' \
      "$(shjoin "${task[@]}")"
  )

  if is_dry; then
    printf '# ---- sbatch script %s ----\n%s\n# ---- end sbatch script ----\n' "$script" "$body"
    run_cmd mkdir -p "$log_dir"
    run_cmd sbatch "$script"
    printf '# srun starts one task per node; each runs:\n'
    local i
    for ((i = 0; i < nodes; i++)); do
      printf '# node %s: %s\n' "$i" "$(shjoin "ACT_COORDINATOR_ADDRESS=<first node>:$port" \
        "ACT_NUM_PROCESSES=$nodes" "ACT_PROCESS_ID=$i" "${TRAIN[@]}")"
    done
    return 0
  fi
  local submit=${SUBMIT:-1}
  if [[ $submit != 0 ]] && ! command -v sbatch >/dev/null; then
    die "sbatch not found: run this on a SLURM login node (or use --no-submit / --dry-run)"
  fi
  run_cmd mkdir -p "$log_dir" "$(dirname "$script")"
  printf '%s\n' "$body" >"$script"
  note "wrote $script"
  if [[ $submit != 0 ]]; then
    run_cmd sbatch "$script"
  else
    note "not submitted; submit with: sbatch $(shquote "$script")"
  fi
}

main "$@"
