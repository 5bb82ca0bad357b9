"""Masked next-token cross-entropy: pre-training smoke runs and the IL action loss."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from act_jax.losses import register
from act_jax.models import positions_from_mask


def token_logprobs(model, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Log-probability of each next token under the model, and the entropy of each step.

  Returns [B, T-1] arrays aligned with tokens[:, 1:]; `mask` is the [B, T] validity
  mask (padding may sit on either side).
  """
  logits = model(tokens, positions_from_mask(mask), mask)
  logits = logits[:, :-1]
  logp_all = jax.nn.log_softmax(logits, axis=-1)
  logp = jnp.take_along_axis(logp_all, tokens[:, 1:, None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  return logp, entropy


@register("next_token")
def next_token_loss(model, batch, cfg=None):
  """Cross-entropy on every real token (what `loss_mask` defaults to)."""
  mask = batch["mask"].astype(bool)
  loss_mask = batch.get("loss_mask", mask)
  return _masked_ce(model, batch["tokens"], mask, loss_mask)


@register("action_ce")
def action_loss(model, batch, cfg=None):
  """The supervised action loss: cross-entropy on the expert action's tokens only."""
  return _masked_ce(model, batch["tokens"], batch["mask"].astype(bool), batch["loss_mask"])


def _masked_ce(model, tokens, mask, loss_mask):
  logp, _ = token_logprobs(model, tokens, mask)
  w = (loss_mask[:, 1:] & mask[:, 1:]).astype(jnp.float32)
  total = -jnp.sum(logp * w)
  denom = jnp.sum(w)
  return total, denom, {"tokens": denom}
