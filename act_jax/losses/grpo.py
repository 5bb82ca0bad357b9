"""GRPO: the clipped policy-gradient loss on sampled completions, and group advantages.

The loss batch holds G completions per prompt at fixed shapes: `tokens`/`mask`
[N, P+C] (left-padded prompt, then the completion right-padded to C),
`completion_mask` [N, C] (real completion tokens of the rows that count),
`old_logps` [N, C] (the sampler's log-probs: the behaviour policy), `advantages` [N]
and, only when beta > 0, `ref_logps` [N, C] from the frozen reference model.

Per token, with r = exp(logp - old_logp) and advantage A:
  pg = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))     (DAPO's asymmetric clip)
  kl = exp(ref - logp) - (ref - logp) - 1                     (k3, Schulman; or k1:
                                                               logp - ref, as Tunix's "kl")
  loss = aggregate(pg) + beta mean(kl)
the policy gradient aggregated over the tokens of the groups that count, the KL
averaged over every real completion token (filtered groups included: a separate term
with its own denominator), each as (sum, denominator) so the step's global division is
exact under gradient accumulation and sharding. The aggregations:
  token-mean                    sum of token losses / number of tokens (default, DAPO:
                                every token weighs the same, so long reasoning is not
                                down-weighted as in per-sequence means)
  sequence-mean-token-mean      mean over sequences of each sequence's token mean
                                (the original GRPO)
  sequence-mean-token-sum-norm  mean over sequences of token sums / norm_len (Dr. GRPO)
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from act_jax.losses import register, vocab
from act_jax.models import positions_from_mask
from act_jax.registry import Registry

AGGREGATIONS = ("token-mean", "sequence-mean-token-mean", "sequence-mean-token-sum-norm")
KL_ESTIMATORS = ("k3", "k1")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """Static settings of the loss (hashable: the step closes over them).

  temperature: the sampler's; log-probs are computed from logits / temperature so the
    ratio compares the same distribution the completions were drawn from.
  norm_len: divisor of sequence-mean-token-sum-norm; 0 = the completion length C.
  advantage: the advantage estimator's name. The sampled loss reads advantages from
    the batch (computed on the host); the exact `expected_reward` loss applies it: with
    "grpo" each prompt's term is divided by its reward's std, as GRPO's advantages are.
  entropy_coef: the `expected_reward` loss's bonus on its exact answer entropy (it has
    no samples for a KL estimate).
  """
  eps_low: float = 0.2
  eps_high: float = 0.28
  beta: float = 0.0
  kl_estimator: str = "k3"
  aggregation: str = "token-mean"
  temperature: float = 1.0
  norm_len: int = 0
  advantage: str = "grpo"
  entropy_coef: float = 0.0

  def __post_init__(self):
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"config.grpo.aggregation: {self.aggregation!r} is not one of "
                       f"{AGGREGATIONS}")
    if self.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(f"config.grpo.kl_estimator: {self.kl_estimator!r} is not one of "
                       f"{KL_ESTIMATORS}")
    if self.temperature <= 0:
      raise ValueError("config.grpo.temperature must be > 0 for training (greedy "
                       "completions have no behaviour log-probs)")


def completion_logprobs(model, tokens: jax.Array, mask: jax.Array, num_completion: int,
                        temperature: float = 1.0, with_entropy: bool = False,
                        prefix: jax.Array | None = None
                        ) -> tuple[jax.Array, jax.Array | None]:
  """Log-probs of the last `num_completion` tokens of each row, and their entropies.

  Only those C positions go through the vocabulary projection (the prompt's logits
  are never needed), as one 2-D [N*C, D] x [D, V] matmul (XLA:CPU runs the weight
  gradient of a 3-D one well below matmul speed). log p = logit[target] - log sum
  exp, and the entropy reuses the same exponentials, so no [N, C, V] log-softmax or
  second softmax is built. Entropy is a metric: no gradient flows through it. In
  chunks of positions when `model.cfg.logits_chunk` is set (`vocab.over_positions`).
  `prefix`: the frozen layers' output, for a model of the layers above them.
  """
  N, T = tokens.shape
  C = num_completion
  mask = mask.astype(bool)
  h = model.hidden(tokens, positions_from_mask(mask), mask, x=prefix)
  h = h[:, T - C - 1:T - 1]

  def logprob(logits, targets):
    if temperature != 1.0:
      logits = logits / temperature
    logp = token_logprob(logits, targets)
    if not with_entropy:
      return logp, None
    top = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.exp(logits - top)
    total = jnp.sum(e, axis=-1)
    return logp, jax.lax.stop_gradient(top[..., 0] + jnp.log(total)
                                       - jnp.sum(e * logits, axis=-1) / total)

  return vocab.over_positions(model, h, logprob, tokens[:, T - C:])


@jax.custom_vjp
def token_logprob(logits: jax.Array, target: jax.Array) -> jax.Array:
  """log softmax(logits)[target] over the last axis, exact to float32's relative
  precision also when the target's probability is within 1e-7 of 1, and so is its
  gradient.

  The usual l_t - (top + log sum exp(l - top)) rounds the sum 1 + eps to 1 once eps is
  below ~6e-8: a saturated token's log-prob becomes exactly 0 (its probability exactly
  1) and its gradient 1 - softmax_t rounds to 0 or to a ~1e-7 residual. A saturated
  critic's answer then has no missing mass to measure and a gradient that is rounding
  noise (`losses.expected`). Here log p = (l_t - l_top) - log1p(sum of the other
  tokens' exp(l - l_top)), and the backward pass writes 1 - softmax_top as that sum
  over (1 + that sum), never as a difference of near-equal numbers.
  """
  return _token_logprob_fwd(logits, target)[0]


def _token_logprob_fwd(logits, target):
  top_i = jnp.argmax(logits, axis=-1)[..., None]
  l_top = jnp.take_along_axis(logits, top_i, axis=-1)
  e = jnp.exp(logits - l_top)
  is_top = jnp.arange(logits.shape[-1]) == top_i
  rest = jnp.sum(jnp.where(is_top, 0.0, e), axis=-1)
  d = jnp.take_along_axis(logits, target[..., None], axis=-1) - l_top
  return d[..., 0] - jnp.log1p(rest), (e, is_top, rest, target)


def _token_logprob_bwd(res, ct):
  e, is_top, rest, target = res
  is_target = jnp.arange(e.shape[-1]) == target[..., None]
  softmax = jnp.where(is_top, 1.0, e) / (1.0 + rest)[..., None]
  # d log p_t / d l_j = [j = t] - softmax_j; at j = t = top that is rest / (1 + rest).
  grad = jnp.where(is_target & is_top, (rest / (1.0 + rest))[..., None],
                   is_target.astype(e.dtype) - softmax)
  return ct[..., None] * grad, None


token_logprob.defvjp(_token_logprob_fwd, _token_logprob_bwd)


def _masked_mean(x: jax.Array, w: jax.Array) -> jax.Array:
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


@register("grpo")
def grpo_loss(model, batch: dict[str, jax.Array], cfg: GRPOConfig | None = None):
  """The GRPO loss as (sum, denominator, metrics); see the module docstring."""
  cfg = cfg or GRPOConfig()
  C = batch["completion_mask"].shape[1]
  logp, entropy = completion_logprobs(model, batch["tokens"], batch["mask"], C,
                                      cfg.temperature, with_entropy=True,
                                      prefix=batch.get("prefix"))
  total, denom, metrics, extra = policy_objective(logp, batch, cfg)
  # Diagnostics cover every sampled token, filtered groups included.
  real = batch["mask"][:, -C:].astype(jnp.float32)
  metrics["entropy"] = _masked_mean(entropy, real)
  return total, denom, metrics, extra


def policy_objective(logp: jax.Array, batch: dict[str, jax.Array], cfg: GRPOConfig
                     ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array],
                                dict[str, tuple[jax.Array, jax.Array]]]:
  """The clipped surrogate on per-token log-probs [N, C]: (sum, denom, metrics, extra).

  `extra["kl"]` (beta > 0): beta x the KL summed over every real completion token, and
  their count: its own term (`step.make_terms_fn`), a token mean over the completions
  of filtered groups too, so the anchor holds exactly when the groups agree (a
  collapsing policy) instead of vanishing with their policy-gradient weight.
  """
  w = batch["completion_mask"].astype(jnp.float32)
  C = w.shape[1]
  real = batch["mask"][:, -C:].astype(jnp.float32)
  adv = batch["advantages"][:, None].astype(jnp.float32)
  log_ratio = logp - batch["old_logps"]
  ratio = jnp.exp(log_ratio)
  pg1 = -adv * ratio
  pg2 = -adv * jnp.clip(ratio, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
  per_token = jnp.maximum(pg1, pg2)
  f32 = lambda x: x.astype(jnp.float32)
  metrics = {
      "pg_loss": _masked_mean(per_token, w),
      "clip_frac": _masked_mean(f32(pg2 > pg1), w),
      "clip_frac_low": _masked_mean(f32((ratio < 1.0 - cfg.eps_low) & (adv < 0)), w),
      "clip_frac_high": _masked_mean(f32((ratio > 1.0 + cfg.eps_high) & (adv > 0)), w),
      # Sampler vs trainer: zero up to numerics on the first of the mu updates.
      "logp_abs_diff": _masked_mean(jnp.abs(jax.lax.stop_gradient(log_ratio)), real),
      "n_loss_tokens": jnp.sum(w),
      "n_seqs": jnp.sum(jnp.sum(w, axis=1) > 0).astype(jnp.float32),
  }
  extra = {}
  if cfg.beta > 0:
    kl = kl_penalty(logp, batch["ref_logps"], cfg.kl_estimator)
    extra["kl"] = (cfg.beta * jnp.sum(kl * real), jnp.sum(real))
    metrics["kl"] = _masked_mean(jax.lax.stop_gradient(kl), real)
  total, denom = aggregate(per_token, w, cfg)
  return total, denom, metrics, extra


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str = "k3") -> jax.Array:
  """Per-token KL(pi || ref) estimate on samples from pi: k3 >= 0 (low variance) or k1."""
  d = ref_logp - logp
  if estimator == "k3":
    return jnp.exp(d) - d - 1.0
  return -d


def aggregate(per_token: jax.Array, w: jax.Array, cfg: GRPOConfig
              ) -> tuple[jax.Array, jax.Array]:
  """(sum, denominator) of the configured aggregation; see the module docstring."""
  if cfg.aggregation == "token-mean":
    return jnp.sum(per_token * w), jnp.sum(w)
  n = jnp.sum(w, axis=1)
  seq_sum = jnp.sum(per_token * w, axis=1)
  if cfg.aggregation == "sequence-mean-token-mean":
    seq = seq_sum / jnp.maximum(n, 1.0)
  else:
    seq = seq_sum / float(cfg.norm_len or w.shape[1])
  return jnp.sum(seq), jnp.sum(n > 0).astype(jnp.float32)


# --- Advantage estimators (host side, on a [prompts, G] reward table) --------------

AdvantageFn = Callable[[np.ndarray], np.ndarray]
ADVANTAGES: Registry[AdvantageFn] = Registry("estimator", "config.grpo.advantage")
register_advantage, get_advantage = ADVANTAGES.register, ADVANTAGES.get


@register_advantage("grpo")
def group_normalized(rewards: np.ndarray, eps: float = 1e-6) -> np.ndarray:
  """(r - group mean) / (group std + eps), std over the group (ddof 0)."""
  r = np.asarray(rewards, np.float64)
  out = (r - r.mean(axis=1, keepdims=True)) / (r.std(axis=1, keepdims=True) + eps)
  return out.astype(np.float32)


@register_advantage("dr_grpo")
def group_centered(rewards: np.ndarray) -> np.ndarray:
  """r - group mean: Dr. GRPO drops the std division (it up-weights near-solved groups)."""
  r = np.asarray(rewards, np.float64)
  return (r - r.mean(axis=1, keepdims=True)).astype(np.float32)


def zero_variance_groups(rewards: np.ndarray, tol: float = 1e-6) -> np.ndarray:
  """[prompts] bool: every completion of the group earned the same reward."""
  r = np.asarray(rewards)
  return (r.max(axis=1) - r.min(axis=1)) <= tol
