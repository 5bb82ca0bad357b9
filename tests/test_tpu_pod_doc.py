"""docs/tpu_pod.md, command by command: the launcher lines as dry runs, the rest against
the GCS emulator (conftest `gcs`). The commands are read from the doc, so an edit to
it is tested as written. Also: the paper config's required inputs and the held-out
filter of imported trajectories."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from act_jax import storage
from act_jax.data.importers import drop_heldout
from act_jax.data.trajectory import Step, Trajectory
import config_files

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "tpu_pod.md"


def doc_commands() -> list[str]:
  """Every line of the doc's ```bash blocks."""
  blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
  return [l for b in blocks for l in b.splitlines() if l.strip()]


def doc_env() -> dict[str, str]:
  (line,) = [l for l in doc_commands() if l.startswith("export ")]
  return dict(kv.split("=", 1) for kv in shlex.split(line)[1:])


def expand(line: str, env: dict[str, str]) -> list[str]:
  return shlex.split(re.sub(r"\$(\w+)", lambda m: env[m.group(1)], line))


def _launcher(argv, env, tmp_path):
  full = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
          **env, "DRY_RUN": "1"}
  r = subprocess.run([str(ROOT / argv[0]), *argv[1:]], env=full, capture_output=True,
                     text=True, timeout=60, cwd=ROOT)
  assert r.returncode == 0, (argv, r.stderr)
  return [shlex.split(l[2:]) for l in r.stdout.splitlines() if l.startswith("+ ")]


def test_every_command_of_the_doc_is_covered():
  kinds = {l.split()[0] if not l.startswith("python") else " ".join(l.split()[:3])
           for l in doc_commands()}
  assert kinds == {"export", "launch/tpu_vm.sh", "tensorboard",
                   "python -m act_jax.data.importers", "python -m act_jax.hf"}


def test_launcher_lines_dry_run_the_paper_pipeline(tmp_path):
  env = doc_env()
  runs = []
  for line in doc_commands():
    if line.startswith("launch/"):
      cmds = _launcher(expand(line, env), env, tmp_path)
      assert cmds, line
      if " run " in line:
        runs.append(cmds)
  assert len(runs) == 2 and runs[0] == runs[1]  # resuming = the same command
  remote = next(a for c in runs[0] for a in c if a.startswith("--command=") and "nohup" in a)
  train = shlex.split(remote.split("nohup ", 1)[1].split(" >>")[0])
  b = env["BUCKET"]
  assert train == ["python", "-m", "act_jax.main", "--config", "configs/paper_qwen3_8b.py",
                   "--workdir", f"gs://{b}/act_jax/runs/qwen3_8b",
                   f"--config.pipeline.model_dir=gs://{b}/models/Qwen3-8B",
                   f"--config.pipeline.trajectories=gs://{b}/data/sciworld.jsonl"]


def _subprocess_env(gcs_url: str) -> dict[str, str]:
  return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
          "STORAGE_EMULATOR_HOST": gcs_url}


def test_prepare_data_command_writes_trajectories_into_the_bucket(gcs, tmp_path):
  bucket = gcs[0].removeprefix("gs://")
  (line,) = [l for l in doc_commands() if "act_jax.data.importers" in l]
  argv = expand(line, {"BUCKET": bucket})
  src = tmp_path / argv[3]  # the conversation-format file the command names
  src.write_text((ROOT / "tests" / "fixtures" / "conversations.jsonl").read_text())
  r = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True,
                     text=True, env=_subprocess_env(gcs[1]), timeout=120)
  assert r.returncode == 0, r.stderr
  rows = [json.loads(l) for l in storage.read_text(argv[-1]).splitlines()]
  assert rows and all(r["steps"] and r["task"] for r in rows)
  assert not (tmp_path / "gs:").exists()


