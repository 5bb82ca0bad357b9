"""Loss functions, registered by name so every stage shares one train step.

A loss is `fn(model, batch, cfg) -> (loss_sum, denominator, metrics)`: the step divides
the summed loss by the *global* denominator, so token means stay right under gradient
accumulation and sharding.
"""
from __future__ import annotations

from typing import Any, Callable

import jax

LossFn = Callable[[Any, dict[str, jax.Array], Any], tuple[jax.Array, jax.Array, dict[str, jax.Array]]]

_REGISTRY: dict[str, LossFn] = {}


def register(name: str) -> Callable[[LossFn], LossFn]:
  def deco(fn: LossFn) -> LossFn:
    _REGISTRY[name] = fn
    return fn
  return deco


def get(name: str) -> LossFn:
  if name not in _REGISTRY:
    raise ValueError(f"config.train.loss: unknown loss {name!r}; known: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


from act_jax.losses import supervised  # noqa: E402,F401  (registers its losses)
from act_jax.losses import grpo  # noqa: E402,F401
