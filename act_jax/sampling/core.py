"""The pure functional sampler: prefill, a `while_loop` decode, and scoring.

Everything here is a function of arrays plus static arguments (the model, a
`SamplingConfig`, shapes, the mesh), so callers jit it once per bucketed shape.

Layout: prompts are left-padded to P, so every row's last prompt token sits in
slot P-1 and all rows write new tokens to the same cache slot each step; RoPE
positions come from the mask, so padding changes no real token's numerics. The
KV cache has S >= P + max_new_tokens - 1 slots and `kv_mask` (prompt mask, then
all ones) is fixed for the whole loop: causality by slot index hides the future.

`model` arguments accept the decoder's graphdef (as `models.graphdef` builds it)
or its `ModelConfig`; `params` the training pytree or `InferenceWeights` from
`inference.prepare` (then the per-call weight copy is skipped).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from act_jax.models import decoder as dec
from act_jax.models.config import ModelConfig
from act_jax.sampling import inference
from act_jax.sampling.config import EOS, LENGTH, STOP, SamplingConfig
from act_jax.sampling.inference import InferenceWeights

Params = Any
Model = nnx.GraphDef | ModelConfig


class DecodeState(NamedTuple):
  """The loop carry. N = prompts x samples; G = output buffer length."""
  cache: inference.Cache  # per layer k [N, K, Hd, S], v [N, K, S, Hd]
  kv_mask: jax.Array  # [N, S] bool
  rng: jax.Array  # key; step s draws its noise from (rng, s)
  noise: jax.Array  # [N, candidates] Gumbel noise of the coming step ([N, 0] greedy)
  step: jax.Array  # int32 scalar: tokens generated so far (same for every row)
  last: jax.Array  # [N] token to feed next
  position: jax.Array  # [N] its RoPE position
  tokens: jax.Array  # [N, G] generated ids, pad after each row's end
  logprobs: jax.Array  # [N, G] log-prob under the sampling distribution
  model_logprobs: jax.Array  # [N, G] log-prob under the unmodified model (T=1)
  done: jax.Array  # [N] bool
  finish: jax.Array  # [N] int32: LENGTH / EOS / STOP
  lengths: jax.Array  # [N] int32 tokens kept (eos / stop tokens included)


class Generation(NamedTuple):
  """What `generate` returns (device arrays); rows grouped prompt-major."""
  tokens: jax.Array  # [N, G] int32, pad_id after `lengths`
  logprobs: jax.Array  # [N, G] float32, 0 after `lengths`
  model_logprobs: jax.Array  # [N, G] float32, 0 after `lengths`
  lengths: jax.Array  # [N] int32
  finish: jax.Array  # [N] int32 index into FINISH_REASONS
  decode_steps: jax.Array  # int32 scalar: while_loop iterations run


def model_config(model: Model, params: Params) -> ModelConfig:
  if isinstance(model, ModelConfig):
    return model
  if isinstance(params, InferenceWeights):
    return params.cfg
  return nnx.merge(model, params).cfg


def inference_weights(model: Model, params: Params, mesh: Mesh | None = None
                      ) -> InferenceWeights:
  """`params` as `InferenceWeights`, preparing them (a copy) when needed."""
  if isinstance(params, InferenceWeights):
    return params
  return inference.prepare(model_config(model, params), params, mesh)


# ----------------------------------------------------------------------------
# Token choice
# ----------------------------------------------------------------------------
def argmax(x: jax.Array) -> jax.Array:
  """First index of the max along the last axis.

  Two plain reductions instead of `jnp.argmax`'s variadic (value, index) reduce,
  which XLA:CPU runs about 7x slower over a vocabulary-sized row.
  """
  top = jnp.max(x, axis=-1, keepdims=True)
  iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  return jnp.min(jnp.where(x == top, iota, x.shape[-1]), axis=-1)


def candidates(cfg: SamplingConfig, vocab: int) -> int:
  """Tokens a sampling step chooses among: the top-k, else the vocabulary (0 greedy)."""
  if cfg.greedy:
    return 0
  return min(cfg.top_k, vocab) if cfg.top_k else vocab


def sampling_logits(logits: jax.Array, cfg: SamplingConfig
                    ) -> tuple[jax.Array, jax.Array | None]:
  """Tempered logits restricted by top-k / top-p, as (values, vocab ids).

  ids=None when nothing is restricted (values cover the vocabulary); otherwise
  values [..., k] are sorted descending with excluded ones at -inf, so sampling
  is a categorical over k candidates rather than a full-vocabulary sort.
  """
  x = logits / cfg.temperature
  V = x.shape[-1]
  k = candidates(cfg, V)
  if k == V and cfg.top_p >= 1.0:
    return x, None
  values, ids = jax.lax.top_k(x, k)
  if cfg.top_p < 1.0:
    probs = jax.nn.softmax(values, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    values = jnp.where(mass_before < cfg.top_p, values, -jnp.inf)
  return values, ids


def _threefry2x32(k1, k2, x1, x2):
  """Threefry-2x32 (20 rounds), the PRF behind `jax.random`, written out unrolled.

  JAX lowers its threefry on CPU as a rolled 5-trip while loop; inside the decode
  loop that nested loop cost more than the rest of a tiny model's step. Unrolled,
  XLA fuses it into the elementwise pass over the logits.
  """
  rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
  ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
  x1, x2 = x1 + ks[0], x2 + ks[1]
  for i in range(5):
    for r in rotations[i % 2]:
      x1 = x1 + x2
      x2 = x1 ^ ((x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r)))
    x1, x2 = x1 + ks[(i + 1) % 3], x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x1, x2


def gumbel_noise(rng: jax.Array, step: jax.Array | int, shape: tuple[int, int]) -> jax.Array:
  """Gumbel(0, 1) noise for one decode step, a pure function of (key, step).

  The bits are `jax.random.bits(key, shape)`'s (threefry-2x32 over an element
  counter, partitionable, so sharding does not change them) with the step as the
  counter's high word, so no key is split per step.
  """
  data = jax.random.key_data(rng)
  if data.shape != (2,):  # another PRNG implementation: the library path
    return jax.random.gumbel(jax.random.fold_in(rng, step), shape, jnp.float32)
  N, V = shape
  hi = jnp.full(shape, step, jnp.uint32)
  lo = (jax.lax.broadcasted_iota(jnp.uint32, shape, 0) * np.uint32(V)
        + jax.lax.broadcasted_iota(jnp.uint32, shape, 1))
  b1, b2 = _threefry2x32(data[0], data[1], hi, lo)
  mantissa = ((b1 ^ b2) >> np.uint32(9)) | np.uint32(0x3F800000)  # 1.f in [1, 2)
  u = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - 1.0
  return -jnp.log(-jnp.log(jnp.maximum(u, jnp.finfo(jnp.float32).tiny)))


def log_prob(logits: jax.Array, idx: jax.Array) -> jax.Array:
  """log_softmax(logits)[i, idx[i]] without materialising the [N, V] log-softmax."""
  picked = jnp.take_along_axis(logits, idx[:, None], axis=-1)[:, 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def choose_tokens(logits: jax.Array, rng: jax.Array, cfg: SamplingConfig,
                  step: jax.Array | int = 0, noise: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """logits [N, V] -> (token, log-prob under the sampling dist, under the model).

  Sampling is Gumbel-max with noise from (rng, step), or `noise` when the caller
  drew it already. Greedy's sampling log-prob is 0 (the distribution is a point mass).
  """
  if cfg.greedy:
    tok = argmax(logits)
    return tok, jnp.zeros(tok.shape, jnp.float32), log_prob(logits, tok)
  values, ids = sampling_logits(logits, cfg)
  if noise is None:
    noise = gumbel_noise(rng, step, values.shape)
  j = argmax(values + noise)  # = categorical
  tok = j if ids is None else jnp.take_along_axis(ids, j[:, None], axis=-1)[:, 0]
  model_logp = log_prob(logits, tok)
  if ids is None and cfg.temperature == 1.0:  # the model's own distribution
    return tok, model_logp, model_logp
  return tok, log_prob(values, j), model_logp


def _ends_with(tokens: jax.Array, length: jax.Array, seq: tuple[int, ...]) -> jax.Array:
  """[N] bool: tokens[:, :length] ends with `seq`."""
  m = len(seq)
  window = jax.lax.dynamic_slice_in_dim(tokens, jnp.maximum(length - m, 0), m, axis=1)
  return (length >= m) & jnp.all(window == jnp.asarray(seq, jnp.int32), axis=1)


def _append(state: DecodeState, logits: jax.Array, cfg: SamplingConfig,
            pad_id: int) -> DecodeState:
  """Samples one token per row from logits [N, V] and records it.

  The next step's noise is drawn here, a step ahead, into the loop carry. It
  depends on (rng, step) only, but drawn where it is used XLA fuses its threefry
  (~4 ms a step over 8 x 32k on XLA:CPU, one thread) into the pass over the
  logits, after the forward pass; as a carry it is a fusion of its own, which
  XLA:CPU's thunk executor runs beside the forward pass on a thread that pass
  leaves idle.
  """
  s = state.step
  tok, logp, model_logp = choose_tokens(logits, state.rng, cfg, s, state.noise)
  live = ~state.done
  tokens = state.tokens.at[:, s].set(jnp.where(live, tok, pad_id))
  logprobs = state.logprobs.at[:, s].set(jnp.where(live, logp, 0.0))
  model_logprobs = state.model_logprobs.at[:, s].set(jnp.where(live, model_logp, 0.0))
  is_eos = jnp.isin(tok, jnp.asarray(cfg.eos_ids, jnp.int32)) if cfg.eos_ids else False
  is_stop = False
  for seq in cfg.stop_token_ids:
    is_stop = is_stop | _ends_with(tokens, s + 1, seq)
  finish = jnp.where(live & is_eos, EOS, jnp.where(live & is_stop, STOP, state.finish))
  noise = state.noise if cfg.greedy else gumbel_noise(state.rng, s + 1, state.noise.shape)
  return state._replace(
      step=s + 1, noise=noise, last=tok, position=state.position + 1, tokens=tokens,
      logprobs=logprobs, model_logprobs=model_logprobs,
      lengths=jnp.where(live, s + 1, state.lengths),
      done=state.done | is_eos | is_stop, finish=finish.astype(jnp.int32))


def _rows(x: jax.Array, cfg: ModelConfig, mesh: Mesh | None) -> jax.Array:
  """Leading (batch) axis over generation's batch axes (`inference.rules`)."""
  return inference.constrain(x, ("batch",) + (None,) * (x.ndim - 1), cfg, mesh)


