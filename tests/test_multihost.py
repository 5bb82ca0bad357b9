"""Multi-host on one machine: 2 processes x 4 CPU devices train like 1 process x 8.

The processes talk through `jax.distributed` on localhost with gloo collectives, as
`launch/slurm.sh` would start them (ACT_* variables), so the whole multi-process path
runs: start-up, the global mesh, per-process batch shards, process-0-only logging, and
Orbax saves and restores that every process joins.

1x8 and 2x4 are not bitwise equal. Both compile the same program for 8 devices, but the
gradient all-reduce runs inside one process for 1x8 and over gloo between processes for
2x4, so it adds in another order and the last bit differs (measured: losses equal or
within 1 ulp, parameters within 1.2e-7 after 6 steps). The comparisons use a tolerance
about 10x that; wrong rows, a wrong data position or optimiser state would be off by
far more. The row layout itself is checked exactly (the assembled global batch equals
the 1-process batch), and a resumed 2x4 run equals an uninterrupted one bitwise
(`-m slow`).
"""
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from act_jax import checkpoint, distributed, sharding
from act_jax.data.synthetic import SyntheticBatches

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 6
TRAIN = [sys.executable, "-m", "act_jax.train", "--config", "configs/tiny_cpu.py",
         f"--config.optim.total_steps={STEPS}", "--config.checkpoint.every=3"]
TIMEOUT = 300  # per launch; a run takes ~15-40 s, more on a busy 2-core machine


# ---------------------------------------------------------------- launching processes

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("ACT_", "SLURM_", "TPU_", "MEGASCALE_", "JAX_", "XLA_"))}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
  return env


def _launch(argv: list[str], logs: pathlib.Path, processes: int, devices: int) -> list[str]:
  """Runs `argv` as `processes` cooperating processes; returns each one's output."""
  env = _env(devices)
  if processes > 1:
    env.update(ACT_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}",
               ACT_NUM_PROCESSES=str(processes))
  procs, files = [], []
  try:
    for p in range(processes):
      f = open(logs.with_name(f"{logs.name}.p{p}.log"), "w+")
      files.append(f)
      penv = dict(env, ACT_PROCESS_ID=str(p)) if processes > 1 else env
      procs.append(subprocess.Popen(argv, cwd=ROOT, env=penv,
                                    stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL))
    codes = [proc.wait(timeout=TIMEOUT) for proc in procs]
  finally:
    for proc in procs:  # on a timeout, never leave a peer waiting in a collective
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  outs = []
  for f in files:
    f.seek(0)
    outs.append(f.read())
    f.close()
  for p, (code, out) in enumerate(zip(codes, outs)):
    assert code == 0, f"process {p}/{processes} exited {code}:\n{out[-4000:]}"
  return outs


def _state(workdir: pathlib.Path, step: int) -> dict:
  """A saved train state as numpy arrays, independent of the mesh it was saved from."""
  import orbax.checkpoint as ocp
  path = workdir / "checkpoints" / str(step) / "state"
  ck = ocp.PyTreeCheckpointer()
  meta = ck.metadata(path).item_metadata.tree
  return ck.restore(path, restore_args=jax.tree.map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta))


def _rows(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """1x8 for 6 steps; 2x4 for 3 steps, then rerun to 6 (resumes from step 3)."""
  tmp = tmp_path_factory.mktemp("multihost")
  one, two = tmp / "one", tmp / "two"
  _launch(TRAIN + ["--workdir", str(one), f"--config.train.steps={STEPS}"],
          tmp / "one", processes=1, devices=8)
  first = _launch(TRAIN + ["--workdir", str(two), "--config.train.steps=3"],
                  tmp / "two_a", processes=2, devices=4)
  second = _launch(TRAIN + ["--workdir", str(two), f"--config.train.steps={STEPS}"],
                   tmp / "two_b", processes=2, devices=4)
  return one, two, first, second


def test_two_processes_start_jax_distributed(runs):
  _, _, first, _ = runs
  for p, out in enumerate(first):
    assert "jax.distributed.initialize (explicit)" in out
    assert f"'process_id': {p}" in out


def test_two_processes_train_like_one_and_resume(runs):
  one, two, _, second = runs
  for out in second:
    assert "resumed from step 3" in out
  # Process 0 alone logs: one row per step, the resumed leg continuing the first.
  r1, r2 = _rows(one), _rows(two)
  assert [r["step"] for r in r2] == list(range(1, STEPS + 1))
  np.testing.assert_allclose([r["loss"] for r in r2], [r["loss"] for r in r1], rtol=2e-6)
  assert r2[-1]["loss"] < r2[0]["loss"]
  # The whole train state (params, Adam moments, step, RNG key) at steps 3 and 6.
  for step in (3, STEPS):
    a, b = _state(one, step), _state(two, step)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
      x, y = np.asarray(x), np.asarray(y)
      if x.dtype.kind == "f":
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6,
                                   err_msg=f"step {step} {jax.tree_util.keystr(path)}")
      else:
        np.testing.assert_array_equal(y, x, err_msg=f"step {step} {jax.tree_util.keystr(path)}")
  # Every process's data position was saved; they agree, so one dict is stored.
  assert _saved_json(two / "checkpoints" / str(STEPS) / "data") == {"index": STEPS}


