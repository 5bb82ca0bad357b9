#!/usr/bin/env bash
# Cloud TPU VM launcher for act_jax: create a TPU VM (or pod slice), put the
# code on every worker, run one config with the same command on every worker,
# follow its log, stop it, delete the VM. On a pod slice jax.distributed finds
# its peers from the TPU metadata, so "the same command everywhere" is the
# whole multi-host story; the workdir is on GCS so every worker sees the same
# checkpoints and a re-run of the same command resumes.
#
# Run `launch/tpu_vm.sh help` for usage; launch/README.md has walk-throughs.
set -euo pipefail

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/common.sh
source "$LAUNCH_DIR/common.sh"

OPTS+=([--project]=PROJECT [--zone]=ZONE [--name]=TPU_NAME
  [--accelerator-type]=ACCELERATOR_TYPE [--runtime-version]=RUNTIME_VERSION [--qr-id]=QR_ID
  [--git]=GIT_URL [--ref]=GIT_REF [--python-version]=PYTHON_VERSION [--worker]=WORKER
  [--lines]=LOG_LINES)
SWITCHES+=([--spot]=SPOT=1 [--direct]=QUEUED=0 [--wait]=WAIT=1 [--detach]=DETACH=1)

usage() {
  cat <<'EOF'
usage: launch/tpu_vm.sh SUBCOMMAND [OPTIONS] [--] [CONFIG [ARGS...]]

subcommands (variables each one requires):
  create   create the TPU VM; a queued resource unless --direct
           (PROJECT ZONE TPU_NAME ACCELERATOR_TYPE); `-- FLAGS...` go to gcloud
  setup    copy this checkout (or --git clone) to every worker and install the
           package (pip install -e ".[tpu]") into a venv there
           (PROJECT ZONE TPU_NAME)
  run      start CONFIG on every worker with the same command, then follow
           worker 0's log (PROJECT ZONE TPU_NAME, BUCKET or --workdir gs://...).
           Everything after CONFIG (e.g. --config.x=y) is passed verbatim;
           --workdir, --bucket, --entry and --env are for run only.
  logs     follow a run's log (PROJECT ZONE TPU_NAME)
  stop     SIGTERM the run on every worker (PROJECT ZONE TPU_NAME)
  status   describe the queued resource / TPU VM (PROJECT ZONE TPU_NAME)
  delete   delete the TPU VM and its queued resource (PROJECT ZONE TPU_NAME)

options (environment variable in brackets; flags win):
  --project P             [PROJECT] GCP project
  --zone Z                [ZONE] e.g. us-east5-a
  --name N                [TPU_NAME] TPU VM name
  --accelerator-type T    [ACCELERATOR_TYPE] v5litepod-8 (alias v5e-8),
                          v5p-64, v6e-16, ...
  --runtime-version V     [RUNTIME_VERSION] default from the accelerator type
  --spot                  [SPOT=1] spot capacity (preemptible; see README)
  --direct                [QUEUED=0] `tpu-vm create` instead of a queued resource
  --qr-id ID              [QR_ID] queued resource id (default TPU_NAME)
  --wait                  [WAIT=1] create: block until the TPU is ACTIVE
  --git URL               [GIT_URL] setup: git clone URL instead of copying
  --ref REF               [GIT_REF] setup: commit/branch/tag to check out
  --python-version X.Y    [PYTHON_VERSION] setup: venv python (default 3.12)
  --detach                [DETACH=1] run: start and return, don't follow the log
  --worker W              [WORKER] logs: worker index or `all` (default 0)
  --lines N               [LOG_LINES] logs: lines of history to show (default 100)
EOF
  options_usage
  cat <<'EOF'

--run-name also picks the run that logs and stop act on (default: the latest).
remote layout (relative to each worker's home): CODE_DIR=act_jax,
VENV_DIR=act_jax_venv, LOG_DIR=act_jax_logs (override by environment).
EOF
}

# rpath PATH: a worker path for a remote command; relative means "under ~".
rpath() {
  # shellcheck disable=SC2088  # the ~ is for the worker's shell to expand
  if [[ $1 == /* ]]; then shquote "$1"; else printf '~/%s' "$(shquote "$1")"; fi
}

# runtime_for TYPE: the TPU software version that matches an accelerator.
runtime_for() {
  case $1 in
    v5litepod-*) printf 'v2-alpha-tpuv5-lite' ;;
    v5p-*) printf 'v2-alpha-tpuv5' ;;
    v6e-*) printf 'v2-alpha-tpuv6e' ;;
    v4-*) printf 'tpu-ubuntu2204-base' ;;
    *) die "no default runtime for ACCELERATOR_TYPE=$1; set RUNTIME_VERSION" ;;
  esac
}

# check_run_name NAME: run names become file and GCS path names.
check_run_name() {
  [[ $1 =~ ^[A-Za-z0-9_.-]+$ ]] ||
    die "RUN_NAME may hold only letters, digits, _ . -; got '$1'"
}

# gssh WORKER REMOTE_CMD: run a shell command on TPU workers over gcloud ssh.
gssh() {
  run_cmd gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" \
    --zone="$ZONE" --worker="$1" --command="$2"
}

cmd_create() {
  require create PROJECT ZONE TPU_NAME ACCELERATOR_TYPE
  local accel=$ACCELERATOR_TYPE
  [[ $accel == v5e-* ]] && accel="v5litepod-${accel#v5e-}"
  [[ $accel =~ ^v[0-9][a-z]*(pod)?-[0-9]+$ ]] ||
    die "ACCELERATOR_TYPE '$ACCELERATOR_TYPE' is not like v5litepod-8, v5p-64, v6e-16"
  local runtime=${RUNTIME_VERSION:-$(runtime_for "$accel")}
  local spot=() qr_id=${QR_ID:-$TPU_NAME}
  [[ ${SPOT:-0} != 0 ]] && spot=(--spot)
  if [[ ${QUEUED:-1} != 0 ]]; then
    run_cmd gcloud compute tpus queued-resources create "$qr_id" \
      --node-id="$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
      --accelerator-type="$accel" --runtime-version="$runtime" \
      ${spot[@]+"${spot[@]}"} ${REST[@]+"${REST[@]}"}
    [[ ${WAIT:-0} != 0 ]] && wait_active "$qr_id"
  else
    run_cmd gcloud compute tpus tpu-vm create "$TPU_NAME" --project="$PROJECT" \
      --zone="$ZONE" --accelerator-type="$accel" --version="$runtime" \
      ${spot[@]+"${spot[@]}"} ${REST[@]+"${REST[@]}"}
  fi
  return 0
}

# wait_active QR_ID: poll the queued resource until its TPU is ACTIVE, so
# `create --wait && setup && run` can be scripted.
wait_active() {
  local describe=(gcloud compute tpus queued-resources describe "$1"
    --project="$PROJECT" --zone="$ZONE" --format='value(state.state)')
  if is_dry; then
    run_cmd "${describe[@]}"
    return 0
  fi
  local state
  while true; do
    state=$("${describe[@]}") || die "could not describe queued resource $1"
    case $state in
      ACTIVE) note "queued resource $1 is ACTIVE"; return 0 ;;
      FAILED | SUSPENDED | SUSPENDING) die "queued resource $1 is $state" ;;
      *) note "queued resource $1 is $state; waiting"; sleep 30 ;;
    esac
  done
}

cmd_setup() {
  require setup PROJECT ZONE TPU_NAME
  local code venv py=${PYTHON_VERSION:-3.12} fetch
  code=$(rpath "$CODE_DIR")
  venv=$(rpath "$VENV_DIR")
  if [[ -n ${GIT_URL:-} ]]; then
    # Clone fresh on each worker; a reused checkout is fetched and reset.
    # A branch name means the remote's branch, as just fetched.
    fetch="if [ -d $code/.git ]; then git -C $code fetch --tags origin; \
else rm -rf $code && git clone $(shquote "$GIT_URL") $code; fi; \
r=$(shquote "${GIT_REF:-origin/HEAD}"); \
if git -C $code rev-parse -q --verify \"origin/\$r\" >/dev/null; then r=\"origin/\$r\"; fi; \
git -C $code checkout --force --detach \"\$r\""
  else
    # Ship this checkout as it is (tracked + untracked, not ignored files),
    # so uncommitted edits reach the workers too; never a local venv.
    local root tarball="${TMPDIR:-/tmp}/act_jax_src.tgz"
    root=$(git -C "$LAUNCH_DIR" rev-parse --show-toplevel 2>/dev/null) ||
      die "setup copies the git checkout around launch/; none found (use --git URL)"
    local list=(git -C "$root" ls-files -z -co --exclude-standard -x '.venv*'
      -x venv -x __pycache__ -x '*.pyc')
    local pack=(tar -C "$root" --null -T - -czf "$tarball")
    if is_dry; then
      printf '+ %s | %s\n' "$(shjoin "${list[@]}")" "$(shjoin "${pack[@]}")"
    else
      printf '+ %s | %s\n' "$(shjoin "${list[@]}")" "$(shjoin "${pack[@]}")" >&2
      "${list[@]}" | "${pack[@]}"
      note "$tarball: $(du -h "$tarball" | cut -f1)"
    fi
    run_cmd gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:act_jax_src.tgz" \
      --project="$PROJECT" --zone="$ZONE" --worker=all
    fetch="rm -rf $code && mkdir -p $code && tar -xzf ~/act_jax_src.tgz -C $code"
  fi
  # uv brings its own Python where the image's is too old for the pinned jax.
  # The package (pyproject.toml) installs the pins of requirements.txt, and its
  # extra (JAX_EXTRA, default tpu) jax with libtpu (requirements-tpu.txt).
  local install
  install="set -e; $fetch; cd $code; \
if ! [ -x ~/.local/bin/uv ]; then python3 -m pip install --user -q uv || \
python3 -m pip install --user -q --break-system-packages uv; fi; \
~/.local/bin/uv venv --allow-existing --python $(shquote "$py") $venv; \
~/.local/bin/uv pip install --python $venv/bin/python -e $(shquote ".[${JAX_EXTRA:-tpu}]"); \
echo \"\$(hostname): ready, jax \$($venv/bin/python -c 'import jax; print(jax.__version__)')\""
  gssh all "$install"
}

cmd_run() {
  require run PROJECT ZONE TPU_NAME
  ((${#REST[@]})) || die "run needs a CONFIG (e.g. configs/paper_qwen3_8b.py)"
  run_defaults ||
    die "run needs BUCKET: not set. Set BUCKET (env BUCKET or --bucket) or pass --workdir gs://..."
  check_run_name "$RUN_NAME"
  # Workers share nothing but GCS: a local workdir would split checkpoints.
  [[ $WORKDIR == gs://* ]] ||
    die "WORKDIR must be on GCS (gs://...) so every worker sees it, got '$WORKDIR'"
  train_command python

  local logs pid log code venv exports="" kv
  logs=$(rpath "$LOG_DIR")
  code=$(rpath "$CODE_DIR")
  venv=$(rpath "$VENV_DIR")
  log="$logs/$(shquote "$RUN_NAME.log")"
  pid="$logs/$(shquote "$RUN_NAME.pid")"
  for kv in ${ENVS[@]+"${ENVS[@]}"}; do
    exports+="export $(shquote "$kv"); "
  done
  # nohup: the run outlives this ssh session (laptop sleeps, Ctrl-C on the
  # log stream); `stop` ends it through the pid file. Appending keeps the
  # log of every resume in one file.
  local remote
  remote="set -e; mkdir -p $logs; cd $code; \
if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null; then \
echo \"\$(hostname): $(shquote "$RUN_NAME") is already running (pid \$(cat $pid))\" >&2; exit 1; fi; \
. $venv/bin/activate; ${exports}\
echo \"=== \$(date -u +%FT%TZ) \$(hostname) start\" >> $log; \
nohup $(shjoin "${TRAIN[@]}") >> $log 2>&1 < /dev/null & \
echo \$! > $pid; ln -sfn $(shquote "$RUN_NAME.log") $logs/latest.log; \
ln -sfn $(shquote "$RUN_NAME.pid") $logs/latest.pid; \
echo \"\$(hostname): started $(shquote "$RUN_NAME") (pid \$!), log $log\""
  note "workdir: $WORKDIR"
  gssh all "$remote"
  if [[ ${DETACH:-0} == 0 ]]; then
    note "following worker 0's log; Ctrl-C stops following, not the run" \
      "(stop it with: launch/tpu_vm.sh stop --run-name $RUN_NAME)"
    WORKER=0 cmd_logs
  fi
}

cmd_logs() {
  require logs PROJECT ZONE TPU_NAME
  local logs name log pid lines=$LOG_LINES
  [[ $lines =~ ^[0-9]+$ ]] || die "LOG_LINES must be a number, got '$lines'"
  check_run_name "${RUN_NAME:-latest}"
  logs=$(rpath "$LOG_DIR")
  name=${RUN_NAME:-latest}
  log="$logs/$(shquote "$name.log")"
  pid="$logs/$(shquote "$name.pid")"
  # Follow while the run lives; a finished run just shows its tail.
  gssh "${WORKER:-0}" "p=\$(cat $pid 2>/dev/null || true); \
if [ -n \"\$p\" ] && kill -0 \"\$p\" 2>/dev/null; then tail -n $lines --pid=\"\$p\" -F $log; \
else tail -n $lines $log; fi"
}

cmd_stop() {
  require stop PROJECT ZONE TPU_NAME
  check_run_name "${RUN_NAME:-latest}"
  local logs pid
  logs=$(rpath "$LOG_DIR")
  pid="$logs/$(shquote "${RUN_NAME:-latest}.pid")"
  # Only the process `run` started, by its pid: SIGTERM lets it checkpoint.
  gssh all "p=\$(cat $pid 2>/dev/null || true); \
if [ -n \"\$p\" ] && kill -0 \"\$p\" 2>/dev/null; then kill -TERM \"\$p\" && echo \"\$(hostname): sent SIGTERM to \$p\"; \
else echo \"\$(hostname): not running\"; fi"
}

cmd_status() {
  require status PROJECT ZONE TPU_NAME
  if [[ ${QUEUED:-1} != 0 ]]; then
    run_cmd gcloud compute tpus queued-resources describe "${QR_ID:-$TPU_NAME}" \
      --project="$PROJECT" --zone="$ZONE"
  else
    run_cmd gcloud compute tpus tpu-vm describe "$TPU_NAME" --project="$PROJECT" \
      --zone="$ZONE"
  fi
}

cmd_delete() {
  require delete PROJECT ZONE TPU_NAME
  if [[ ${QUEUED:-1} != 0 ]]; then
    # --force deletes the TPU node with the queued resource.
    run_cmd gcloud compute tpus queued-resources delete "${QR_ID:-$TPU_NAME}" \
      --project="$PROJECT" --zone="$ZONE" --force --quiet
  else
    run_cmd gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT" \
      --zone="$ZONE" --quiet
  fi
}

main() {
  (($#)) || { usage >&2; exit 2; }
  local sub=$1
  shift
  case $sub in
    -h | --help | help) usage; return 0 ;;
    create | setup | run | logs | stop | status | delete) ;;
    *) usage >&2; die "unknown subcommand '$sub'" ;;
  esac
  CODE_DIR=${CODE_DIR:-act_jax}
  VENV_DIR=${VENV_DIR:-act_jax_venv}
  LOG_DIR=${LOG_DIR:-act_jax_logs}
  LOG_LINES=${LOG_LINES:-100}
  local config_follows=0
  [[ $sub != run ]] || config_follows=1
  parse_options "$config_follows" "$@"
  if ((${#REST[@]})) && [[ $sub != run && $sub != create ]]; then
    die "$sub takes no arguments, got '${REST[0]}'"
  fi
  "cmd_$sub"
}

main "$@"
