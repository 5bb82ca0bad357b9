"""The decoder's forward pass specialised for generation.

`models.Decoder` stays the reference (training, HF parity) and has no cache. A
decode loop over its stacked `[L, ...]` weights (and a stacked cache) is slow on
every backend that cannot fuse a slice into a matmul operand (XLA:CPU, and GPU
without dynamic-slice fusion): weights and cache are re-sliced, and the cache
re-stacked, at every step. Measured on the small benchmark shape that was
~140 ms/step against ~15 ms/step here.

So generation runs on `InferenceWeights`: the same parameters unstacked per layer
(one copy, made once per parameter version by `prepare`), with q/k/v and gate/up
fused into one matmul each, every matrix stored as column panels (`panels`; the
lm_head as one panel when XLA:CPU has several threads, `head_width`). The
KV cache is a tuple of per-layer `(k, v)` arrays, keys `[N, K, Hd, S]` and values
`[N, K, S, Hd]`: head-major, and each laid out as the right-hand matrix of its
attention dot (q.k contracts Hd, p.v contracts S), so neither is transposed per
step. It is updated in place in the decode loop's carry. Numerics follow the decoder op for op (tests compare logits and greedy
tokens against it).
"""
from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import Mesh, NamedSharding

from act_jax import sharding as shd
from act_jax.models import decoder as dec
from act_jax.models.config import ModelConfig

Cache = tuple[tuple[jax.Array, jax.Array], ...]  # per layer k [N, K, Hd, S], v [N, K, S, Hd]

K_AXES, V_AXES = ("batch", "kv_heads", "head_dim", None), ("batch", "kv_heads", None, "head_dim")
_NEG_INF = -1e30  # as the decoder's attention mask
PANEL = 128  # output columns per weight panel
SMALL_ROWS = 64  # at most this many rows: one dot per panel (decoding); more: one big dot
# Panels [..., N/PANEL, D_in, PANEL]. The output's sharding goes on the panel axis, or
# on the columns when the panels do not divide (a mesh axis is used once).
_LAYER_AXES = {
    "attn_norm": ("norm",), "mlp_norm": ("norm",), "q_norm": ("norm",), "k_norm": ("norm",),
    "wqkv": ("kv_heads", None, "embed", None),  # per kv head: q group, k, v (G+2)*Hd wide
    "bqkv": ("kv_heads", None, "head_dim"),
    "wo": ("embed", "heads", "embed"),  # input H*Hd
    "w_gu": (None, "mlp", "embed", "mlp"),  # gate, up
    "w_down": ("embed", "mlp", "embed"),
}


@struct.dataclass
class InferenceWeights:
  """Per-layer, fused weights; `cfg` rides along as static pytree metadata."""
  cfg: ModelConfig = struct.field(pytree_node=False)
  embed: jax.Array  # [V, D]
  final_norm: jax.Array  # [D]
  head: jax.Array  # panels of lm_head [D, V] (of embed.T when tied), compute dtype
  layers: tuple[dict[str, jax.Array], ...]


def constrain(x: jax.Array, logical: tuple[str | None, ...], mesh: Mesh | None) -> jax.Array:
  """`with_sharding_constraint` by logical axis names; a no-op without a mesh."""
  if mesh is None:
    return x
  spec = shd.spec_for(logical, x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def panels(w: jax.Array, width: int = PANEL) -> jax.Array:
  """[D_in, ..., N] -> [..., ceil(N / width), D_in, width], zero-padded columns.

  Why: XLA:CPU's dot kernel (YNNPACK, 4 rows x 64 columns per tile) walks the
  weight matrix down its rows, one 256-byte piece per row at a stride of N
  floats; that access pattern streams ~8 GB/s where a sequential read reaches
  ~18. With each panel contiguous the same kernel reads the weights in order.
  Decoding is bound by reading the weights, so this is most of its speed.
  """
  d_in, *lead, n = w.shape
  width = min(width, n)
  w = jnp.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, -n % width)])
  w = w.reshape(d_in, *lead, -1, width)
  return jnp.moveaxis(w, 0, -2)


