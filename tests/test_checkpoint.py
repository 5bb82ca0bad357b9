"""Checkpoints: re-sharding restores, keep-last + keep-best, damaged steps, guards, logs.

In-process on the 8 simulated CPU devices of conftest.py; the kill -9 / SIGTERM tests
that need a separate process are in test_checkpoint_preempt.py.
"""
import importlib.util
import logging
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from act_jax import checkpoint, config_lib, flops, losses, loop, metrics, models
from act_jax import params as params_lib, sharding
from act_jax import step as step_lib
from act_jax.losses import supervised
from act_jax.stages.pretrain import PretrainStage

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(steps: int = 4, every: int = 2, **mesh):
  """configs/tiny_cpu.py, shrunk to a few short steps."""
  spec = importlib.util.spec_from_file_location("tiny_cpu", ROOT / "configs" / "tiny_cpu.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.train.update(dict(steps=steps, batch_size=8, seq_len=16))
  c.checkpoint.update(dict(every=every, keep=10))
  c.mesh.update(mesh)
  return c


def tree_equal(a, b) -> bool:
  la, lb = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def abstract_state(ctx: loop.Context, config):
  """The run's train state as ShapeDtypeStructs on `ctx`'s mesh: a restore target."""
  opt = step_lib.make_optimizer({**dict(config.optim), "total_steps": config.train.steps})
  shapes = jax.eval_shape(lambda p: step_lib.init_state(p, opt, 0),
                          models.abstract_params(ctx.model_cfg))
  return checkpoint.abstract_like(shapes, loop.state_shardings(ctx, opt))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 4-step tiny run on data=8 with checkpoints at steps 2 and 4 (read-only for tests)."""
  workdir = tmp_path_factory.mktemp("trained")
  c = tiny_config()
  state = loop.run(c, str(workdir), PretrainStage(c))
  return workdir, c, jax.device_get(state)


def copy_of(workdir: Path, tmp_path: Path) -> Path:
  out = tmp_path / "run"
  shutil.copytree(workdir, out)
  return out


# --- re-sharding -------------------------------------------------------------------

@pytest.mark.parametrize("mesh, devices", [({"data": 1, "fsdp": 4, "tensor": 2}, 8),
                                           ({"data": 1}, 1)])
def test_restore_onto_another_mesh(trained, mesh, devices):
  workdir, c, final = trained
  c = tiny_config(**mesh)
  ctx = loop.build_context(c) if devices == 8 else _one_device_context(c)
  target = abstract_state(ctx, c)
  mgr = checkpoint.Manager(str(workdir / "checkpoints"))
  try:
    got = mgr.restore(target)
  finally:
    mgr.close()
  assert got.step == 4 and got.data == {"index": 4}
  assert tree_equal(got.state, final)
  for arr, want in zip(jax.tree.leaves(got.state), jax.tree.leaves(target)):
    assert arr.sharding == want.sharding
  wq = got.state["params"]["layers"]["wq"]  # [L, D, H, Hd]
  if devices == 8:  # split over fsdp x tensor: each device read only its slice
    assert wq.sharding.spec[1:3] == ("fsdp", "tensor")
    assert wq.addressable_shards[0].data.shape == (2, 16, 2, 16)
  else:
    assert wq.sharding.device_set == {jax.devices()[0]}


def _one_device_context(c):
  model_cfg = config_lib.model_config(c)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  pshard = params_lib.shardings(model_cfg, mesh)
  return loop.Context(model_cfg, mesh, models.graphdef(model_cfg), pshard)


def test_resume_on_another_mesh_and_log_mfu(trained, tmp_path):
  """Saved on data=8, resumed as fsdp=4 x tensor=2 (the --config.mesh.* overrides)."""
  workdir = copy_of(trained[0], tmp_path)
  c = tiny_config(steps=6, data=1, fsdp=4, tensor=2)
  c.train.peak_tflops = 1.0
  state = loop.run(c, str(workdir), PretrainStage(c))
  assert int(state["step"]) == 6
  assert tuple(state["params"]["embed"].sharding.spec) == ("tensor", "fsdp")
  rows = metrics.read_jsonl(str(workdir / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert "mfu" not in rows[3] and 0 < rows[4]["mfu"] < 1
  per_token = flops.flops_per_token(models.ModelConfig.from_dict(c.model.to_dict()), 16)
  np.testing.assert_allclose(rows[4]["model_tflops_per_s"] / rows[4]["mfu"], 8.0)
  np.testing.assert_allclose(rows[4]["model_tflops_per_s"] * 1e12 * rows[4]["step_time"],
                             per_token * 8 * 16, rtol=1e-6)


# --- keep policy, atomicity, damaged steps ------------------------------------------

def _small_state(v: float):
  """A scalar-valued array, plus random data big enough (16 KiB) to live in its own file
  rather than inline in Orbax's index."""
  noise = np.random.default_rng(int(v)).normal(size=4096).astype(np.float32)
  return {"w": jnp.full((8, 4), float(v)), "noise": jnp.asarray(noise),
          "step": jnp.asarray(int(v), jnp.int32)}


def _save_all(mgr, values, metric="acc"):
  for step, v in values.items():
    row = {} if v is None else {metric: v}
    mgr.save(step, _small_state(step), {"index": step}, {"model": {}}, row)
  mgr.wait()


def test_keeps_latest_n_and_best_across_restarts(tmp_path):
  d = str(tmp_path / "ck")
  mgr = checkpoint.Manager(d, keep=2, best_metric="acc", best_mode="max")
  _save_all(mgr, {1: 0.1, 2: 0.9, 3: 0.2, 4: 0.3, 5: float("nan")})
  assert mgr.all_steps() == [2, 4, 5]
  mgr.close()
  # A restarted run still knows step 2 is the best (Orbax re-reads saved metrics).
  mgr = checkpoint.Manager(d, keep=2, best_metric="acc", best_mode="max")
  assert mgr.best_step() == 2
  _save_all(mgr, {6: 0.5, 7: None})  # a row without the metric never counts as best
  assert mgr.all_steps() == [2, 6, 7]
  mgr.close()
  mgr = checkpoint.Manager(d, keep=1, best_metric="acc", best_mode="min")
  _save_all(mgr, {8: 0.7})
  assert mgr.all_steps() == [6, 8]  # 0.5: the smallest loss-like value left
  mgr.close()


def test_half_written_and_uncommitted_steps_are_ignored(tmp_path, caplog):
  d = tmp_path / "ck"
  mgr = checkpoint.Manager(str(d), keep=10)
  _save_all(mgr, {1: None, 2: None})
  mgr.close()
  # A save killed mid-way leaves Orbax's tmp dir; a copied or damaged step lacks the
  # commit marker Orbax writes last.
  shutil.copytree(d / "2", d / "3.orbax-checkpoint-tmp-1234567")
  shutil.copytree(d / "2", d / "4")
  (d / "4" / checkpoint.COMMIT_MARKER).unlink()
  with caplog.at_level(logging.WARNING):
    mgr = checkpoint.Manager(str(d), keep=10)
  assert mgr.latest_step() == 2
  got = mgr.restore(jax.eval_shape(lambda: _small_state(0)))
  assert got.step == 2 and float(got.state["w"][0, 0]) == 2.0
  _save_all(mgr, {3: None, 4: None})  # the step numbers are free again
  mgr.close()
  assert "no commit_success.txt" in caplog.text
  assert sorted(os.listdir(d)) == ["1", "2", "3", "4", "4.incomplete"]


# Orbax's other in-flight reads of a damaged step finish after its event loop closed.
QUIET_ORBAX = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@QUIET_ORBAX
@pytest.mark.parametrize("damage", ["truncate_arrays", "truncate_json"])
def test_corrupt_newest_step_falls_back_to_previous(tmp_path, caplog, damage):
  d = tmp_path / "ck"
  mgr = checkpoint.Manager(str(d))
  _save_all(mgr, {1: None, 2: None})
  mgr.close()
  if damage == "truncate_arrays":  # the largest file: the arrays' data
    victim = max((p for p in (d / "2" / "state").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
  else:
    victim = d / "2" / "data" / "metadata"
  with open(victim, "r+b") as f:
    f.truncate(victim.stat().st_size // 2)
  mgr = checkpoint.Manager(str(d))
  with caplog.at_level(logging.WARNING):
    got = mgr.restore(jax.eval_shape(lambda: _small_state(0)))
  assert got.step == 1 and float(got.state["w"][0, 0]) == 1.0 and got.data == {"index": 1}
  assert "step 2 cannot be restored" in caplog.text
  assert mgr.all_steps() == [1] and (d / "2.unreadable").is_dir()
  _save_all(mgr, {2: None})
  mgr.close()


def test_config_mismatch_fails_before_training(trained, tmp_path):
  workdir = copy_of(trained[0], tmp_path)
  before = sorted(os.listdir(workdir / "checkpoints"))
  c = tiny_config(steps=6)
  c.model.hidden_size = 32
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"hidden_size.*\(64, 32\)"):
    loop.run(c, str(workdir), PretrainStage(c))
  assert sorted(os.listdir(workdir / "checkpoints")) == before  # nothing set aside
  assert len(metrics.read_jsonl(str(workdir / "metrics.jsonl"))) == 4


# --- params-only load (what `python -m act_jax.hf export WORKDIR` reads) --------------

def test_load_params_partial_restore(trained):
  workdir, c, final = trained
  params, model_cfg = params_lib.load(str(workdir))
  assert model_cfg == models.ModelConfig.from_dict(c.model.to_dict())
  assert params_lib.model_config(str(workdir)) == model_cfg
  assert tree_equal(params, final["params"])
  assert jax.tree.leaves(params)[0].sharding.device_set == {jax.devices()[0]}
  mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  params2, _ = params_lib.load(str(workdir / "checkpoints" / "2"), mesh)
  assert params2["layers"]["wq"].sharding.spec[1:3] == ("fsdp", "tensor")
  assert not tree_equal(params2, params)  # step 2, not the latest


def test_load_params_from_a_relative_path(trained, monkeypatch):
  # The README's main job passes a relative --workdir; Orbax refuses relative paths.
  workdir, _, final = trained
  monkeypatch.chdir(workdir.parent)
  params, _ = params_lib.load(workdir.name)
  assert tree_equal(params, final["params"])


@QUIET_ORBAX
def test_load_params_skips_an_unreadable_step(trained, tmp_path, caplog):
  workdir = copy_of(trained[0], tmp_path)
  for data_file in (workdir / "checkpoints" / "4" / "state").rglob("d/*"):  # all of them:
    with open(data_file, "r+b") as f:  # params need not be in the largest one
      f.truncate(data_file.stat().st_size // 2)
  with caplog.at_level(logging.WARNING):
    params, _ = params_lib.load(str(workdir))
  assert "step 4 cannot be read" in caplog.text
  assert tree_equal(params, params_lib.load(str(trained[0] / "checkpoints" / "2"))[0])
  assert (workdir / "checkpoints" / "4").is_dir()  # read-only: nothing renamed


def test_params_load_any_source_onto_the_rules_shardings(trained, tmp_path):
  """One model as a training workdir, an HF dir and a params checkpoint loads equal,
  laid out by the sharding rules it is given."""
  from act_jax.hf import save_pretrained
  workdir, c, final = trained
  params, cfg = params_lib.load(str(workdir))
  save_pretrained(tmp_path / "hf", params, cfg)
  params_lib.save(tmp_path / "ckpt", params, cfg)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  swapped = tuple({**dict(config_lib.sharding_rules(c)), "embed": "tensor",
                   "heads": "fsdp"}.items())
  sources = [(workdir, params_lib.TRAINING), (tmp_path / "hf", params_lib.HF),
             (tmp_path / "ckpt", params_lib.PARAMS_CHECKPOINT)]
  for source, kind in sources:
    assert params_lib.kind(source) == kind
    for rules, split in ((None, ("fsdp", "tensor")), (swapped, ("tensor", "fsdp"))):
      got, _ = params_lib.load(source, mesh, rules)
      assert tree_equal(got, final["params"]), source
      want = params_lib.shardings(cfg, mesh, rules or sharding.DEFAULT_RULES)
      assert jax.tree.map(lambda a: a.sharding, got) == want, source
      assert got["layers"]["wq"].sharding.spec[1:3] == split  # [L, D, H, Hd]


def test_hf_export_accepts_training_workdir(trained, tmp_path):
  from safetensors.numpy import load_file
  from act_jax.hf.__main__ import main as hf_cli
  workdir, _, final = trained
  out = tmp_path / "hf"
  assert hf_cli(["export", str(workdir), str(out)]) == 0
  tensors = load_file(str(out / "model.safetensors"))
  np.testing.assert_array_equal(tensors["model.embed_tokens.weight"], final["params"]["embed"])


# --- non-finite guard ----------------------------------------------------------------

@losses.register("test_poisonable_next_token")
def _poisonable_loss(model, batch, cfg=None):
  """next_token, turned NaN for a batch whose `poison` flag is set."""
  total, denom, m = supervised.next_token_loss(model, batch, cfg)
  return total + jnp.where(jnp.any(batch["poison"]), jnp.nan, 0.0), denom, m


class PoisonStage(PretrainStage):
  """Batches whose 1-based step is in `poisoned` make the loss NaN."""
  loss = "test_poisonable_next_token"

  def __init__(self, config, poisoned):
    super().__init__(config)
    self.poisoned = set(poisoned)

  def batches(self, shard_index, shard_count):
    inner = super().batches(shard_index, shard_count)
    stage = self

    class Poisoned:
      def __next__(self):
        b = next(inner)
        b["poison"] = np.full((b["tokens"].shape[0],), inner.index in stage.poisoned)
        return b

      get_state, set_state = inner.get_state, inner.set_state

    return Poisoned()


def test_nonfinite_updates_are_skipped_counted_and_stop_the_run(tmp_path):
  c = tiny_config(steps=10, every=1)
  c.train.max_nonfinite = 3
  workdir = str(tmp_path)
  with pytest.raises(FloatingPointError, match=r"step 8: .* 3 steps in a row"):
    loop.run(c, workdir, PoisonStage(c, poisoned={3, 6, 7, 8}))
  rows = {r["step"]: r for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))}
  assert sorted(rows) == list(range(1, 9))
  assert [rows[s]["skipped"] for s in range(1, 9)] == [0, 0, 1, 0, 0, 1, 1, 1]
  assert [rows[s]["nonfinite_total"] for s in range(1, 9)] == [0, 0, 1, 1, 1, 2, 3, 4]
  assert np.isnan(rows[3]["loss"]) and np.isfinite(rows[4]["loss"])
  # A skipped update leaves params and optimiser state exactly as they were; the
  # failing step saved nothing, and the last checkpoint is intact and finite.
  ckpts = Path(workdir) / "checkpoints"
  assert checkpoint.complete_steps(ckpts) == [1, 2, 3, 4, 5, 6, 7]
  ctx = loop.build_context(c)
  mgr = checkpoint.Manager(str(ckpts))
  try:
    s = {k: mgr.restore(abstract_state(ctx, c), step=k) for k in (2, 3, 5, 7)}
  finally:
    mgr.close()
  for k in ("params", "opt_state"):
    assert tree_equal(s[3].state[k], s[2].state[k])
    assert tree_equal(s[7].state[k], s[5].state[k])
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(s[7].state["params"])))
  assert s[7].loop == {"nonfinite_total": 3} and s[7].data == {"index": 7}


