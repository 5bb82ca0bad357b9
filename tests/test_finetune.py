"""Cheap fine-tuning: trainable-layer selection, target-only logits, the prefix cache.

Each option must leave what is learnt unchanged; the references here are the plain
full-model loss and gradient (`jax.grad` of the action loss on the whole tree).
"""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from act_jax import checkpoint, config_lib, losses, loop, metrics, models, params as params_lib
from act_jax import sharding
from act_jax import stages, step as step_lib
from act_jax.data import pipeline as data_pipeline, prefix_cache
from act_jax.models import decoder
from act_jax.trainable import Trainable

CFG = models.ModelConfig(arch="qwen3", vocab_size=96, hidden_size=32, intermediate_size=64,
                         num_layers=4, num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True)


def records(n: int = 24, seed: int = 0) -> list[dict]:
  """Prompt + 5-token target rows of varied length, like imitation examples."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    ids = rng.integers(1, CFG.vocab_size, rng.integers(12, 30)).astype(np.int32)
    lm = np.zeros(len(ids), np.int32)
    lm[-5:] = 1
    out.append({"input_ids": ids, "loss_mask": lm, "state_id": f"e{i}/0"})
  return out


def batch(n: int = 6) -> dict:
  return data_pipeline.collate(records(n), 32, 0, "supervised")


@jax.jit
def full_loss(params, b):
  """The reference: every position projected, whole tree differentiated."""
  total, denom, _ = losses.get("action_ce")(models.merge(models.graphdef(CFG), params),
                                            {k: b[k] for k in ("tokens", "mask", "loss_mask")})
  return total / denom


def close(a, b, tol=2e-5):
  return all(np.allclose(x, y, atol=tol, rtol=tol)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("spec", ["all", "top:0", "top:5", "bottom:2", "top:x", "lora:4"])
def test_trainable_spec_checked(spec):
  if spec == "all":
    assert not Trainable.parse(spec, 4).frozen_prefix
    return
  with pytest.raises(ValueError, match=r"config\.train\.trainable="):
    Trainable.parse(spec, 4)


def test_target_only_logits_equal_the_full_projection():
  params = models.init_params(CFG, 1)
  b = batch()
  assert b["target_mask"].sum() == b["loss_mask"][:, 1:].sum() == 6 * 5
  gathered = lambda p: (lambda t, d, _: t / d)(*losses.get("action_ce")(
      models.merge(models.graphdef(CFG), p), b))
  np.testing.assert_allclose(gathered(params), full_loss(params, b), rtol=1e-6)
  assert close(jax.jit(jax.grad(gathered))(params), jax.jit(jax.grad(full_loss))(params, b))


@pytest.mark.parametrize("chunk", [0, 2])
def test_target_logprobs_equal_log_softmax_with_a_gradient_free_of_scatters(chunk):
  """log p(target) and its gradient against log_softmax + take_along_axis; the pick is a
  masked sum, so the backward pass has no scatter into a [rows, V] buffer (on TPU a
  float32 copy of the logits' size beside them: 2.3 GiB per chip at Qwen3-8B's 4k).
  chunk 2 of 3 positions: two rematerialised chunks, the last one padded."""
  class Head:
    def __init__(self, w):
      self.w = w
      self.cfg = types.SimpleNamespace(logits_chunk=chunk)

    def logits(self, h):
      return h @ self.w

  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(8, 11)), jnp.float32)
  t = jnp.asarray(rng.integers(0, 11, (2, 3)))
  ours = lambda h, w: losses.supervised.target_logprobs(Head(w), h, t)
  ref = lambda h, w: jnp.take_along_axis(jax.nn.log_softmax(h @ w), t[..., None], -1)[..., 0]
  np.testing.assert_allclose(ours(h, w), ref(h, w), rtol=1e-6)
  weights = jnp.arange(6.0).reshape(2, 3)
  grad = lambda f: jax.grad(lambda h, w: jnp.sum(f(h, w) * weights), (0, 1))
  for a, b in zip(grad(ours)(h, w), grad(ref)(h, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  jaxpr = str(jax.make_jaxpr(grad(ours))(h, w))
  assert "scatter" not in jaxpr
  assert ("checkpoint" in jaxpr or "remat" in jaxpr) == bool(chunk)


@pytest.mark.parametrize("cached", [False, True])
def test_top_k_gradients_are_the_full_gradients_restricted(cached):
  params = models.init_params(CFG, 2)
  b = batch()
  t = Trainable.parse("top:2", CFG.num_layers)
  train, frozen = t.split(params)
  if cached:  # the prefix as the cache would serve it
    m = b["mask"]
    b = {**b, "prefix": decoder.prefix(CFG, frozen, b["tokens"], models.positions_from_mask(m),
                                       m)}
  (loss, _), grads = jax.jit(step_lib.make_grad_fn(
      models.graphdef(CFG), "action_ce", trainable=t))(train, frozen, b)
  want = jax.jit(jax.grad(full_loss))(params, b)
  np.testing.assert_allclose(loss, full_loss(params, b), rtol=1e-5)
  assert set(grads) == {"layers", "final_norm"}  # nothing for the embeddings
  assert close(grads, t.split(want)[0])


# --- through the training loop ----------------------------------------------------


def il_config(steps: int, trainable: str):
  c = config_lib.base()
  c.model.update(CFG.to_dict())
  c.train.update(dict(steps=steps, batch_size=4, trainable=trainable))
  c.optim.update(dict(lr=1e-2, warmup_steps=1, total_steps=6))  # one schedule for all lengths
  c.checkpoint.update(dict(every=2, keep=5, async_save=False))
  c.data = config_lib.ml_collections.ConfigDict(dict(kind="records"))
  return c


def one_device(c):
  model_cfg = config_lib.model_config(c)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  return loop.Context(model_cfg, mesh, models.graphdef(model_cfg),
                      params_lib.shardings(model_cfg, mesh))


def train(c, workdir, source, init, devices: int = 1):
  stage = stages.make("il", c, train_source=source, pad_id=0)
  ctx = one_device(c) if devices == 1 else loop.build_context(c)  # data=8 fake devices
  state = loop.run(c, str(workdir), stage, init_params=init, ctx=ctx)
  return jax.device_get(state), [r["loss"] for r in metrics.read_jsonl(
      str(workdir / "metrics.jsonl"))]


def test_top_k_training_freezes_bitwise_keeps_no_moments_and_resumes(tmp_path):
  init = jax.device_get(models.init_params(CFG, 3))
  recs = records()
  c = il_config(6, "top:1")
  state, losses_ = train(c, tmp_path / "full", recs, init)
  p = state["params"]
  for name, a in p["layers"].items():
    assert np.array_equal(a[:3], init["layers"][name][:3]), name
  assert np.array_equal(p["embed"], init["embed"])
  assert not np.array_equal(p["layers"]["wq"][3], init["layers"]["wq"][3])
  mu = state["opt_state"][1][0].mu
  assert set(mu) == {"layers", "final_norm"} and mu["layers"]["wq"].shape[0] == 1
  # Stopped at step 4, resumed to 6: the same run.
  _, first = train(il_config(4, "top:1"), tmp_path / "resumed", recs, init)
  resumed, rest = train(c, tmp_path / "resumed", recs, init)
  assert close(resumed["params"], p, 0) and np.allclose(rest, losses_)
  # Another trainable slice cannot resume this run: its optimiser state has other shapes.
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"train\.trainable"):
    train(il_config(8, "top:2"), tmp_path / "resumed", recs, init)


@pytest.mark.parametrize("devices", [1, 8])
def test_prefix_cache_trains_like_the_uncached_run_and_is_reused(tmp_path, devices):
  """On 8 devices with 2 accumulated microbatches too: the prefix is split like the rows."""
  init = jax.device_get(models.init_params(CFG, 4))
  recs = records(32)
  t = Trainable.parse("top:2", CFG.num_layers)
  cache_dir = str(tmp_path / "cache")
  cached = prefix_cache.attach(recs, "input_ids", t.split(init)[1], CFG, cache_dir)
  assert cached[0]["prefix"].shape == (len(recs[0]["input_ids"]), CFG.hidden_size)
  c = il_config(5, "top:2")
  c.train.update(dict(batch_size=8 * (devices > 1) or 4, accum_steps=2 if devices > 1 else 1))
  plain, plain_losses = train(c, tmp_path / "plain", recs, init, devices)
  fast, fast_losses = train(c, tmp_path / "cached", cached, init, devices)
  np.testing.assert_allclose(fast_losses, plain_losses, rtol=1e-5)
  assert close(fast["params"], plain["params"], 1e-5)
  # Same frozen weights and records: the same cache; other weights: a new one.
  again = prefix_cache.attach(recs, "input_ids", t.split(init)[1], CFG, cache_dir)
  assert again.path == cached.path
  other = jax.tree.map(lambda a: a + 1e-3, init)
  moved = prefix_cache.attach(recs, "input_ids", t.split(other)[1], CFG, cache_dir)
  assert moved.path != cached.path
  assert not np.allclose(moved[0]["prefix"], cached[0]["prefix"])


def test_expected_critic_rows_from_the_cache_equal_the_uncached_rows(tmp_path):
  """The critic's (prompt, answer) rows: cached prefixes give the same loss and grads."""
  from act_jax import rewards
  from act_jax.stages import critic
  params = models.init_params(CFG, 5)
  t = Trainable.parse("top:1", CFG.num_layers)
  train, frozen = t.split(params)
  rng = np.random.default_rng(1)
  recs = [{"prompt_ids": rng.integers(3, 90, rng.integers(6, 20)).astype(np.int32),
           "label": "AB"[i % 2]} for i in range(4)]
  answers = [[7, 8, 2], [7, 9, 2]]
  cached = prefix_cache.attach(recs, "prompt_ids", frozen, CFG, str(tmp_path), suffixes=answers)
  assert cached[0]["prefix"].shape == (2, len(recs[0]["prompt_ids"]) + 3, CFG.hidden_size)
  plain = data_pipeline.collate(recs, 32, 0, "generation", meta=True)
  fast = data_pipeline.collate([cached[i] for i in range(4)], 32, 0, "generation", meta=True)
  judgment = rewards.JudgmentConfig()
  rows = lambda b: critic.expected_batch(b["tokens"], b["mask"], b["meta"]["label"], answers,
                                         ("A", "B"), judgment, 0)
  a, b = rows(plain), {**rows(fast), "prefix": fast["prefix"]}
  grad = jax.jit(step_lib.make_grad_fn(models.graphdef(CFG), "expected_reward", trainable=t))
  (la, _), ga = grad(train, frozen, a)
  (lb, _), gb = grad(train, frozen, b)
  np.testing.assert_allclose(lb, la, rtol=1e-5)
  assert close(gb, ga, 1e-5)
