"""`Sampler`: token-id prompts in, completions with log-probs out, on any mesh.

The host side of `core`: it pads prompts into length and batch buckets, places
them on the mesh, runs one compiled generate program per bucket and brings the
results back trimmed. Parameters are taken as they are (the training pytree on
its training shardings), and each call copies them into the decode layout inside
its program; `prepare` makes that copy once per parameter version instead, for the
callers that generate many batches from one version (evaluation, rollouts).
"""
from __future__ import annotations

import dataclasses
import itertools
import weakref
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from act_jax import models
from act_jax import sharding as shd
from act_jax.models.config import ModelConfig
from act_jax.sampling import core, inference
from act_jax.sampling.config import FINISH_REASONS, Buckets, SamplingConfig
from act_jax.sampling.inference import InferenceWeights

Params = Any


@dataclasses.dataclass
class Result:
  """Completions as host arrays, prompt-major: prompt i's samples are rows i*n .. i*n+n-1.

  `tokens` include the EOS / stop tokens that ended a row (so a policy loss
  learns to stop); everything after `lengths` is pad / 0.
  """
  tokens: np.ndarray  # [N, C] int32
  logprobs: np.ndarray  # [N, C] float32 under the sampling distribution
  model_logprobs: np.ndarray  # [N, C] float32 under the model (T=1, no top-k/p)
  lengths: np.ndarray  # [N] int32
  finish_reasons: list[str]  # [N] "eos" | "stop" | "length"
  n: int
  pad_id: int = 0
  decode_steps: int = 0  # while_loop iterations the program ran

  @property
  def prompt_index(self) -> np.ndarray:
    return np.arange(len(self.lengths)) // self.n

  @property
  def mask(self) -> np.ndarray:
    return np.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]

  def sequences(self) -> list[list[int]]:
    return [row[:k].tolist() for row, k in zip(self.tokens, self.lengths)]

  def truncate(self, row: int, length: int, reason: str) -> None:
    """Cuts a row to `length` tokens (host-side stop strings), padding the rest."""
    self.tokens[row, length:] = self.pad_id
    self.logprobs[row, length:] = 0.0
    self.model_logprobs[row, length:] = 0.0
    self.lengths[row] = length
    self.finish_reasons[row] = reason


class CompileCounter:
  """Counts XLA backend compiles (jax.monitoring), as the Tunix baseline does."""
  EVENT = "/jax/core/compile/backend_compile_duration"
  _registered = False
  _events: list[tuple[float, str]] = []

  def __init__(self):
    if not CompileCounter._registered:
      jax.monitoring.register_event_duration_secs_listener(CompileCounter._listen)
      CompileCounter._registered = True
    self.start = len(CompileCounter._events)

  @staticmethod
  def _listen(event: str, duration: float, **kwargs) -> None:
    if event == CompileCounter.EVENT:
      CompileCounter._events.append((float(duration), kwargs.get("fun_name", "")))

  @property
  def count(self) -> int:
    return len(CompileCounter._events) - self.start

  @property
  def seconds(self) -> float:
    return sum(d for d, _ in CompileCounter._events[self.start:])

  def names(self) -> list[str]:
    return [name for _, name in CompileCounter._events[self.start:]]


# Module-level, so every Sampler shares one compilation cache.
_generate = jax.jit(core.generate, static_argnums=(0,),
                    static_argnames=("cfg", "n", "slots", "pad_id", "mesh"))
_prepare = jax.jit(inference.prepare, static_argnums=(0,), static_argnames=("mesh", "kernel"))
_score = jax.jit(core.score, static_argnums=(0,), static_argnames=("num_targets",))


