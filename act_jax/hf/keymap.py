"""The one table per family that names every HF tensor and how it becomes ours.

Import and export both walk `tensor_specs(cfg)`, so a tensor cannot be read one
way and written another. HF `nn.Linear` weights are `[out, in]` with heads
flattened; ours are `[in..., out...]` with heads split, so a linear transform is a
transpose plus a reshape, exact in both directions. Our RoPE uses HF's rotate-half
layout, so q/k need no permutation.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np

from act_jax.models import ModelConfig, abstract_params


@dataclasses.dataclass(frozen=True)
class Transform:
  """Exact map between one HF tensor and one (per-layer) slice of our parameter.

  kind "keep": same shape; "flat": HF holds ours flattened (biases);
  "linear": HF `[prod(out axes), prod(in axes)]`, ours `[in axes..., out axes...]`
  with the first `n_in` axes the inputs.
  """
  kind: str
  n_in: int = 1

  def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    if self.kind == "keep":
      return tuple(shape)
    if self.kind == "flat":
      return (math.prod(shape),)
    return (math.prod(shape[self.n_in:]), math.prod(shape[:self.n_in]))

  def to_ours(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return (x.T if self.kind == "linear" else x).reshape(shape)

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    hf_shape = self.hf_shape(x.shape)
    if self.kind == "linear":
      return x.reshape(hf_shape[::-1]).T
    return x.reshape(hf_shape)


KEEP = Transform("keep")              # embeddings, norms
FLAT = Transform("flat")              # ours [heads, head_dim] <-> HF [heads * head_dim]
LINEAR = Transform("linear", 1)       # ours [in, out...] <-> HF [out, in]
LINEAR_OUT = Transform("linear", 2)   # ours [heads, head_dim, out] <-> HF [out, heads * head_dim]


@dataclasses.dataclass(frozen=True)
class Rule:
  """One row of a family's table; `{layer}` in `hf` marks a per-layer tensor."""
  hf: str
  path: tuple[str, ...]
  transform: Transform

  @property
  def per_layer(self) -> bool:
    return "{layer}" in self.hf


_L = "model.layers.{layer}."
_BASE = (
    Rule("model.embed_tokens.weight", ("embed",), KEEP),
    Rule(_L + "input_layernorm.weight", ("layers", "attn_norm"), KEEP),
    Rule(_L + "self_attn.q_proj.weight", ("layers", "wq"), LINEAR),
    Rule(_L + "self_attn.k_proj.weight", ("layers", "wk"), LINEAR),
    Rule(_L + "self_attn.v_proj.weight", ("layers", "wv"), LINEAR),
    Rule(_L + "self_attn.o_proj.weight", ("layers", "wo"), LINEAR_OUT),
    Rule(_L + "post_attention_layernorm.weight", ("layers", "mlp_norm"), KEEP),
    Rule(_L + "mlp.gate_proj.weight", ("layers", "w_gate"), LINEAR),
    Rule(_L + "mlp.up_proj.weight", ("layers", "w_up"), LINEAR),
    Rule(_L + "mlp.down_proj.weight", ("layers", "w_down"), LINEAR),
    Rule("model.norm.weight", ("final_norm",), KEEP),
    Rule("lm_head.weight", ("lm_head",), LINEAR),  # only when embeddings are untied
)
_QKV_BIAS = (
    Rule(_L + "self_attn.q_proj.bias", ("layers", "bq"), FLAT),
    Rule(_L + "self_attn.k_proj.bias", ("layers", "bk"), FLAT),
    Rule(_L + "self_attn.v_proj.bias", ("layers", "bv"), FLAT),
)
_QK_NORM = (
    Rule(_L + "self_attn.q_norm.weight", ("layers", "q_norm"), KEEP),
    Rule(_L + "self_attn.k_norm.weight", ("layers", "k_norm"), KEEP),
)

KEY_MAPS: dict[str, tuple[Rule, ...]] = {
    "llama": _BASE,
    "qwen2": _BASE + _QKV_BIAS,
    "qwen3": _BASE + _QK_NORM,
}

# HF tensors that carry no weights of ours: recomputed buffers, and a tied head's copy.
IGNORED = (re.compile(r"\.rotary_emb\.inv_freq$"),)
TIED_HEAD = "lm_head.weight"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """One HF tensor: its name, where it lives in our pytree, and both shapes."""
  hf: str
  path: tuple[str, ...]
  layer: int | None
  transform: Transform
  shape: tuple[int, ...]     # ours, per layer
  hf_shape: tuple[int, ...]


def get_path(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _paths(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
  out = []
  for k, v in tree.items():
    out += _paths(v, prefix + (k,)) if isinstance(v, dict) else [prefix + (k,)]
  return out


def tensor_specs(cfg: ModelConfig) -> list[TensorSpec]:
  """Every HF tensor of `cfg`'s model, in HF's usual order (embed, layer 0.., norm, head)."""
  shapes = abstract_params(cfg)
  rules = [r for r in KEY_MAPS[cfg.arch] if _has(shapes, r.path)]
  missing = set(_paths(shapes)) - {r.path for r in rules}
  if missing:  # a model change without a table change: fail loudly, never skip weights
    raise AssertionError(f"KEY_MAPS[{cfg.arch!r}] has no rule for {sorted(missing)}")

  def spec(rule: Rule, layer: int | None) -> TensorSpec:
    shape = tuple(get_path(shapes, rule.path).shape)
    shape = shape[1:] if layer is not None else shape
    return TensorSpec(rule.hf.format(layer=layer), rule.path, layer, rule.transform, shape,
                      rule.transform.hf_shape(shape))

  first = next(i for i, r in enumerate(rules) if r.per_layer)  # table order: head rules first
  head = [spec(r, None) for r in rules[:first]]
  body = [spec(r, i) for i in range(cfg.num_layers) for r in rules if r.per_layer]
  tail = [spec(r, None) for r in rules[first:] if not r.per_layer]
  return head + body + tail


def _has(tree: dict[str, Any], path: tuple[str, ...]) -> bool:
  try:
    get_path(tree, path)
    return True
  except KeyError:
    return False