# ----------------------------------------------------------------------------
# Prefill / decode / generate
# ----------------------------------------------------------------------------
def prefill(model: Model, params: Params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
            rng: jax.Array, cfg: SamplingConfig, *, n: int = 1, slots: int,
            pad_id: int = 0, mesh: Mesh | None = None) -> DecodeState:
  """Runs the B left-padded prompts once, then forks each into n rows.

  The cache, mask and last-token logits are repeated after the forward pass, so a
  GRPO group of n samples costs one prompt forward, not n. The first new token is
  sampled here, independently per row; only the last position is projected onto
  the vocabulary.
  """
  w = inference_weights(model, params, mesh)
  prompt_tokens, prompt_mask = _rows(prompt_tokens, w.cfg, mesh), _rows(prompt_mask, w.cfg, mesh)
  B, P = prompt_tokens.shape
  G = slots - P + 1
  mask = prompt_mask.astype(bool)
  kv_mask = jnp.concatenate([mask, jnp.ones((B, slots - P), bool)], axis=1)
  cache = inference.init_cache(w.cfg, B, slots, mesh)
  h, cache = inference.forward(w, prompt_tokens, dec.positions_from_mask(mask), kv_mask,
                               cache, 0)
  logits = inference.logits(w, h[:, -1])  # [B, V]
  prompt_lens = jnp.sum(mask, axis=1, dtype=jnp.int32)
  if n > 1:
    rep = lambda x: jnp.repeat(x, n, axis=0)
    cache = inference.constrain_cache(jax.tree.map(rep, cache), w.cfg, mesh)
    kv_mask, logits, prompt_lens = rep(kv_mask), rep(logits), rep(prompt_lens)
  N = B * n
  put = lambda x: _rows(x, w.cfg, mesh)
  rows = lambda shape, value, dtype: put(jnp.full(shape, value, dtype))
  noise_shape = (N, candidates(cfg, logits.shape[-1]))
  noise = jnp.zeros(noise_shape, jnp.float32) if cfg.greedy else gumbel_noise(rng, 0, noise_shape)
  state = DecodeState(
      cache=cache, kv_mask=put(kv_mask), rng=rng, noise=put(noise),
      step=jnp.zeros((), jnp.int32),
      last=rows((N,), 0, jnp.int32), position=put(prompt_lens - 1),
      tokens=rows((N, G), pad_id, jnp.int32), logprobs=rows((N, G), 0, jnp.float32),
      model_logprobs=rows((N, G), 0, jnp.float32), done=rows((N,), False, bool),
      finish=rows((N,), LENGTH, jnp.int32), lengths=rows((N,), 0, jnp.int32))
  return _append(state, logits, cfg, pad_id)


