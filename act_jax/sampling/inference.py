"""The decoder's forward pass specialised for generation.

`models.Decoder` stays the reference (training, HF parity) and has no cache. A
decode loop over its stacked `[L, ...]` weights (and a stacked cache) is slow on
every backend that cannot fuse a slice into a matmul operand (XLA:CPU, and GPU
without dynamic-slice fusion): weights and cache are re-sliced, and the cache
re-stacked, at every step. Measured on the small benchmark shape that was
~140 ms/step against ~15 ms/step here.

So generation runs on `InferenceWeights`: the same parameters unstacked per layer
(one copy, made once per parameter version by `prepare`), with q/k/v and gate/up
fused into one matmul each. Two layouts: on CPU, where our kernel builds
(`cpu_matmul`, `use_kernel`), every matrix is stored as its 32-wide column panels;
everywhere else, and as the fallback, matrices stay plain [D_in, ..., N] for the
backend's own dot.

On a mesh the copy is laid out for generation, not training (`rules`): tensor
parallel over the fsdp and tensor axes together, rows over data, as Tunix reshards
its actor for rollouts. The training layout shards every matrix's input dimension
over fsdp, so each decode step would gather the weights; here a decode step only
all-reduces activations (benchmarks/README.md counts both on a v5e:2x2 compile).

The KV cache is a tuple of per-layer `(k, v)` arrays, keys `[N, K, Hd, S]` and values
`[N, K, S, Hd]`: head-major, and each laid out as the right-hand matrix of its
attention dot (q.k contracts Hd, p.v contracts S), so neither is transposed per
step. It is updated in place in the decode loop's carry. Numerics follow the decoder
op for op (tests compare logits and greedy tokens against it).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import Mesh, NamedSharding

from act_jax import sharding as shd
from act_jax.models import decoder as dec
from act_jax.models.config import ModelConfig
from act_jax.sampling import cpu_matmul

Cache = tuple[tuple[jax.Array, jax.Array], ...]  # per layer k [N, K, Hd, S], v [N, K, S, Hd]
Rules = tuple[tuple[str, Any], ...]

K_AXES, V_AXES = ("batch", "kv_heads", "head_dim", None), ("batch", "kv_heads", None, "head_dim")
_NEG_INF = -1e30  # as the decoder's attention mask
# Matrices [D_in, ..., N], as the training parameters; the panels have no mesh.
_AXES = {"attn_norm": ("norm",), "mlp_norm": ("norm",), "q_norm": ("norm",),
         "k_norm": ("norm",), "bqkv": ("kv_heads", None, "head_dim"),
         "wqkv": ("embed", "kv_heads", None),  # per kv head: q group, k, v (G+2)*Hd wide
         "wo": ("heads", "embed"), "w_gu": ("embed", None, "mlp"), "w_down": ("mlp", "embed")}
MATRICES = frozenset({"wqkv", "wo", "w_gu", "w_down"})


@struct.dataclass
class InferenceWeights:
  """Per-layer, fused weights; `cfg` rides along as static pytree metadata."""
  cfg: ModelConfig = struct.field(pytree_node=False)
  kernel: bool = struct.field(pytree_node=False)  # 32-wide panels that `cpu_matmul` runs
  embed: jax.Array  # [V, D]
  final_norm: jax.Array  # [D]
  head: jax.Array  # lm_head [D, V] (embed.T when tied), compute dtype
  layers: tuple[dict[str, jax.Array], ...]


def rules(cfg: ModelConfig, mesh: Mesh) -> Rules:
  """Logical axes -> mesh axes for generation: tensor parallel, no input dim sharded.

  Heads, kv heads, MLP columns and the vocabulary split over fsdp x tensor, rows over
  data, when the kv heads divide by fsdp x tensor: a layer then all-reduces its two
  [N, T, D] outputs and never gathers a weight. Otherwise (say 8 kv heads on 32
  chips) over tensor alone with rows over data x fsdp, so the KV cache stays split;
  the weights are then whole on each fsdp shard.
  """
  model = ("fsdp", "tensor")
  if cfg.num_kv_heads % (mesh.shape["fsdp"] * mesh.shape["tensor"]):
    model = ("tensor",)
  batch = tuple(a for a in shd.BATCH if a not in model)
  return (("batch", batch), ("heads", model), ("kv_heads", model), ("mlp", model),
          ("vocab", model), ("embed", None), ("head_dim", None), ("norm", None))


def constrain(x: jax.Array, logical: tuple[str | None, ...], cfg: ModelConfig,
              mesh: Mesh | None) -> jax.Array:
  """`with_sharding_constraint` by logical names under `rules`; a no-op without a mesh."""
  if mesh is None:
    return x
  spec = shd.spec_for(logical, x.shape, mesh, rules(cfg, mesh))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def panels(w: jax.Array) -> jax.Array:
  """[D_in, ..., N] -> [..., ceil(N / WIDTH), D_in, WIDTH], zero-padded: `cpu_matmul`'s
  layout, each panel contiguous so the kernel reads the weights in order."""
  d_in, *lead, n = w.shape
  width = cpu_matmul.WIDTH
  w = jnp.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, -n % width)])
  return jnp.moveaxis(w.reshape(d_in, *lead, -1, width), 0, -2)


def platform(mesh: Mesh | None) -> str:
  """The platform a program runs on: the mesh's devices' (an ahead-of-time compile for
  a TPU topology runs on a CPU host), else the default backend's."""
  return mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()


