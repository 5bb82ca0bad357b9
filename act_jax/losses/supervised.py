"""Masked next-token cross-entropy: pre-training smoke runs and the IL action loss.

Only the positions that predict a loss token go through the vocabulary projection
when the batch says which they are (`target_index`, written by
`act_jax.data.pipeline.collate`): an action is ~16 of a few hundred tokens, and the
projection onto SmolLM2's 49k vocabulary is a fifth of its forward FLOPs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from act_jax.losses import register, vocab
from act_jax.models import positions_from_mask


def target_logprobs(model, h: jax.Array, targets: jax.Array) -> jax.Array:
  """log p(targets) [B, M] from the hidden states [B, M, D] that predict them, with
  one 2-D projection and no [B, M, V] log-softmax kept beyond the logits.

  The target's logit is a masked sum over the vocabulary, not `take_along_axis`: the
  gradient of a gather is a scatter into a zeroed float32 [B, M, V] buffer, which
  XLA:TPU keeps beside the logits (2.3 GiB per chip for 4k tokens of Qwen3-8B's
  vocabulary); a select's gradient is elementwise and fuses into the softmax's.
  In chunks of positions when `model.cfg.logits_chunk` is set (`vocab.over_positions`)."""

  def logprob(logits, targets):
    lse = jax.nn.logsumexp(logits, axis=-1)
    is_target = jnp.arange(logits.shape[-1]) == targets[..., None]
    return jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1) - lse

  return vocab.over_positions(model, h, logprob, targets)


@register("next_token")
def next_token_loss(model, batch, cfg=None):
  """Cross-entropy on every real token (what `loss_mask` defaults to)."""
  mask = batch["mask"].astype(bool)
  return _masked_ce(model, {**batch, "loss_mask": batch.get("loss_mask", mask)})


@register("action_ce")
def action_loss(model, batch, cfg=None):
  """The supervised action loss: cross-entropy on the expert action's tokens only."""
  return _masked_ce(model, batch)


def _masked_ce(model, batch):
  tokens, mask = batch["tokens"], batch["mask"].astype(bool)
  h = model.hidden(tokens, positions_from_mask(mask), mask, x=batch.get("prefix"))
  if "target_index" in batch:  # only the target positions
    idx = batch["target_index"]
    h = jnp.take_along_axis(h, jnp.maximum(idx - 1, 0)[..., None], axis=1)
    targets = jnp.take_along_axis(tokens, idx, axis=1)
    w = batch["target_mask"].astype(jnp.float32)
  else:
    h, targets = h[:, :-1], tokens[:, 1:]
    w = (batch["loss_mask"][:, 1:] & mask[:, 1:]).astype(jnp.float32)
  logp = target_logprobs(model, h, targets)
  total = -jnp.sum(logp * w)
  denom = jnp.sum(w)
  return total, denom, {"tokens": denom}