def decode(model: Model, params: Params, state: DecodeState, max_new_tokens: jax.Array | int,
           cfg: SamplingConfig, *, pad_id: int = 0, mesh: Mesh | None = None) -> DecodeState:
  """Feeds one token per row per step until all rows are done or max_new_tokens.

  One `lax.while_loop` whose carry holds the per-layer cache, updated in place;
  it exits as soon as every row has ended.
  """
  w = inference_weights(model, params, mesh)
  P = state.kv_mask.shape[1] - state.tokens.shape[1] + 1
  limit = jnp.minimum(jnp.asarray(max_new_tokens, jnp.int32), state.tokens.shape[1])

  def cond(st: DecodeState) -> jax.Array:
    return (st.step < limit) & ~jnp.all(st.done)

  def body(st: DecodeState) -> DecodeState:
    h, cache = inference.forward(w, st.last[:, None], st.position[:, None], st.kv_mask,
                                 st.cache, P + st.step - 1)
    return _append(st._replace(cache=cache), inference.logits(w, h[:, 0]), cfg, pad_id)

  return jax.lax.while_loop(cond, body, state)


def finalize(state: DecodeState) -> Generation:
  """The loop state -> results; rows still running finish as "length"."""
  return Generation(tokens=state.tokens, logprobs=state.logprobs,
                    model_logprobs=state.model_logprobs, lengths=state.lengths,
                    finish=state.finish, decode_steps=state.step - 1)