def use_kernel(cfg: ModelConfig, mesh: Mesh | None) -> bool:
  """Whether `prepare` lays the matrices out for `cpu_matmul` (and decoding runs it).

  On XLA:CPU, for float32 models, unless the mesh splits the weights or rows over
  several devices: a custom call has no sharding rule, so XLA would gather them.
  Call it once outside `jax.jit` (`Sampler` does): the first call builds the kernel.
  """
  return (platform(mesh) == "cpu" and cfg.jnp_dtype == jnp.float32
          and (mesh is None or mesh.size == 1) and cpu_matmul.available())


def matmul(x: jax.Array, w: jax.Array, n: int, kernel: bool) -> jax.Array:
  """x [..., D_in] @ a matrix stored plain [D_in, ..., n] or as `panels` -> [..., ..., n]."""
  if not kernel:
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))
  *rows, d_in = x.shape
  x2 = x.reshape(-1, d_in).astype(jnp.float32)
  out = cpu_matmul.matmul(x2, w.reshape(-1, d_in, w.shape[-1]))
  out = out.reshape(x2.shape[0], *w.shape[:-3], -1)[..., :n]
  return out.reshape(*rows, *w.shape[:-3], n)


def prepare(cfg: ModelConfig, params: Any, mesh: Mesh | None = None,
            kernel: bool | None = None) -> InferenceWeights:
  """Training parameters -> `InferenceWeights` (a copy of the layer weights).

  `kernel`: lay every matrix out as `panels` for `cpu_matmul` (default `use_kernel`),
  else plain. Call it under `jax.jit`, once per parameter version: on a mesh the copy
  is resharded from the training layout to generation's (`rules`).
  """
  D, H, K, Hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  G, dt = H // K, cfg.jnp_dtype
  kernel = use_kernel(cfg, mesh) if kernel is None else kernel
  if kernel and (cfg.jnp_dtype != jnp.float32 or not cpu_matmul.available()):
    raise ValueError(f"prepare(kernel=True) needs float32 (dtype is {cfg.dtype!r}) and "
                     "cpu_matmul.available()")
  put = lambda name, w: (panels(w) if kernel and name in MATRICES
                         else constrain(w, _AXES[name], cfg, mesh))
  stacked = params["layers"]
  layers = []
  for i in range(cfg.num_layers):
    p = {name: a[i] for name, a in stacked.items()}
    wqkv = jnp.concatenate([p["wq"].reshape(D, K, G, Hd), p["wk"][:, :, None],
                            p["wv"][:, :, None]], axis=2)
    w = {"attn_norm": p["attn_norm"], "mlp_norm": p["mlp_norm"],
         "wqkv": wqkv.reshape(D, K, (G + 2) * Hd).astype(dt),
         "wo": p["wo"].reshape(H * Hd, D).astype(dt),
         "w_gu": jnp.stack([p["w_gate"], p["w_up"]], axis=1).astype(dt),
         "w_down": p["w_down"].astype(dt)}
    if cfg.qkv_bias:
      w["bqkv"] = jnp.concatenate([p["bq"].reshape(K, G, Hd), p["bk"][:, None],
                                   p["bv"][:, None]], axis=1).astype(dt)
    if cfg.qk_norm:
      w["q_norm"], w["k_norm"] = p["q_norm"], p["k_norm"]
    layers.append({k: put(k, v) for k, v in w.items()})
  head = (params["embed"].T if cfg.tie_embeddings else params["lm_head"]).astype(dt)
  head = panels(head) if kernel else constrain(head, ("embed", "vocab"), cfg, mesh)
  return InferenceWeights(cfg=cfg, kernel=kernel, embed=params["embed"],
                          final_norm=params["final_norm"], head=head, layers=tuple(layers))


def constrain_cache(cache: Cache, cfg: ModelConfig, mesh: Mesh | None) -> Cache:
  return tuple((constrain(k, K_AXES, cfg, mesh), constrain(v, V_AXES, cfg, mesh))
               for k, v in cache)


def init_cache(cfg: ModelConfig, batch: int, slots: int, mesh: Mesh | None = None) -> Cache:
  N, K, Hd, dt = batch, cfg.num_kv_heads, cfg.head_dim, cfg.jnp_dtype
  return constrain_cache(tuple((jnp.zeros((N, K, Hd, slots), dt), jnp.zeros((N, K, slots, Hd), dt))
                               for _ in range(cfg.num_layers)), cfg, mesh)


def logits(w: InferenceWeights, h: jax.Array) -> jax.Array:
  """Final hidden states [..., D] -> float32 logits [..., V] (as `Decoder.logits`)."""
  return matmul(h, w.head, w.cfg.vocab_size, w.kernel).astype(jnp.float32)


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
    x, ck, cv = _layer(w, p, x, cos, sin, mask, ck, cv, cache_index, fresh)
    new_cache.append((ck, cv))
  return dec.rms_norm(x, w.final_norm, cfg.rms_norm_eps), tuple(new_cache)


def _layer(w: InferenceWeights, p: dict[str, jax.Array], x, cos, sin, mask, ck, cv,
           cache_index, fresh: bool):
  cfg = w.cfg
  N, T, _ = x.shape
  H, K, Hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  G = H // K
  eps = cfg.rms_norm_eps
  h = dec.rms_norm(x, p["attn_norm"], eps)
  mm = lambda x, name, n: matmul(x, p[name], n, w.kernel)
  qkv = mm(h, "wqkv", (G + 2) * Hd).reshape(N, T, K, G + 2, Hd)
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
  x = x + mm(attn.reshape(N, T, H * Hd), "wo", cfg.hidden_size)
  h = dec.rms_norm(x, p["mlp_norm"], eps)
  gu = mm(h, "w_gu", cfg.intermediate_size)
  x = x + mm(jax.nn.silu(gu[:, :, 0]) * gu[:, :, 1], "w_down", cfg.hidden_size)
  return x, ck, cv
