"""Both A/B orders of every critic pair in one batch: a letter preference earns nothing
and, with the orders together, gets no gradient."""
import itertools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from act_jax.data import pipeline as data_pipeline
from act_jax.losses import expected, grpo as grpo_loss
from act_jax.stages import critic, synthetic_critic
import config_files


class LetterBias:
  """A critic that always writes a well-formed answer and whose only parameter is a bias
  b for letter A over letter B: it cannot read the state or the actions at all. Logits
  come from the current token: "?" -> "Answer:", "Answer:" -> A (+b) or B (-b), a
  letter -> EOS; everything else 30 nats below."""

  def __init__(self, b, vocab):
    ids = synthetic_critic._ID
    w = jnp.full((vocab, vocab), -30.0)
    w = w.at[ids["?"], ids["Answer:"]].set(0.0).at[ids["A"], synthetic_critic.EOS].set(0.0)
    w = w.at[ids["B"], synthetic_critic.EOS].set(0.0)
    self.w = w.at[ids["Answer:"], ids["A"]].set(b).at[ids["Answer:"], ids["B"]].set(-b)
    self.cfg = types.SimpleNamespace(logits_chunk=0)  # the decoder settings losses read

  def hidden(self, tokens, positions, mask, x=None):
    return jax.nn.one_hot(tokens, self.w.shape[0])

  def logits(self, h):
    return h @ self.w


@pytest.mark.parametrize("bias", [0.0, 2.0, 15.0])
def test_one_update_leaves_a_letter_bias_unchanged(bias):
  """On every training batch of the critic stage the loss's gradient in a pure letter
  bias is 0, at any bias (saturated included): each pair's two orders cancel. With
  one order per pair a batch's label imbalance (e.g. 10 A vs 6 B of 16) moved it."""
  c = config_files.load("act_critic_tiny")
  c.grpo.estimator = "expected"
  c.train.batch_size = 16
  stage = synthetic_critic.make_stage(c)
  cfg = grpo_loss.GRPOConfig(advantage="grpo")
  vocab = c.model.vocab_size

  def loss(b, batch):
    total, denom, m = expected.expected_reward_loss(LetterBias(b, vocab), batch, cfg)
    return total / denom, m

  grad = jax.jit(jax.grad(loss, has_aux=True))
  for raw in itertools.islice(stage.batches(0, 1), 5):
    labels = raw["meta"]["label"]
    assert sorted(labels[0::2] + labels[1::2]) == sorted(labels)
    assert all(a != b for a, b in zip(labels[0::2], labels[1::2]))  # pairs, both orders
    batch, _ = stage.prepare(None, {}, raw)
    g, m = grad(jnp.asarray(bias), {k: jnp.asarray(v) for k, v in batch.items()})
    assert abs(float(g)) < 1e-7, float(g)
    # Its letter preference is what the metric reports: p(A | a letter) = sigmoid(2b).
    np.testing.assert_allclose(m["first_letter_rate"], 1 / (1 + np.exp(-2 * bias)), rtol=1e-5)


def test_single_order_records_are_refused():
  recs = synthetic_critic.records(8, 6, 0, heldout=False)
  with pytest.raises(ValueError, match=r"critic records 0 and 1 .*both_orders"):
    critic.check_both_orders(recs[::2], 4, "config.train")
  with pytest.raises(ValueError, match=r"config\.train\.batch_size=5: .* must be even"):
    critic.check_both_orders(recs, 5, "config.train")
  critic.check_both_orders(recs, 4, "config.train")


@pytest.mark.parametrize("group_by_length", [0, 2])
def test_records_kept_together_share_a_batch_and_each_epoch_sees_all(group_by_length):
  n, k, bs = 24, 2, 4
  recs = [{"prompt_ids": np.arange(1 + (i // k) % 5, dtype=np.int32), "i": str(i)}
          for i in range(n)]
  it = data_pipeline.make_batches(recs, batch_size=bs, seed=3, pad_id=0, mode="generation",
                                  shard_index=0, shard_count=1, num_epochs=2,
                                  keep_together=k, group_by_length=group_by_length)
  seen = [int(x) for b in it for x in b["meta"]["i"]]
  assert len(seen) == 2 * n and sorted(seen[:n]) == list(range(n))
  for b in range(0, len(seen), bs):
    rows = seen[b:b + bs]
    assert all(rows[j + 1] == rows[j] + 1 and rows[j] % k == 0 for j in range(0, bs, k))
  with pytest.raises(ValueError, match="keep_together=2"):
    data_pipeline.make_batches(recs[:5], batch_size=2, seed=0, pad_id=0, mode="generation",
                               shard_index=0, shard_count=1, keep_together=2)