def left_pad(rows: Sequence[Sequence[int]], length: int, batch: int, pad_id: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """[batch, length] tokens and mask, rows right-aligned; filler rows hold one pad."""
  tokens = np.full((batch, length), pad_id, np.int32)
  mask = np.zeros((batch, length), bool)
  for i, row in enumerate(rows):
    if len(row):
      tokens[i, length - len(row):] = row
      mask[i, length - len(row):] = True
  mask[len(rows):, -1] = True  # filler rows: one "token", so no row is fully masked
  return tokens, mask


def to_host(x: jax.Array) -> np.ndarray:
  """Global array -> a writable numpy copy on every process."""
  if x.is_fully_addressable:
    return np.array(jax.device_get(x))
  return np.array(multihost_utils.process_allgather(x, tiled=True))


class Sampler:
  """Batched KV-cache generation and scoring for one model config and mesh.

  Holds the graphdef, the jitted programs (compiled once per bucket and sampling
  config, reused across calls) and the mesh; parameters are passed per call.

  Example:
    sampler = Sampler(model_cfg, mesh)
    out = sampler.generate(params, [[1, 5, 9], [1, 7]], n=4,
                           sampling=SamplingConfig(temperature=1.0), max_new_tokens=128)
    out.tokens, out.model_logprobs, out.lengths, out.finish_reasons
  """

  def __init__(self, model_cfg: ModelConfig, mesh: Mesh | None = None, *,
               pad_id: int | None = None, buckets: Buckets = Buckets()):
    self.cfg = model_cfg
    self.mesh = mesh
    self.pad_id = int(model_cfg.pad_token_id or 0) if pad_id is None else int(pad_id)
    self.buckets = buckets
    if mesh is not None:
      shd.check_model_fits(model_cfg, mesh)
    # Scoring runs the training graph (scan or not, as configured): same numerics as the loss.
    self.gdef = models.graphdef(model_cfg)
    # Decided here, outside any jit trace: the first call builds the CPU kernel.
    self.kernel = inference.use_kernel(model_cfg, mesh)
    self._prepared: tuple[int, list[weakref.ref], InferenceWeights] | None = None
    self._versions = itertools.count()

  # -- helpers --
  @property
  def batch_shards(self) -> int:
    if self.mesh is None:
      return 1
    return int(np.prod([self.mesh.shape[a] for a in shd.BATCH]))

  def _put(self, x: np.ndarray) -> jax.Array:
    """A host array (identical on every process) -> a global batch-sharded array."""
    if self.mesh is None:
      return jax.device_put(x)
    sharding = NamedSharding(self.mesh, shd.spec_for(("batch",) + (None,) * (x.ndim - 1),
                                                      x.shape, self.mesh))
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  def default_sampling(self, sampling: SamplingConfig | None) -> SamplingConfig:
    """Fills eos_ids=None with the model's EOS ids."""
    sampling = sampling or SamplingConfig()
    if sampling.eos_ids is None:
      sampling = dataclasses.replace(sampling, eos_ids=self.cfg.eos_ids)
    return sampling

  # -- API --
  def prepare(self, params: Params) -> InferenceWeights:
    """The decode-friendly copy of `params`, made once per parameter version.

    A version is the parameter arrays themselves: while they live, later calls return
    the same copy, so a loop of `generate(sampler.prepare(params), ...)` copies the
    weights once, not per batch. One version is kept; it is dropped as soon as any of
    its arrays is garbage collected (the sampler holds them only weakly), so no stale
    copy outlives a training step's parameters.
    """
    leaves = jax.tree.leaves(params)
    if self._prepared is not None:
      _, refs, w = self._prepared
      if len(refs) == len(leaves) and all(r() is x for r, x in zip(refs, leaves)):
        return w
    self._prepared = None  # free the old copy before making the new one
    w = _prepare(self.cfg, params, mesh=self.mesh, kernel=self.kernel)
    version = next(self._versions)
    self._prepared = (version, [weakref.ref(x) for x in leaves], w)
    for x in leaves:
      weakref.finalize(x, self._forget, version)
    return w

  def _forget(self, version: int) -> None:
    if self._prepared is not None and self._prepared[0] == version:
      self._prepared = None

  def generate(self, params: Params | InferenceWeights, prompts: Sequence[Sequence[int]], *,
               sampling: SamplingConfig | None = None, max_new_tokens: int = 256,
               n: int = 1, seed: int | jax.Array = 0) -> Result:
    """Samples n completions for each prompt (token ids, no padding).

    Args:
      params: the training parameter pytree, or `prepare(params)`.
      prompts: B non-empty token-id lists.
      sampling: static token-choice settings; eos_ids=None uses the model's.
      max_new_tokens: per-row budget, EOS / stop tokens included.
      n: samples per prompt (a GRPO group); the prompt is prefilled once.
      seed: an int or a PRNG key.
    """
    if not prompts:
      raise ValueError("generate: no prompts")
    if any(len(p) == 0 for p in prompts):
      raise ValueError("generate: every prompt needs at least one token (e.g. BOS)")
    if max_new_tokens < 1 or n < 1:
      raise ValueError(f"generate: max_new_tokens={max_new_tokens} and n={n} must be >= 1")
    sampling = self.default_sampling(sampling)
    B = len(prompts)
    P = self.buckets.length(max(len(p) for p in prompts))
    slots = self.buckets.slots(P, max_new_tokens)
    tokens, mask = left_pad(prompts, P, self.buckets.batch(B, self.batch_shards), self.pad_id)
    rng = jax.random.key(seed) if isinstance(seed, int) else seed
    out = _generate(self.cfg, params, self._put(tokens), self._put(mask), rng,
                    cfg=sampling, max_new_tokens=max_new_tokens, n=n, slots=slots,
                    pad_id=self.pad_id, mesh=self.mesh)
    rows, cols = B * n, max_new_tokens
    host = lambda x: to_host(x)[:rows, :cols] if x.ndim == 2 else to_host(x)[:rows]
    steps = np.asarray(out.decode_steps.addressable_data(0))  # replicated scalar
    return Result(tokens=host(out.tokens), logprobs=host(out.logprobs),
                  model_logprobs=host(out.model_logprobs), lengths=host(out.lengths),
                  finish_reasons=[FINISH_REASONS[f] for f in host(out.finish)], n=n,
                  pad_id=self.pad_id, decode_steps=int(steps))

  def score(self, params: Params, prompts: Sequence[Sequence[int]],
            continuations: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """log p(continuation_i | prompt_i) per token, for ranking candidate actions.

    Pairs are batched into one forward pass per bucket; repeat a prompt to score
    several candidates for it. Returns one float32 array per pair (sum it for the
    sequence log-likelihood; see `score_sums`).
    """
    if len(prompts) != len(continuations):
      raise ValueError(f"score: {len(prompts)} prompts but {len(continuations)} continuations")
    if not prompts:
      return []
    if any(len(p) == 0 for p in prompts):
      raise ValueError("score: every prompt needs at least one token (e.g. BOS)")
    rows = [list(p) + list(c) for p, c in zip(prompts, continuations)]
    T = self.buckets.length(max(len(r) for r in rows))
    C = min(self.buckets.length(max(max(len(c) for c in continuations), 1)), T - 1)
    tokens, mask = left_pad(rows, T, self.buckets.batch(len(rows), self.batch_shards),
                            self.pad_id)
    with shd.under_mesh(self.mesh):
      logp = to_host(_score(self.gdef, params, self._put(tokens), self._put(mask),
                            num_targets=C))
    return [logp[i, C - len(c):] if len(c) else logp[i, :0]
            for i, c in enumerate(continuations)]

  def score_sums(self, params: Params, prompts: Sequence[Sequence[int]],
                 continuations: Sequence[Sequence[int]]) -> np.ndarray:
    """[N] summed log-likelihoods of each continuation given its prompt."""
    return np.array([x.sum() for x in self.score(params, prompts, continuations)],
                    np.float32)

