"""The GRPO stage end to end on the synthetic critic task (one CPU device)."""
import importlib.util

import jax
import numpy as np
import pytest

from act_jax import config_lib, loop, models, params as params_lib, sharding, step as step_lib
from act_jax.metrics import read_jsonl
from act_jax.stages import synthetic_critic


def tiny_config():
  spec = importlib.util.spec_from_file_location("act_critic_tiny", "configs/act_critic_tiny.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def one_device_context(c):
  """Like loop.build_context on a 1-device mesh: the tiny model gains nothing from 8."""
  model_cfg = config_lib.model_config(c)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  pshard = params_lib.shardings(model_cfg, mesh)
  return loop.Context(model_cfg, mesh, models.graphdef(model_cfg), pshard)


def test_prepare_layout_reference_and_sampler_agreement():
  c = tiny_config()
  c.train.batch_size = 4
  c.grpo.update(dict(beta=0.01, updates_per_batch=2))
  c.train.accum_steps = 2
  stage = synthetic_critic.make_stage(c)
  ctx = one_device_context(c)
  opt = step_lib.make_optimizer(loop.optimizer_config(c, stage))
  state = step_lib.init_state(models.init_params(ctx.model_cfg, 0, ctx.param_shardings), opt, 0)
  data = next(stage.batches(0, 1))
  batch, host = stage.prepare(ctx, state, data)
  N, P, C = 4 * 8, data["tokens"].shape[1], c.grpo.max_new_tokens
  assert {k: v.shape for k, v in batch.items()} == {
      "tokens": (N, P + C), "mask": (N, P + C), "completion_mask": (N, C),
      "old_logps": (N, C), "ref_logps": (N, C), "advantages": (N,)}
  np.testing.assert_array_equal(batch["tokens"][:8, :P], np.repeat(data["tokens"][:1], 8, 0))
  assert {"reward", "accuracy", "format_error_rate", "response_len", "gen_tokens_per_s",
          "zero_var_group_frac"} <= set(host)
  # At step 0 the reference is the policy: its forward pass reproduces the sampler's
  # log-probs (the trainer-vs-sampler agreement) on every sampled token.
  real = batch["mask"][:, P:]
  np.testing.assert_allclose(batch["ref_logps"][real], batch["old_logps"][real], atol=2e-5)
  step = jax.jit(step_lib.make_train_step(ctx.gdef, "grpo", opt, stage.loss_cfg,
                                          c.train.accum_steps, stage.updates_per_batch))
  _, m = jax.device_get(step(state, sharding.shard_batch(batch, ctx.mesh)))
  assert m["skipped"] == 0 and np.isfinite(m["loss"])
  assert m["kl"] < 1e-3 and m["logp_abs_diff"] < 1e-3
  assert m["n_loss_tokens"] == batch["completion_mask"].sum()


def test_few_steps_increase_mean_reward(tmp_path):
  c = tiny_config()
  c.train.update(dict(steps=20, batch_size=16, eval_every=10))
  c.optim.lr = 3e-3
  c.checkpoint.every = 100
  loop.run(c, str(tmp_path), synthetic_critic.make_stage(c), ctx=one_device_context(c))
  rows = read_jsonl(str(tmp_path / "metrics.jsonl"))
  reward = [r["reward"] for r in rows]
  assert len(reward) == 20 and "eval_accuracy" in rows[9]
  assert np.mean(reward[-5:]) > np.mean(reward[:5]) + 0.1, reward


@pytest.mark.slow
def test_critic_learning_check(tmp_path):
  """From random init, held-out judgment accuracy rises to > 90%."""
  c = tiny_config()
  stage = synthetic_critic.make_stage(c)
  ctx = one_device_context(c)
  before = stage.evaluate(ctx, models.init_params(ctx.model_cfg, c.seed, ctx.param_shardings))
  loop.run(c, str(tmp_path), stage, ctx=ctx)
  curve = [r["eval_accuracy"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))
           if "eval_accuracy" in r]
  assert before["eval_accuracy"] <= 0.6
  assert curve[-1] > 0.9, curve


@pytest.mark.parametrize("field, value", [("top_k", 50), ("top_p", 0.9)])
def test_truncated_sampling_is_refused(field, value):
  """The loss's ratio uses log-probs of the full softmax, not of a truncated sampler."""
  c = tiny_config()
  c.grpo[field] = value
  with pytest.raises(ValueError, match=rf"config\.grpo\.{field}={value}"):
    synthetic_critic.make_stage(c)