@pytest.mark.slow
def test_two_process_resume_is_bitwise(runs, tmp_path):
  """Same program, same device count: resumed and uninterrupted 2x4 runs agree exactly."""
  _, two, _, _ = runs
  straight = tmp_path / "straight"
  _launch(TRAIN + ["--workdir", str(straight), f"--config.train.steps={STEPS}"],
          tmp_path / "straight", processes=2, devices=4)
  a, b = _state(straight, STEPS), _state(two, STEPS)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
  assert [r["loss"] for r in _rows(straight)] == [r["loss"] for r in _rows(two)]


def _saved_json(item_dir: pathlib.Path) -> dict:
  """An Orbax JSON item as written (by process 0 alone)."""
  return json.loads((item_dir / "metadata").read_text())


# A worker for the checks that need no training: batch layout and per-process data state.
WORKER = textwrap.dedent("""
  import json, sys
  import jax, numpy as np
  from absl import flags
  flags.FLAGS(["w"])
  from act_jax import checkpoint, distributed, sharding
  from act_jax.data.synthetic import SyntheticBatches
  from jax.experimental import multihost_utils

  assert distributed.initialize().how == "explicit"
  p = jax.process_index()
  assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)
  mesh = sharding.make_mesh({"data": -1})
  assert sharding.batch_shard(mesh) == (p, 2)

  # The global batch the 2 processes assemble is the one a single process builds.
  local = next(SyntheticBatches(128, 16, 8, 3, *sharding.batch_shard(mesh)))
  glob = sharding.shard_batch(local, mesh)
  whole = next(SyntheticBatches(128, 16, 8, 3))
  for k in whole:
    np.testing.assert_array_equal(
        multihost_utils.process_allgather(glob[k], tiled=True), whole[k])

  # Every process's data position reaches the checkpoint (which process 0 alone writes),
  # and each process picks its own back out of it.
  state = {"w": jax.device_put(np.arange(8, dtype=np.float32), sharding.batch_sharding(mesh, 1))}
  mgr = checkpoint.Manager(sys.argv[1], keep=5, every=1)
  mgr.save(1, state, {"index": 5 + p, "shard": p}, {"c": 1})
  mgr.save(2, state, {"index": 9}, {"c": 1})
  mgr.close()
  multihost_utils.sync_global_devices("saved")
  for step, want in ((1, {"index": 5 + p, "shard": p}), (2, {"index": 9})):
    with open(f"{sys.argv[1]}/{step}/data/metadata") as f:
      got = checkpoint.data_state_for_process(json.load(f))
    assert got == want, (step, got, want)
  print("WORKER OK", p)
""")