def head_width(vocab: int) -> int:
  """Panel width of the lm_head: `PANEL` on one CPU thread, else one whole [D, V] matrix.

  YNNPACK parallelises a dot over tiles of its output rows and columns, but loops
  over batch dimensions on one thread, so a batch of panel dots runs serially. The
  head is the largest matrix (40% of the small shape's weight bytes, 250 panels);
  as one plain dot its strided reads cost ~1.3x the CPU time of the panels (see
  `panels`) but splits over XLA:CPU's threads (one per schedulable core), which two
  free cores should more than repay (not yet confirmed on a quiet machine; see
  benchmarks/README.md). The layer matrices (1-6 MiB) stay panels: too small to
  split well.
  """
  if jax.default_backend() == "cpu" and len(os.sched_getaffinity(0)) > 1:
    return vocab
  return PANEL


def panel_dot(x: jax.Array, p: jax.Array, n: int) -> jax.Array:
  """x [..., D_in] @ the matrix stored as panels p -> [..., *p.shape[:-3], n]."""
  *rows, d_in = x.shape
  x2 = x.reshape(-1, d_in)
  m, batch = x2.shape[0], p.shape[:-2]
  if m <= SMALL_ROWS:
    # One small dot per panel (rows broadcast: a few KiB), each reading its panel in order.
    xb = jnp.broadcast_to(x2, batch + x2.shape)
    b = tuple(range(len(batch)))
    out = jax.lax.dot_general(xb, p, (((xb.ndim - 1,), (p.ndim - 2,)), (b, b)))
    out = jnp.moveaxis(out, -2, 0)  # [m, ..., panels, PANEL]
  else:  # compute-bound (a prefill): one large dot, XLA re-assembles the matrix
    out = jnp.einsum("mk,...kw->m...w", x2, p)
  out = out.reshape(m, *batch[:-1], -1)[..., :n]
  return out.reshape(*rows, *batch[:-1], n)


def prepare(cfg: ModelConfig, params: Any, mesh: Mesh | None = None) -> InferenceWeights:
  """Training parameters -> `InferenceWeights` (a copy of the layer weights).

  Call it under `jax.jit`; fused weights keep the heads/mlp sharding of their
  parts, so tensor parallelism carries over without communication.
  """
  D, H, K, Hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  G, dt = H // K, cfg.jnp_dtype
  stacked = params["layers"]
  layers = []
  for i in range(cfg.num_layers):
    p = {name: a[i] for name, a in stacked.items()}
    wqkv = jnp.concatenate([p["wq"].reshape(D, K, G, Hd), p["wk"][:, :, None],
                            p["wv"][:, :, None]], axis=2)
    w = {"attn_norm": p["attn_norm"], "mlp_norm": p["mlp_norm"],
         "wqkv": panels(wqkv.reshape(D, K, (G + 2) * Hd).astype(dt)),
         "wo": panels(p["wo"].reshape(H * Hd, D).astype(dt)),
         "w_gu": panels(jnp.stack([p["w_gate"], p["w_up"]], axis=1).astype(dt)),
         "w_down": panels(p["w_down"].astype(dt))}
    if cfg.qkv_bias:
      w["bqkv"] = jnp.concatenate([p["bq"].reshape(K, G, Hd), p["bk"][:, None],
                                   p["bv"][:, None]], axis=1).astype(dt)
    if cfg.qk_norm:
      w["q_norm"], w["k_norm"] = p["q_norm"], p["k_norm"]
    layers.append({k: constrain(v, _LAYER_AXES[k], mesh) for k, v in w.items()})
  head = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
  head = panels(head.astype(dt), head_width(cfg.vocab_size))
  head = constrain(head, ("vocab", "embed", "vocab"), mesh)
  return InferenceWeights(cfg=cfg, embed=params["embed"], final_norm=params["final_norm"],
                          head=head, layers=tuple(layers))


def constrain_cache(cache: Cache, mesh: Mesh | None) -> Cache:
  return tuple((constrain(k, K_AXES, mesh), constrain(v, V_AXES, mesh)) for k, v in cache)


def init_cache(cfg: ModelConfig, batch: int, slots: int, mesh: Mesh | None = None) -> Cache:
  N, K, Hd, dt = batch, cfg.num_kv_heads, cfg.head_dim, cfg.jnp_dtype
  return constrain_cache(tuple((jnp.zeros((N, K, Hd, slots), dt), jnp.zeros((N, K, slots, Hd), dt))
                               for _ in range(cfg.num_layers)), mesh)


