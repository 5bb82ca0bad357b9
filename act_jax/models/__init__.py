"""The decoder, its config, and the split between static graph and parameter pytree."""
from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from act_jax.models.config import ModelConfig
from act_jax.models.decoder import Decoder, positions_from_mask

Params = dict[str, Any]  # nested dict of arrays: the pytree train steps see

__all__ = ["ModelConfig", "Decoder", "Params", "positions_from_mask", "init_params",
           "abstract_params", "logical_axes", "merge", "graphdef"]


def _build(cfg: ModelConfig, seed: int) -> Decoder:
  return Decoder(cfg, nnx.Rngs(params=seed))


def graphdef(cfg: ModelConfig) -> nnx.GraphDef:
  """The static half of `nnx.split`, built without allocating weights."""
  return nnx.split(nnx.eval_shape(lambda: _build(cfg, 0)))[0]


def merge(gdef: nnx.GraphDef, params: Params) -> Decoder:
  return nnx.merge(gdef, params)


def init_params(cfg: ModelConfig, seed: int = 0, shardings: Any = None) -> Params:
  """Random parameters, created already sharded when `shardings` is given."""
  fn = lambda: nnx.to_pure_dict(nnx.state(_build(cfg, seed)))
  return jax.jit(fn, out_shardings=shardings)()


def abstract_params(cfg: ModelConfig) -> Params:
  """Shapes/dtypes of the parameter pytree, no allocation."""
  return nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: _build(cfg, 0))))


def logical_axes(cfg: ModelConfig) -> Params:
  """The parameter pytree with each leaf replaced by its tuple of logical axis names."""
  state = nnx.state(nnx.eval_shape(lambda: _build(cfg, 0)))
  axes = jax.tree.map(lambda v: v.get_metadata()["logical_axes"], state,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(axes) if isinstance(axes, nnx.State) else axes
