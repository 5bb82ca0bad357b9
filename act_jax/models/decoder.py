"""A Flax NNX decoder-only transformer matching HF Llama 3, Qwen2/2.5 and Qwen3.

This is the training and reference forward (losses, scoring, HF parity); generation
runs on its own unstacked copy of these weights with a KV cache
(`act_jax.sampling.inference`). Layer parameters are stacked along a leading `layers`
axis, run under `jax.lax.scan` (compile time flat in depth: the default) or as an
unrolled loop (`scan_layers=False`: faster steps on CPU, see benchmarks/train_step.py).
Every parameter carries logical axis names in its `logical_axes` metadata; the mesh
rules in `act_jax.sharding` turn them into shardings, so parallelism never touches
this file.

Numerics follow HF: RMSNorm and softmax in float32, RoPE in the rotate-half layout
(HF checkpoints load without permuting q/k), matmuls in `config.dtype`.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from act_jax import sharding
from act_jax.models.config import ModelConfig

_NEG_INF = -1e30


def _param(rngs: nnx.Rngs, shape, axes, dtype, init: str = "normal") -> nnx.Param:
  if init == "normal":
    value = 0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)
  elif init == "ones":
    value = jnp.ones(shape, jnp.float32)
  else:
    value = jnp.zeros(shape, jnp.float32)
  return nnx.Param(value.astype(dtype), logical_axes=axes)


class Layers(nnx.Module):
  """All decoder layers' weights, stacked on a leading `layers` axis."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    L, D, H, K, Hd, F = (cfg.num_layers, cfg.hidden_size, cfg.num_heads,
                         cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size)
    p = lambda shape, axes, init="normal": _param(
        rngs, (L,) + shape, ("layers",) + axes, cfg.jnp_param_dtype, init)
    self.attn_norm = p((D,), ("norm",), "ones")
    self.wq = p((D, H, Hd), ("embed", "heads", "head_dim"))
    self.wk = p((D, K, Hd), ("embed", "kv_heads", "head_dim"))
    self.wv = p((D, K, Hd), ("embed", "kv_heads", "head_dim"))
    self.wo = p((H, Hd, D), ("heads", "head_dim", "embed"))
    if cfg.qkv_bias:
      self.bq = p((H, Hd), ("heads", "head_dim"), "zeros")
      self.bk = p((K, Hd), ("kv_heads", "head_dim"), "zeros")
      self.bv = p((K, Hd), ("kv_heads", "head_dim"), "zeros")
    if cfg.qk_norm:
      self.q_norm = p((Hd,), ("norm",), "ones")
      self.k_norm = p((Hd,), ("norm",), "ones")
    self.mlp_norm = p((D,), ("norm",), "ones")
    self.w_gate = p((D, F), ("embed", "mlp"))
    self.w_up = p((D, F), ("embed", "mlp"))
    self.w_down = p((F, D), ("mlp", "embed"))