def test_batch_layout_and_per_process_data_state(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(WORKER)
  outs = _launch([sys.executable, str(script), str(tmp_path / "ckpt")], tmp_path / "w",
                 processes=2, devices=4)
  assert all(f"WORKER OK {p}" in out for p, out in enumerate(outs))
  saved = _saved_json(tmp_path / "ckpt" / "1" / "data")
  assert saved == {checkpoint.PER_PROCESS_KEY: [{"index": 5, "shard": 0},
                                                {"index": 6, "shard": 1}]}
  assert _saved_json(tmp_path / "ckpt" / "2" / "data") == {"index": 9}


# GRPO with the tensor axis across the processes: mesh data=2 x tensor=2 over 2 processes
# x 2 devices, each tensor pair one device of each process, so both processes hold every
# batch slot and feed the same rows. On 1 process x 4 devices it is the reference.
GRPO_WORKER = textwrap.dedent("""
  import sys
  import jax, numpy as np
  from absl import flags
  flags.FLAGS(["w"])
  from jax.experimental import multihost_utils
  from act_jax import config_lib, distributed, loop, models, params as params_lib, sharding
  from act_jax.stages import synthetic_critic
  from configs import act_critic_tiny

  distributed.initialize()
  c = act_critic_tiny.get_config()
  c.train.update(dict(steps=1, batch_size=4, eval_every=1))
  model_cfg = config_lib.model_config(c)
  per_process = [jax.local_devices(process_index=p) for p in range(jax.process_count())]
  mesh = sharding.make_mesh({"data": 2, "tensor": 2},
                            [d for pair in zip(*per_process) for d in pair])
  assert sharding.batch_shard(mesh) == (0, 1)
  ctx = loop.Context(model_cfg, mesh, models.graphdef(model_cfg),
                     params_lib.shardings(model_cfg, mesh))
  stage = synthetic_critic.make_stage(c)
  loss_batches = []
  prepare = stage.prepare

  def recording_prepare(*args):
    out = prepare(*args)
    loss_batches.append(out[0])
    return out

  stage.prepare = recording_prepare
  state = loop.run(c, sys.argv[1], stage, ctx=ctx)
  params = jax.tree.leaves(multihost_utils.process_allgather(state["params"], tiled=True))
  np.savez(f"{sys.argv[1]}.p{jax.process_index()}.npz", **loss_batches[0],
           **{f"param{i}": x for i, x in enumerate(params)})
""")


def test_grpo_with_the_tensor_axis_across_processes(tmp_path):
  """Processes that share a batch slot must feed it identical completions: they sample
  and update as one process with the same mesh does."""
  script = tmp_path / "grpo.py"
  script.write_text(GRPO_WORKER)
  for name, processes, devices in (("two", 2, 2), ("one", 1, 4)):
    _launch([sys.executable, str(script), str(tmp_path / name)], tmp_path / name,
            processes=processes, devices=devices)
  ref = np.load(tmp_path / "one.p0.npz")
  p0, p1 = (np.load(tmp_path / f"two.p{p}.npz") for p in range(2))
  for k in ref.files:
    np.testing.assert_array_equal(p1[k], p0[k], err_msg=k)
    if ref[k].dtype.kind == "f":  # gloo's reductions add in another order
      np.testing.assert_allclose(p0[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    else:
      np.testing.assert_array_equal(p0[k], ref[k], err_msg=k)
  (two,), (one,) = _rows(tmp_path / "two"), _rows(tmp_path / "one")
  for k in ("reward", "grad_norm", "eval_reward", "eval_accuracy"):
    assert two[k] == pytest.approx(one[k], rel=1e-5), k


# ---------------------------------------------------------------- in-process units

def test_synthetic_shards_concatenate_to_the_global_batch():
  whole = next(SyntheticBatches(100, 12, 10, seed=4))
  for count in (2, 3, 4):
    parts = [next(SyntheticBatches(100, 12, 10, 4, i, count)) for i in range(count)]
    np.testing.assert_array_equal(np.concatenate([b["tokens"] for b in parts]),
                                  whole["tokens"])
  with pytest.raises(ValueError, match="batch_size=12"):
    SyntheticBatches(100, 12, 10, 0, 0, 5)


def test_data_state_for_process_single():
  assert checkpoint.gather_data_state({"index": 3}) == {"index": 3}
  assert checkpoint.data_state_for_process({"index": 3}) == {"index": 3}
  assert checkpoint.data_state_for_process(
      {checkpoint.PER_PROCESS_KEY: [{"index": 4}]}) == {"index": 4}
  with pytest.raises(ValueError, match="resume on 2 processes"):
    checkpoint.data_state_for_process({checkpoint.PER_PROCESS_KEY: [{}, {}]})


class _Dev:
  def __init__(self, process_index):
    self.process_index = process_index


def _groups(procs, shape):
  devs = np.array([_Dev(p) for p in procs], dtype=object).reshape(shape)
  return [(s, sorted(p)) for s, p in sharding._slot_groups(devs, sharding.MESH_AXES)]


def test_slot_groups_follow_the_device_order():
  # CPU / GPU: devices ordered by process; process p feeds block p.
  assert _groups([0] * 4 + [1] * 4, (8, 1, 1)) == [((0, 1, 2, 3), [0]), ((4, 5, 6, 7), [1])]
  # The tensor axis spans two hosts: both feed the same rows (2 blocks, 4 processes).
  assert _groups([0, 1, 0, 1, 2, 3, 2, 3], (1, 4, 2)) == [((0, 1), [0, 1]),
                                                           ((2, 3), [2, 3])]
  # A topology-ordered TPU mesh may interleave hosts: still one block per process.
  assert _groups([0, 1, 0, 1], (1, 4, 1)) == [((0, 2), [0]), ((1, 3), [1])]
  # Overlapping slot sets cannot be fed from process-local data.
  with pytest.raises(ValueError, match="whole data x fsdp slots"):
    _groups([0, 0, 0, 1, 1, 1, 1, 2, 2], (3, 1, 3))


def test_batch_shard_single_process():
  assert sharding.batch_shard(sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})) == (0, 1)


ENV_CASES = [
  ({}, "single"),
  ({"ACT_NUM_PROCESSES": "1"}, "single"),
  ({"ACT_COORDINATOR_ADDRESS": "h:1", "ACT_NUM_PROCESSES": "2", "ACT_PROCESS_ID": "1"},
   "explicit"),
  ({"TPU_WORKER_HOSTNAMES": "a,b"}, "tpu"),
  ({"MEGASCALE_COORDINATOR_ADDRESS": "a"}, "tpu"),
  ({"TPU_WORKER_HOSTNAMES": "a,b", "JAX_PLATFORMS": "cpu"}, "single"),
  ({"TPU_WORKER_HOSTNAMES": "a,b", "ACT_DISTRIBUTED": "off"}, "single"),
  ({"ACT_DISTRIBUTED": "on"}, "auto"),
]
SLURM = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_PROCID": "0",
         "SLURM_LOCALID": "0", "SLURM_STEP_NUM_NODES": "2"}


