"""Sharded training equals single-device training; bad meshes fail naming the field."""
import jax
import numpy as np
import pytest

from act_jax import config_lib, loop, params as params_lib, sharding, step as step_lib
from act_jax.data.synthetic import SyntheticBatches
from act_jax.models import ModelConfig, graphdef, init_params

CFG = ModelConfig(arch="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64,
                  num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True,
                  tie_embeddings=False)


def _loss_and_grads(mesh):
  pshard = params_lib.shardings(CFG, mesh)
  params = init_params(CFG, 0, pshard)
  batch = next(SyntheticBatches(CFG.vocab_size, 8, 16, seed=1))
  batch["mask"][:3, :5] = False  # some padding, so masking is exercised
  from act_jax import losses
  fn = losses.get("next_token")

  def loss(p, b):
    from flax import nnx
    total, denom, _ = fn(nnx.merge(graphdef(CFG), p), b, None)
    return total / denom

  g = jax.jit(jax.value_and_grad(loss))(params, sharding.shard_batch(batch, mesh))
  return jax.device_get(g), params


def test_mesh_loss_and_grads_equal_single_device():
  (l1, g1), _ = _loss_and_grads(sharding.make_mesh({"data": 1}, jax.devices()[:1]))
  (l8, g8), p8 = _loss_and_grads(sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
  # The parameters really are split over the mesh.
  assert p8["layers"]["wq"].sharding.spec[1:3] == ("fsdp", "tensor")
  np.testing.assert_allclose(l8, l1, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g8, g1)


def test_accumulation_equals_one_big_batch():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  opt = step_lib.make_optimizer({"lr": 1e-2, "warmup_steps": 0, "total_steps": 10})
  batch = next(SyntheticBatches(CFG.vocab_size, 8, 16, seed=2))
  batch["mask"][::2, :7] = False  # unequal token counts per microbatch
  out = []
  for k in (1, 4):
    pshard = params_lib.shardings(CFG, mesh)
    state = step_lib.init_state(init_params(CFG, 0, pshard), opt, 0)
    step = jax.jit(step_lib.make_train_step(graphdef(CFG), "next_token", opt, accum_steps=k))
    out.append(jax.device_get(step(state, sharding.shard_batch(batch, mesh))))
  (s1, m1), (s4, m4) = out
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
  np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), s4["params"],
               s1["params"])


@pytest.mark.parametrize("axes, match", [
    ({"data": 3, "fsdp": 1, "tensor": 1}, "multiply to 3 but there are 8 devices"),
    ({"data": -1, "fsdp": 3}, "not divisible"),
    ({"data": -1, "fsdp": -1}, "only one axis may be -1"),
    ({"data": 8, "pipeline": 1}, "unknown axis"),
])
def test_bad_mesh_names_the_problem(axes, match):
  with pytest.raises(ValueError, match=match):
    sharding.make_mesh(axes)


def test_heads_not_divisible_by_tensor_axis():
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 8})
  with pytest.raises(ValueError, match="config.model.num_heads=4"):
    sharding.check_model_fits(CFG, mesh)


def test_mesh_preset_and_unknown_preset():
  c = config_lib.base()
  c.mesh_preset = "gpu_8"
  assert config_lib.mesh_axes(c) == {"data": 1, "fsdp": 8, "tensor": 1}
  c.mesh_preset = "tpu_v9"
  with pytest.raises(ValueError, match="config.mesh_preset"):
    config_lib.mesh_axes(c)


def test_tiny_training_run_learns(tmp_path):
  from act_jax.stages.pretrain import PretrainStage
  import importlib.util
  spec = importlib.util.spec_from_file_location("tiny", "configs/tiny_cpu.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.train.steps = 30
  c.checkpoint.every = 10
  loop.run(c, str(tmp_path), PretrainStage(c))
  from act_jax.metrics import read_jsonl
  rows = read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in rows] == list(range(1, 31))
  assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]