def logits(w: InferenceWeights, h: jax.Array) -> jax.Array:
  """Final hidden states [..., D] -> float32 logits [..., V] (as `Decoder.logits`)."""
  return panel_dot(h, w.head, w.cfg.vocab_size).astype(jnp.float32)


def forward(w: InferenceWeights, tokens: jax.Array, positions: jax.Array,
            kv_mask: jax.Array, cache: Cache, cache_index: jax.Array | int
            ) -> tuple[jax.Array, Cache]:
  """Runs T new tokens per row, writing their keys/values at `cache_index`.

  Args:
    tokens, positions: [N, T].
    kv_mask: [N, S] bool, which cache slots hold real tokens.
    cache: per-layer k [N, K, Hd, S], v [N, K, S, Hd].
    cache_index: slot of tokens[:, 0]. The int 0 (static) marks a prefill into an
      empty cache: attention then reads only the T fresh keys, not all S slots.
  Returns:
    final-normed hidden states [N, T, D] and the updated cache.
  """
  cfg = w.cfg
  T, S = tokens.shape[1], kv_mask.shape[1]
  fresh = isinstance(cache_index, int) and cache_index == 0
  x = w.embed[tokens].astype(cfg.jnp_dtype)
  cos, sin = dec.rope_tables(positions, cfg)
  q_slots = cache_index + jnp.arange(T)
  k_slots = jnp.arange(T if fresh else S)
  mask = (k_slots[None, :] <= q_slots[:, None])[None] & kv_mask[:, None, :len(k_slots)]
  new_cache = []
  for p, (ck, cv) in zip(w.layers, cache):
    x, ck, cv = _layer(cfg, p, x, cos, sin, mask, ck, cv, cache_index, fresh)
    new_cache.append((ck, cv))
  return dec.rms_norm(x, w.final_norm, cfg.rms_norm_eps), tuple(new_cache)


def _layer(cfg: ModelConfig, p: dict[str, jax.Array], x, cos, sin, mask, ck, cv,
           cache_index, fresh: bool):
  N, T, _ = x.shape
  H, K, Hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  G = H // K
  eps = cfg.rms_norm_eps
  h = dec.rms_norm(x, p["attn_norm"], eps)
  qkv = panel_dot(h, p["wqkv"], (G + 2) * Hd).reshape(N, T, K, G + 2, Hd)
  if cfg.qkv_bias:
    qkv = qkv + p["bqkv"]
  q, k, v = qkv[:, :, :, :G], qkv[:, :, :, G], qkv[:, :, :, G + 1]
  if cfg.qk_norm:
    q = dec.rms_norm(q, p["q_norm"], eps)
    k = dec.rms_norm(k, p["k_norm"], eps)
  q = dec.apply_rope(q.reshape(N, T, H, Hd), cos, sin).reshape(N, T, K, G, Hd)
  k = dec.apply_rope(k, cos, sin)
  k, v = k.transpose(0, 2, 3, 1).astype(ck.dtype), v.transpose(0, 2, 1, 3).astype(cv.dtype)
  ck = jax.lax.dynamic_update_slice_in_dim(ck, k, cache_index, axis=3)
  cv = jax.lax.dynamic_update_slice_in_dim(cv, v, cache_index, axis=2)
  keys, values = (k, v) if fresh else (ck, cv)
  # Batch (n, k) leading and outputs in dot_general's natural order, so XLA needs no
  # transposes (moving the size-1 T axis while decoding is free).
  q = q.transpose(0, 2, 3, 1, 4)  # [N, K, G, T, Hd]
  scores = jnp.einsum("nkgth,nkhs->nkgts", q, keys).astype(jnp.float32) / math.sqrt(Hd)
  scores = jnp.where(mask[:, None, None], scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
  attn = jnp.einsum("nkgts,nksh->nkgth", probs, values).transpose(0, 3, 1, 2, 4)
  x = x + panel_dot(attn.reshape(N, T, H * Hd), p["wo"], cfg.hidden_size)
  h = dec.rms_norm(x, p["mlp_norm"], eps)
  gu = panel_dot(h, p["w_gu"], cfg.intermediate_size)
  x = x + panel_dot(jax.nn.silu(gu[:, :, 0]) * gu[:, :, 1], p["w_down"], cfg.hidden_size)
  return x, ck, cv