def generate(model: Model, params: Params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
             rng: jax.Array, cfg: SamplingConfig, *, max_new_tokens: jax.Array | int,
             n: int = 1, slots: int, pad_id: int = 0, mesh: Mesh | None = None
             ) -> Generation:
  """Prefill + decode in one program: [B, P] left-padded prompts -> B*n completions.

  Static: model, cfg, n, slots, pad_id, mesh. `slots` (the KV cache size) bounds the
  output at G = slots - P + 1 tokens; `max_new_tokens` (<= G) may be traced, so
  changing it within a bucket does not recompile.
  """
  w = inference_weights(model, params, mesh)
  state = prefill(model, w, prompt_tokens, prompt_mask, rng, cfg, n=n, slots=slots,
                  pad_id=pad_id, mesh=mesh)
  return finalize(decode(model, w, state, max_new_tokens, cfg, pad_id=pad_id, mesh=mesh))


# ----------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------
def score(gdef: nnx.GraphDef, params: Params, tokens: jax.Array, mask: jax.Array,
          num_targets: int) -> jax.Array:
  """Per-token log-likelihoods of the last `num_targets` positions of each row.

  tokens/mask [N, T] hold left-padded prompt+continuation, continuation last, so
  the targets are tokens[:, T-C:], predicted from positions [T-C-1, T-1). Runs the
  training decoder (same numerics as the loss) and projects only those C
  positions onto the vocabulary. Returns [N, C] float32; callers mask off rows'
  shorter continuations.
  """
  model = nnx.merge(gdef, params)
  T, C = tokens.shape[1], num_targets
  mask = mask.astype(bool)
  h = model.hidden(tokens, dec.positions_from_mask(mask), mask)
  logp = jax.nn.log_softmax(model.logits(h[:, T - C - 1:T - 1]), axis=-1)
  return jnp.take_along_axis(logp, tokens[:, T - C:, None], axis=-1)[..., 0]
