"""Model hyper-parameters shared by Llama 3, Qwen2/2.5 and Qwen3.

One dataclass covers the three families: they differ only in q/k/v bias (Qwen2),
per-head q/k RMSNorm (Qwen3), an explicit head_dim (Qwen3) and RoPE scaling (Llama 3.1).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

ARCHITECTURES = ("llama", "qwen2", "qwen3")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# How the decoder computes attention (`decoder.attention`): XLA einsums over an explicit
# mask, `jax.nn.dot_product_attention`, or the TPU Pallas splash kernel (TPU only;
# causal + padding masks only).
ATTENTION = ("xla", "dot_product", "splash")
_ROPE_SCALING_TYPES = ("llama3",)


_NEWER = {"logits_chunk": 0}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything the decoder's shapes and numerics depend on."""
  arch: str = "llama"
  vocab_size: int = 256
  hidden_size: int = 64
  intermediate_size: int = 128
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 16
  rope_theta: float = 10000.0
  rope_scaling: tuple[tuple[str, Any], ...] | None = None  # hashable dict items
  rms_norm_eps: float = 1e-6
  tie_embeddings: bool = True
  qkv_bias: bool = False
  qk_norm: bool = False
  max_position_embeddings: int = 2048
  param_dtype: str = "float32"
  dtype: str = "float32"
  scan_layers: bool = True
  remat: bool = False
  attention: str = "xla"
  # Positions per row whose vocabulary projection a loss computes at a time, recomputed
  # in backward (`losses.vocab`); 0: all at once. Memory, not results.
  logits_chunk: int = 0
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  pad_token_id: int | None = None

  def __post_init__(self):
    _check(self.arch in ARCHITECTURES, "arch",
           f"unknown architecture {self.arch!r}; expected one of {ARCHITECTURES}")
    _check(self.param_dtype in DTYPES, "param_dtype",
           f"{self.param_dtype!r} is not one of {tuple(DTYPES)}")
    _check(self.dtype in DTYPES, "dtype", f"{self.dtype!r} is not one of {tuple(DTYPES)}")
    _check(self.attention in ATTENTION, "attention",
           f"{self.attention!r} is not one of {ATTENTION}")
    for f in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
              "num_heads", "num_kv_heads", "head_dim"):
      _check(getattr(self, f) > 0, f, f"must be positive, got {getattr(self, f)}")
    _check(self.logits_chunk >= 0, "logits_chunk",
           f"must be >= 0 (0: no chunks), got {self.logits_chunk}")
    _check(self.num_heads % self.num_kv_heads == 0, "num_heads",
           f"{self.num_heads} heads are not a multiple of num_kv_heads={self.num_kv_heads}")
    _check(self.head_dim % 2 == 0, "head_dim", "RoPE needs an even head_dim")
    if self.rope_scaling is not None:
      kind = dict(self.rope_scaling).get("rope_type")
      _check(kind in _ROPE_SCALING_TYPES, "rope_scaling",
             f"rope_type {kind!r} is not supported (supported: {_ROPE_SCALING_TYPES})")

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    """Builds from a plain/ConfigDict mapping, rejecting unknown keys by name."""
    d = dict(d)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"config.model: unknown field(s) {unknown}; known: {sorted(known)}")
    if isinstance(d.get("rope_scaling"), Mapping):
      d["rope_scaling"] = tuple(sorted(dict(d["rope_scaling"]).items()))
    if isinstance(d.get("eos_token_id"), list):
      d["eos_token_id"] = tuple(d["eos_token_id"])
    return cls(**d)

  def to_dict(self) -> dict[str, Any]:
    """The fields as plain data; those added after runs were made (`_NEWER`) only when
    set, so those runs' stage fingerprints and prefix caches keep their keys."""
    d = dataclasses.asdict(self)
    for f, default in _NEWER.items():
      if d[f] == default:
        del d[f]
    if self.rope_scaling is not None:
      d["rope_scaling"] = dict(self.rope_scaling)
    if isinstance(self.eos_token_id, tuple):
      d["eos_token_id"] = list(self.eos_token_id)
    return d

  @property
  def jnp_dtype(self):
    return DTYPES[self.dtype]

  @property
  def jnp_param_dtype(self):
    return DTYPES[self.param_dtype]

  @property
  def eos_ids(self) -> tuple[int, ...]:
    if self.eos_token_id is None:
      return ()
    if isinstance(self.eos_token_id, int):
      return (self.eos_token_id,)
    return tuple(self.eos_token_id)

  def num_params(self) -> int:
    """Parameter count from the shapes alone (checked against the built model in tests)."""
    d, h, kv, hd, f = (self.hidden_size, self.num_heads, self.num_kv_heads,
                       self.head_dim, self.intermediate_size)
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    if self.qkv_bias:
      attn += h * hd + 2 * kv * hd
    if self.qk_norm:
      attn += 2 * hd
    layer = attn + 3 * d * f + 2 * d
    embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return self.num_layers * layer + embed + d


def _check(ok: bool, field: str, msg: str) -> None:
  if not ok:
    raise ValueError(f"config.model.{field}: {msg}")