class Decoder(nnx.Module):
  """Token ids -> next-token logits over the whole (padded) sequence."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    D, V = cfg.hidden_size, cfg.vocab_size
    self.embed = _param(rngs, (V, D), ("vocab", "embed"), cfg.jnp_param_dtype)
    self.layers = Layers(cfg, rngs)
    self.final_norm = _param(rngs, (D,), ("norm",), cfg.jnp_param_dtype, "ones")
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs, (D, V), ("embed", "vocab"), cfg.jnp_param_dtype)

  def __call__(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
    """Runs the decoder: `logits(hidden(...))`, see `hidden` for the arguments."""
    return self.logits(self.hidden(tokens, positions, mask))

  def logits(self, h: jax.Array) -> jax.Array:
    """Final hidden states [..., D] -> float32 logits [..., V].

    Separate so callers that need few positions (the sampler's prefill, scoring a
    continuation) skip the vocabulary projection everywhere else.
    """
    cfg = self.cfg
    head = self.embed[...].T if cfg.tie_embeddings else self.lm_head[...]
    return jnp.einsum("...d,dv->...v", h, head.astype(cfg.jnp_dtype)).astype(jnp.float32)

  def hidden(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array,
             x: jax.Array | None = None) -> jax.Array:
    """Runs the layers and the final norm.

    Args:
      tokens: [B, T] int ids.
      positions: [B, T] RoPE positions (left padding: cumsum(mask) - 1).
      mask: [B, T] bool, which tokens are real; causality is by index. Or [B, T, T]:
        which keys each query attends to, for sequences that are not one causal
        stream (several continuations packed after one shared prompt:
        `stages.grpo.packed_candidate_batch`).
      x: [B, T, D] the residual stream entering this model's first layer instead of
        the token embeddings: the output of frozen layers below it (`prefix`), when
        this model holds only the layers above them (`act_jax.trainable`).
    Returns:
      final-normed hidden states [B, T, D].
    """
    if x is None:
      x = embed(self.cfg, self.embed[...], tokens)
    x = x.astype(self.cfg.jnp_dtype)  # a cached prefix is stored in float32
    x = run_layers(self.cfg, nnx.to_pure_dict(nnx.state(self.layers)), x, positions, mask)
    return rms_norm(x, self.final_norm[...], self.cfg.rms_norm_eps)


def embed(cfg: ModelConfig, table: jax.Array, tokens: jax.Array) -> jax.Array:
  return table.astype(cfg.jnp_dtype)[tokens]


def prefix(cfg: ModelConfig, frozen: dict[str, Any], tokens: jax.Array, positions: jax.Array,
           mask: jax.Array) -> jax.Array:
  """The residual stream after the embeddings and the layers in `frozen["layers"]`
  (a bottom slice of the stack): what the layers above it start from."""
  return run_layers(cfg, frozen["layers"], embed(cfg, frozen["embed"], tokens), positions,
                    mask)


def run_layers(cfg: ModelConfig, layer_params: dict[str, Any], x: jax.Array,
               positions: jax.Array, mask: jax.Array) -> jax.Array:
  """Runs the stacked layers `layer_params` (however many it holds) on x [B, T, D]."""
  n = jax.tree.leaves(layer_params)[0].shape[0]
  if n == 0:
    return x
  cos, sin = rope_tables(positions, cfg)
  if cfg.attention == "splash":  # the kernel builds its causal mask: keep [B, T]
    if mask.ndim == 3:
      raise ValueError("config.model.attention='splash' takes causal + padding masks only, "
                       "not a [B, T, T] mask (packed candidates: loss.estimator='expected'); "
                       "use 'xla' or 'dot_product'")
    attn_mask = mask
  else:
    T = x.shape[1]
    attn_mask = (mask if mask.ndim == 3 else  # given: e.g. candidates packed after a prompt
                 jnp.tril(jnp.ones((T, T), bool))[None] & mask[:, None, :])  # [B,T,T]

  def layer(x, p):
    return sharding.constrain_rows(_layer(cfg, sharding.constrain_rows(x), p, cos, sin,
                                          attn_mask))

  if cfg.remat:
    layer = jax.checkpoint(layer)
  if cfg.scan_layers:
    x, _ = jax.lax.scan(lambda h, p: (layer(h, p), None), x, layer_params)
  else:
    for i in range(n):
      x = layer(x, jax.tree.map(lambda a: a[i], layer_params))
  return x


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
  dt = x.dtype
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (w.astype(jnp.float32) * x32).astype(dt)


def inv_frequencies(cfg: ModelConfig) -> jax.Array:
  """RoPE inverse frequencies, with HF's llama3 long-context rescaling when configured."""
  hd = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
  if cfg.rope_scaling is None:
    return inv
  s = dict(cfg.rope_scaling)
  factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
  old = s["original_max_position_embeddings"]
  lo_wavelen, hi_wavelen = old / lo, old / hi
  wavelen = 2 * math.pi / inv
  scaled = jnp.where(wavelen > lo_wavelen, inv / factor, inv)
  smooth = (old / wavelen - lo) / (hi - lo)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= hi_wavelen) & (wavelen <= lo_wavelen)
  return jnp.where(medium, smoothed, scaled)


