"""Loss functions, registered by name so every stage shares one train step.

A loss is `fn(model, batch, cfg) -> (loss_sum, denominator, metrics)`: the step divides
the summed loss by the *global* denominator, so token means stay right under gradient
accumulation and sharding.
"""
from __future__ import annotations

from typing import Any, Callable

import jax

from act_jax.registry import Registry

LossFn = Callable[[Any, dict[str, jax.Array], Any], tuple[jax.Array, jax.Array, dict[str, jax.Array]]]

LOSSES: Registry[LossFn] = Registry("loss", "loop.Stage.loss")  # each stage names its own
register, get = LOSSES.register, LOSSES.get


from act_jax.losses import supervised  # noqa: E402,F401  (registers its losses)
from act_jax.losses import grpo  # noqa: E402,F401
from act_jax.losses import expected  # noqa: E402,F401