@pytest.mark.parametrize("env,how", ENV_CASES)
def test_initialize_plan(env, how):
  assert distributed.plan(env, tpu_chips=0).how == how


def test_initialize_plan_details():
  p = distributed.plan({"ACT_COORDINATOR_ADDRESS": "h:1", "ACT_NUM_PROCESSES": "2",
                        "ACT_PROCESS_ID": "0"}, tpu_chips=0)
  # Explicit values switch JAX's cluster detection off (it would give SLURM tasks 1 GPU).
  assert p.kwargs == dict(coordinator_address="h:1", num_processes=2, process_id=0,
                          cluster_detection_method="deactivate")
  # Flags beat variables.
  assert distributed.plan({"ACT_PROCESS_ID": "0", "ACT_NUM_PROCESSES": "2",
                           "ACT_COORDINATOR_ADDRESS": "h:1"},
                          process_id=1, tpu_chips=0).kwargs["process_id"] == 1
  with pytest.raises(ValueError, match="missing ACT_PROCESS_ID"):
    distributed.plan({"ACT_COORDINATOR_ADDRESS": "h:1", "ACT_NUM_PROCESSES": "2"})
  with pytest.raises(ValueError, match="not in"):
    distributed.plan({"ACT_COORDINATOR_ADDRESS": "h:1", "ACT_NUM_PROCESSES": "2",
                      "ACT_PROCESS_ID": "2"})
  # TPU VM found from its PCI chips; not when the run is pinned to CPU.
  assert distributed.plan({}, tpu_chips=4).how == "tpu"
  assert distributed.plan({"JAX_PLATFORMS": "cpu"}, tpu_chips=4).how == "single"
  # SLURM: one task per node keeps all of its GPUs; one task per GPU is JAX's default.
  node = distributed.plan(dict(SLURM, SLURM_NTASKS="2"), tpu_chips=0)
  assert (node.how, node.all_local_gpus) == ("slurm", True)
  gpu = distributed.plan(dict(SLURM, SLURM_NTASKS="16"), tpu_chips=0)
  assert (gpu.how, gpu.all_local_gpus) == ("slurm", False)
  assert distributed.plan(dict(SLURM, SLURM_NTASKS="1"), tpu_chips=0).how == "single"