def rope_tables(positions: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
  angles = positions.astype(jnp.float32)[..., None] * inv_frequencies(cfg)  # [B,T,Hd/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B,T,1,Hd]
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotate-half RoPE in float32; x [..., T, n, Hd], cos/sin [..., T, 1, Hd]."""
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * cos + rotated * sin).astype(x.dtype)


def dense(x: jax.Array, w: jax.Array, contract: int = 1) -> jax.Array:
  """x [..., c1..cn] @ w [c1..cn, o...] -> [..., o...] as one 2-D matmul.

  The same contraction as the einsum, but XLA:CPU runs the backward of a
  [B, T, D] x [D, ...] einsum (the weight gradient contracts over both B and T)
  well below matmul speed; flattened to 2-D it does not (-16% train step time on
  the small benchmark shape, identical numerics).
  """
  lead, c = x.shape[:x.ndim - contract], x.shape[x.ndim - contract:]
  y = x.reshape(-1, math.prod(c)) @ w.reshape(math.prod(c), -1)
  return y.reshape(*lead, *w.shape[contract:])


def _layer(cfg: ModelConfig, x, p: dict[str, Any], cos, sin, mask):
  dt = cfg.jnp_dtype
  w = lambda name: p[name].astype(dt)
  h = rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
  q, k, v = dense(h, w("wq")), dense(h, w("wk")), dense(h, w("wv"))
  if cfg.qkv_bias:
    q, k, v = q + w("bq"), k + w("bk"), v + w("bv")
  if cfg.qk_norm:
    q = rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
    k = rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
  q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
  attn = attention(cfg.attention, q, k, v, mask)
  x = x + dense(attn, w("wo"), contract=2)
  h = rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
  gate, up = dense(h, w("w_gate")), dense(h, w("w_up"))
  x = x + dense(jax.nn.silu(gate) * up, w("w_down"))
  return x


def attention(impl: str, q: jax.Array, k: jax.Array, v: jax.Array,
              mask: jax.Array) -> jax.Array:
  """Grouped-query attention by `impl` (`ModelConfig.attention`); q [B,T,H,Hd], k/v
  [B,S,K,Hd]; mask [B,T,S] bool, or [B,T] (which tokens are real) for "splash"."""
  if impl == "xla":
    return _xla_attention(q, k, v, mask)
  if impl == "dot_product":
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])
  if impl == "splash":
    return _splash_attention(q, k, v, mask)
  raise ValueError(f"config.model.attention: unknown implementation {impl!r}")


def _xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  B, T, H, Hd = q.shape
  K = k.shape[2]
  qg = q.reshape(B, T, K, H // K, Hd)
  scores = jnp.einsum("btkgd,bskd->bkgts", qg, k).astype(jnp.float32) / math.sqrt(Hd)
  scores = jnp.where(mask[:, None, None], scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
  return out.reshape(B, T, H, Hd)


_SPLASH_BLOCK = 128  # the kernel's default block: sequences are padded to a multiple


def _splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, real: jax.Array) -> jax.Array:
  """The TPU Pallas splash kernel, causal, with padding as segment ids (real 1, pad 0:
  a real query sees only real keys). Under a mesh (`sharding.with_mesh`) it runs per
  chip in a `shard_map`, rows over the batch axes and heads over `tensor`: XLA cannot
  split a Pallas call, and would otherwise gather whole activations onto every chip."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash

  T = q.shape[1]
  pad = -T % _SPLASH_BLOCK
  seg = jnp.pad(real.astype(jnp.int32), ((0, 0), (0, pad)))
  q, k, v = (jnp.pad(a, ((0, 0), (0, pad), (0, 0), (0, 0))).swapaxes(1, 2)
             for a in (q, k, v))  # [B, heads, T + pad, Hd]
  q = q * jnp.asarray(1 / math.sqrt(q.shape[-1]), q.dtype)

  def per_chip(q, k, v, seg):
    mask = splash.MultiHeadMask([splash.CausalMask((q.shape[2], q.shape[2]))] * q.shape[1])
    kernel = splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1)
    return jax.vmap(lambda q, k, v, s: kernel(q, k, v, splash.SegmentIds(s, s)))(
        q, k, v, seg)

  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    rows = tuple(a for a in sharding.BATCH if mesh.shape[a] > 1)
    rows = rows if q.shape[0] % math.prod(mesh.shape[a] for a in rows) == 0 else ()
    heads = "tensor" if k.shape[1] % mesh.shape["tensor"] == 0 else None
    qkv = P(rows or None, heads, None, None)
    per_chip = jax.shard_map(per_chip, mesh=mesh, in_specs=(qkv, qkv, qkv, P(rows or None)),
                             out_specs=qkv, check_vma=False)
  out = per_chip(q, k, v, seg)
  return out.swapaxes(1, 2)[:, :T]


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """RoPE positions for a (left-)padded batch: real tokens count from 0."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
