"""Preemption for real: SIGTERM and kill -9 on `python -m act_jax.train` subprocesses.

Every run uses the same command line and 8 simulated CPU devices, so (XLA:CPU being
bitwise deterministic for a given program and device count) a resumed run must match
an uninterrupted one bit for bit. The runs share a persistent compilation cache: only
the first one compiles (~4x faster for the others), and a cached executable is the
same program, so it changes no bits.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from act_jax import checkpoint, loop, metrics
from test_checkpoint import abstract_state, tiny_config, tree_equal

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
          "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
          "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def start(env: dict, workdir: Path, steps: int, every: int) -> subprocess.Popen:
  cmd = [sys.executable, "-m", "act_jax.train", "--config", "configs/tiny_cpu.py",
         "--workdir", str(workdir), f"--config.train.steps={steps}",
         f"--config.checkpoint.every={every}", "--config.train.batch_size=8",
         "--config.train.seq_len=16"]
  with open(f"{workdir}.log", "a") as log:  # absl logs are long: never a pipe that can fill
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def last_logged_step(workdir: Path) -> int:
  try:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
  except FileNotFoundError:
    return 0
  for line in reversed(lines):
    try:
      return json.loads(line)["step"]
    except ValueError:  # being written
      continue
  return 0


def wait_until(proc: subprocess.Popen, done, what: str, timeout: float = 300) -> None:
  t0 = time.monotonic()
  while not done():
    assert proc.poll() is None, f"run exited ({proc.returncode}) before {what}"
    assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
    time.sleep(0.01)


def finish(proc: subprocess.Popen, workdir: Path) -> int:
  rc = proc.wait(timeout=300)
  if rc not in (0, 143, -signal.SIGKILL):
    print(Path(f"{workdir}.log").read_text()[-5000:])
  return rc


def restore(workdir: Path, step: int | None = None) -> checkpoint.Restored:
  c = tiny_config(steps=60)
  ctx = loop.build_context(c)
  mgr = checkpoint.Manager(str(workdir / "checkpoints"))
  try:
    return mgr.restore(abstract_state(ctx, c), step=step)
  finally:
    mgr.close()


def test_sigterm_saves_the_current_step_and_exits_143(env, tmp_path):
  workdir = tmp_path / "run"
  proc = start(env, workdir, steps=500, every=1000)  # no periodic save: only the preemption's
  wait_until(proc, lambda: last_logged_step(workdir) >= 3, "step 3")
  proc.send_signal(signal.SIGTERM)
  assert finish(proc, workdir) == 143
  step = last_logged_step(workdir)
  assert 3 <= step < 500
  assert sorted(os.listdir(workdir / "checkpoints")) == [str(step)]  # complete, no tmp
  got = restore(workdir)
  assert got.step == step == int(got.state["step"]) and got.data == {"index": step}
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(got.state["params"])))


def test_kill9_then_rerun_equals_uninterrupted_run(env, tmp_path):
  ref, run = tmp_path / "ref", tmp_path / "run"
  ref_proc = start(env, ref, steps=60, every=10)
  # Once the reference has compiled (its first row), the other runs hit the cache.
  wait_until(ref_proc, lambda: last_logged_step(ref) >= 1, "the reference's first step")
  proc = start(env, run, steps=60, every=10)
  wait_until(proc, lambda: checkpoint.complete_steps(run / "checkpoints")
             and last_logged_step(run) >= 13, "a checkpoint and 3 more steps")
  proc.send_signal(signal.SIGKILL)
  assert finish(proc, run) == -signal.SIGKILL
  saved = checkpoint.complete_steps(run / "checkpoints")
  killed_at = last_logged_step(run)
  assert saved and saved[-1] < killed_at < 60, (saved, killed_at)

  proc = start(env, run, steps=60, every=10)  # the same command again
  assert finish(proc, run) == 0
  assert finish(ref_proc, ref) == 0
  a, b = restore(ref), restore(run)
  assert a.step == b.step == 60 and a.data == b.data
  for k in ("params", "opt_state", "rng", "step"):
    assert tree_equal(a.state[k], b.state[k]), k
  rows_a = metrics.read_jsonl(str(ref / "metrics.jsonl"))
  rows_b = metrics.read_jsonl(str(run / "metrics.jsonl"))
  assert [r["step"] for r in rows_b] == list(range(1, 61))  # replayed steps logged once
  assert [r["loss"] for r in rows_b] == [r["loss"] for r in rows_a]