def test_paper_config_needs_model_and_trajectories_before_writing(gcs):
  from act_jax.pipeline import Pipeline
  c = config_files.load("paper_qwen3_8b")
  work = f"{gcs[0]}/paper_missing"
  with pytest.raises(ValueError, match=r"config\.pipeline\.model_dir: required.*"
                     r"--config\.pipeline\.model_dir="):
    Pipeline(c, work)
  c.pipeline.model_dir = f"{gcs[0]}/models/none"
  c.pipeline.trajectories = f"{gcs[0]}/data/none.jsonl"
  with pytest.raises(ValueError, match=r"config\.pipeline\.model_dir: gs://.*/models/none "
                     "does not exist"):
    Pipeline(c, work)
  storage.write_text(f"{gcs[0]}/models/none/config.json", "{}")
  with pytest.raises(ValueError, match=r"config\.pipeline\.trajectories: .* does not exist"):
    Pipeline(c, work)
  assert not storage.exists(work)


def test_train_entry_refuses_a_pipeline_config_in_one_line(tmp_path):
  work = tmp_path / "w"
  r = subprocess.run([sys.executable, "-m", "act_jax.train", "--config",
                      "configs/embedded.py", "--workdir", str(work)], cwd=ROOT,
                     capture_output=True, text=True, timeout=120,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 1
  assert "config.data.kind=None" in r.stderr and "act_jax.main" in r.stderr
  assert "Traceback" not in r.stderr and not work.exists()


def test_tensorboard_and_export_commands_read_the_bucket(gcs, tmp_path):
  """The doc's `tensorboard --logdir gs://...` (its --inspect reader) finds the events
  a stage wrote into the bucket; `python -m act_jax.hf export` turns a model in the
  bucket into an HF directory in the bucket."""
  import jax
  from act_jax import metrics, params as params_lib
  from act_jax.models import ModelConfig, init_params
  from act_jax.hf.__main__ import main as hf_main
  env = {"BUCKET": gcs[0].removeprefix("gs://")}
  (tb_line,) = [l for l in doc_commands() if l.startswith("tensorboard")]
  logdir = expand(tb_line, env)[-1]
  w = metrics.Writer(f"{logdir}/s0/act", total_steps=2)
  for step in (1, 2):
    w.write(step, {"loss": 1.0 / step})
  w.close()
  r = subprocess.run([sys.executable, "-m", "tensorboard.main", "--inspect", "--logdir",
                      logdir], capture_output=True, text=True, timeout=120,
                     env=_subprocess_env(gcs[1]))
  assert "loss" in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]

  (export_line,) = [l for l in doc_commands() if "act_jax.hf" in l]
  argv = expand(export_line, env)
  src, dst = argv[-2], argv[-1]
  cfg = ModelConfig(arch="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64,
                    num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, qk_norm=True,
                    tie_embeddings=True)
  params = init_params(cfg, 0)
  params_lib.save(src, params, cfg)
  assert hf_main(argv[3:]) == 0
  assert json.loads(storage.read_text(f"{dst}/config.json"))["model_type"] == "qwen3"
  back, _ = params_lib.load(dst)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not (tmp_path / "gs:").exists() and not (ROOT / "gs:").exists()


def _traj(task: str, game: str | None = None, seed: int | None = None) -> Trajectory:
  meta = {} if game is None else {"game": game, "seed": seed}
  return Trajectory(task=task, steps=[Step("obs", "act")], meta=meta)


def test_imported_training_data_never_holds_an_evaluation_episode():
  heldout = [_traj("Your task is to boil water.", "boil", 3),
             _traj("put a clean egg in microwave.")]
  train = {
      "boil, the held-out variation": _traj("Your task is to  BOIL water.", "boil", 3),
      "boil, another variation": _traj("Your task is to boil water.", "boil", 5),
      "boil, variation unknown": _traj("Your task is to boil water."),
      "other text, held-out variation": _traj("Boil the water.", "boil", 3),
      "egg task, any id": _traj("put a clean egg in microwave.", "egg", 1),
      "another task": _traj("put a hot apple in fridge."),
      "another task with ids": _traj("Your task is to melt ice.", "melt", 3),
  }
  kept, dropped = drop_heldout(list(train.values()), heldout)
  name = {id(t): k for k, t in train.items()}
  assert sorted(name[id(t)] for t in kept) == [
      "another task", "another task with ids", "boil, another variation"]
  assert len(kept) + len(dropped) == len(train)
