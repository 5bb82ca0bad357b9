"""Replay (`act_jax.data.replay`): records mixed into another stage's steps.

References: the step's loss and gradient against the stage's own loss plus weight x
the replayed records' mean cross-entropy, each computed alone on the plain forward.
"""
import jax
import numpy as np
import optax
import pytest

from act_jax import losses, models, step as step_lib
from act_jax.data import pipeline as data_pipeline, replay
from act_jax.trainable import Trainable

from test_finetune import CFG, records  # prompt + 5-token target rows of varied length


def test_replay_batches_are_seeded_and_split_over_shards():
  r = replay.Replay(records(20, 0), batch_size=8, weight=0.5, seed=3, pad_id=0)
  a, b = r.batch(5), r.batch(5)
  assert all(np.array_equal(a[k], b[k]) for k in a)  # a resumed run replays the same
  assert not np.array_equal(a["replay_tokens"], r.batch(6)["replay_tokens"])
  halves = [r.batch(5, i, 2) for i in range(2)]
  for k in ("replay_tokens", "replay_target_index"):
    np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), a[k])
  np.testing.assert_array_equal(a["replay_weight"], 0.5)
  more = replay.Replay(records(3, 0), batch_size=8, weight=1.0, seed=0, pad_id=0).batch(0)
  assert len(more["replay_tokens"]) == 8  # more rows than records: drawn with replacement
  with pytest.raises(ValueError, match=r"replay_batch_size=0: must be >= 1"):
    replay.Replay(records(20, 0), batch_size=0, weight=1.0, seed=0, pad_id=0)


def test_step_adds_the_weighted_replay_loss():
  """loss = own mean + w x replay mean, and its gradient is theirs, from one batch."""
  params = models.init_params(CFG, 0)
  gdef = models.graphdef(CFG)
  own = data_pipeline.collate(records(4, 1), 32, 0, "supervised")
  rep = replay.Replay(records(10, 2), batch_size=4, weight=0.3, seed=0, pad_id=0).batch(1)
  grad_fn = jax.jit(step_lib.make_grad_fn(gdef, "action_ce"))
  frozen = Trainable().split(params)[1]
  (loss, (_, _, metrics)), grads = grad_fn(params, frozen, {**own, **rep})

  def mean(p, b):
    t, d, _ = losses.get("action_ce")(models.merge(gdef, p), b)
    return t / d

  unprefixed = replay.split(rep)[1]
  want = lambda p: mean(p, own) + 0.3 * mean(p, unprefixed)
  np.testing.assert_allclose(loss, want(params), rtol=1e-5)
  np.testing.assert_allclose(metrics["replay_loss"], mean(params, unprefixed), rtol=1e-5)
  ref = jax.grad(want)(params)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(g), r, rtol=1e-4, atol=1e-6)


def test_replay_trains_on_a_step_whose_own_loss_has_no_tokens():
  """Replay is its own term: a step whose loss has nothing to learn from (a critic
  step without judgment signal, every GRPO group filtered) still takes the replay
  update, w x grad of the replay mean (it used to be scaled by the loss's empty
  denominator, so it vanished exactly there)."""
  params = models.init_params(CFG, 0)
  gdef = models.graphdef(CFG)
  own = data_pipeline.collate(records(4, 1), 32, 0, "supervised")
  own["target_mask"] = np.zeros_like(own["target_mask"])  # no loss tokens of its own
  rep = replay.Replay(records(10, 2), batch_size=4, weight=0.3, seed=0, pad_id=0).batch(1)
  opt = optax.sgd(1.0)
  step = jax.jit(step_lib.make_train_step(gdef, "action_ce", opt))
  state, m = step(step_lib.init_state(params, opt, 0), {**own, **rep})
  assert int(m["no_signal"]) == 0

  def replay_mean(p):
    t, d, _ = losses.get("action_ce")(models.merge(gdef, p), replay.split(rep)[1])
    return 0.3 * t / d

  want = jax.grad(replay_mean)(params)
  for new, old, g in zip(*(jax.tree.leaves(x) for x in (state["params"], params, want))):
    np.testing.assert_allclose(np.asarray(old) - np.asarray(new), g, rtol=1e-4, atol=1e-7)


def test_replay_is_refused_under_a_frozen_prefix():
  params = models.init_params(CFG, 0)
  t = Trainable.parse("top:1", CFG.num_layers)
  own = data_pipeline.collate(records(4, 1), 32, 0, "supervised")
  rep = replay.Replay(records(10, 2), batch_size=4, weight=1.0, seed=0, pad_id=0).batch(1)
  grad_fn = step_lib.make_grad_fn(models.graphdef(CFG), "action_ce", trainable=t)
  with pytest.raises(ValueError, match=r"replay_batch_size > 0 needs config\.train\.trainable"):
    grad_fn(*t.split(params), {**own, **rep})
