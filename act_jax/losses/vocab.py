"""The vocabulary projection of many positions, whole or in chunks of positions.

At a 150k vocabulary the float32 logits of 4k positions are 2.3 GiB, and a loss keeps
several buffers that size alive at once (the logits, their exponentials, the gradient
with respect to them). With `model.logits_chunk = c` the positions of each row go
through the projection c at a time, in a loop whose body is rematerialised: the
backward pass recomputes a chunk's logits instead of keeping all of them. Measured on
Qwen3-8B's every-position loss over 4k tokens (docs/tpu_aot.md): 1.4 GiB per chip less
for 2.2% more FLOPs (one more forward projection) and the head gathered per chunk.
Losses over few positions (an action, a short completion) gain nothing from it.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def over_positions(model, h: jax.Array, fn: Callable[..., Any], *xs: jax.Array) -> Any:
  """`fn(logits [B, M, V] float32, *xs)` for final hidden states h [B, M, D], where each x
  is [B, M, ...] (the targets, say) and every output leaf is [B, M, ...] too: one call, or
  with `model.cfg.logits_chunk` = c < M one rematerialised call per c positions (the
  last chunk padded; padded positions are computed and dropped)."""
  B, M, D = h.shape

  def project(h, *xs):
    b, m = h.shape[:2]  # one 2-D matmul: XLA:CPU runs a 3-D one's weight gradient slowly
    return fn(model.logits(h.reshape(b * m, D)).reshape(b, m, -1), *xs)

  c = model.cfg.logits_chunk
  if not c or M <= c:
    return project(h, *xs)
  n = -(-M // c)

  def split(x):  # [B, M, ...] -> [n, B, c, ...]: the loop runs over chunks, rows stay put
    x = jnp.pad(x, [(0, 0), (0, n * c - M)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(B, n, c, *x.shape[2:]), 1, 0)

  out = jax.lax.map(jax.checkpoint(lambda a: project(*a)), tuple(split(x) for x in (h, *xs)))
  return jax.tree.map(
      lambda y: jnp.moveaxis(y, 0, 1).reshape(B, n * c, *y.shape[3:])[:, :M], out)