# --- logs and FLOPs ------------------------------------------------------------------

def test_writer_drops_rows_a_killed_run_logged_past_the_checkpoint(tmp_path):
  w = metrics.Writer(str(tmp_path), 10, enabled=True)
  for s in range(1, 6):
    w.write(s, {"loss": float(s)})
  w.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "lo')  # cut short by kill -9
  w = metrics.Writer(str(tmp_path), 10, start_step=3, enabled=True)
  w.write(4, {"loss": 40.0})
  w.close()
  rows = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def test_flops_formula():
  cfg = models.ModelConfig(arch="qwen3", vocab_size=128, hidden_size=64,
                           intermediate_size=192, num_layers=2, num_heads=4, num_kv_heads=2,
                           head_dim=16, qk_norm=True, tie_embeddings=True)
  # q,k,v,o + MLP per layer, LM head once; no embedding gather, no norms.
  per_layer = 64 * (2 * 4 * 16 + 2 * 2 * 16) + 3 * 64 * 192
  assert flops.matmul_params(cfg) == 2 * per_layer + 64 * 128
  assert cfg.num_params() - flops.matmul_params(cfg) == 2 * (2 * 64 + 2 * 16) + 64
  assert flops.flops_per_token(cfg, 32) == 6 * (2 * per_layer + 64 * 128) + 12 * 2 * 4 * 16 * 32
  assert flops.mfu(1e12, 1.0, 0.0, 8) is None
  assert flops.mfu(4e12, 2.0, 1.0, 8) == 0.25
