"""The exact expected reward of a policy whose paid completions can be enumerated.

A critic that answers without reasoning has a small set S of well-formed answers,
S = {"Answer: A" + EOS, "Answer: B" + EOS}: exactly the strings forced-choice
evaluation scores. A next-action policy in an environment that lists its admissible
actions has S = those actions' targets ("Action: ..." + EOS). Every other completion
earns r_m (malformed). For a prompt x

  E[r] = sum_{a in S} p(a|x) r(a) + (1 - sum_{a in S} p(a|x)) r_m
       = r_m + sum_{a in S} p(a|x) (r(a) - r_m),
  grad E[r] = sum_{a in S} p(a|x) (r(a) - r_m) grad log p(a|x).

That gradient is also the expectation over ALL completions y of the unclipped
on-policy policy gradient with any baseline b, E_y[(r(y) - b) grad log p(y|x)] (the
baseline term vanishes in expectation): the limit of group-centred GRPO
(`advantage = "dr_grpo"`) as G -> infinity. With `advantage = "grpo"` (the default)
each prompt's term is also divided by the std of its reward under p (no gradient
through it), the limit of GRPO's (r - mean) / std: for a binary reward a prompt's
gradient then shrinks like sqrt(p(1 - p)) instead of p(1 - p) as the policy grows
sure of it, so a confidently wrong answer (a letter preference) still gets a signal.
Either is computed with one forward pass per (prompt, answer) instead of G samples,
and without their variance; nothing is sampled, so the group size and the reasoning
budget (max_new_tokens) play no part. The loss per prompt is -w (E[r] - r_m), w = 1
or 1 / (std + 1e-3), whose gradient is -w grad E[r]; it is summed over prompts with the
number of prompts as denominator. With `entropy_coef` > 0 it also adds -coef H, the
exact entropy of the outcome distribution (each answer, and "malformed").

Float32: a saturated answer (p within ~1e-7 of 1) would make sum p round to 1 and
E[r^2] - E[r]^2 cancel to 0, so w would jump to 1e6 while the gradient keeps a
rounding residual, hundreds of times the exact update, pushing further into the
saturation. So log-probs come from `grpo.token_logprob`, the missing mass is
-expm1(logsumexp(log p)), the variance is a sum of non-negative terms
(`reward_std`), and the weight is bounded by the 1e-3 in its denominator. A token sequence outside S that decodes to the
same text (another tokenisation of an answer) counts as malformed here; the sampled
estimator's reward would read its text.

The batch, leading axis the prompt so that minibatches and microbatches keep each
prompt's answers together (`step._split` takes rows i, i+k, ...), either a row per
(prompt, answer) — the layout the prefix cache stores —
  tokens, mask       [P, S, T]  the prompt (left-padded), then answer j (right-padded)
                                to C tokens: the layout of `stages.grpo.build_loss_batch`
  completion_mask    [P, S, C]  the answer's real tokens
  answer_reward      [P, S]     r(a) for the prompt's label
  answer_correct     [P, S]     a is the expert's answer
  answer_valid       [P, S]     (optional) a is a real answer, not padding: prompts
                                with fewer than S answers (action lists) pad the rest
  malformed_reward   [P]        r_m
or packed, one row per prompt (`stages.grpo.packed_candidate_batch`): tokens,
positions [P, L], attention [P, L, L], answer_tokens and answer_index [P, S, C] in
place of tokens and mask; the other fields as above.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from act_jax.losses import register
from act_jax.losses.grpo import GRPOConfig, completion_logprobs, token_logprob


def packed_logprobs(model, batch: dict[str, jax.Array], temperature: float,
                    prefix: jax.Array | None = None) -> jax.Array:
  """[P, S, C] log-probs of each packed candidate's tokens (see the module docstring)."""
  P, S, C = batch["answer_tokens"].shape
  h = model.hidden(batch["tokens"], batch["positions"], batch["attention"], x=prefix)
  idx = batch["answer_index"].reshape(P, S * C)
  h = jnp.take_along_axis(h, idx[..., None], axis=1)  # [P, S*C, D]
  logits = model.logits(h.reshape(P * S * C, -1)) / temperature
  return token_logprob(logits, batch["answer_tokens"].reshape(-1)).reshape(P, S, C)


# Bounds GRPO's 1 / std weight: at std -> 0 (a saturated answer) the weight would reach
# 1e6 while the gradient keeps its float32 rounding residual.
STD_EPS = 1e-3


def reward_std(q: jax.Array, v: jax.Array) -> jax.Array:
  """[P] std of a reward taking value v[:, i] with probability q[:, i], as the sum of
  non-negative terms 1/2 sum_ij q_i q_j (v_i - v_j)^2: E[r^2] - E[r]^2 cancels to 0 (or
  below) in float32 once one outcome's probability is within ~1e-7 of 1."""
  d = v[:, :, None] - v[:, None, :]
  return jnp.sqrt(0.5 * jnp.sum(q[:, :, None] * q[:, None, :] * d * d, axis=(1, 2)))


def outcome_entropy(q: jax.Array) -> jax.Array:
  """[P] entropy of the outcome distribution q [P, K] (0 log 0 = 0, with a finite
  gradient there)."""
  safe = jnp.where(q > 0, q, 1.0)
  return -jnp.sum(jnp.where(q > 0, q * jnp.log(safe), 0.0), axis=-1)


@register("expected_reward")
def expected_reward_loss(model, batch: dict[str, jax.Array], cfg: GRPOConfig | None = None
                         ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """-(E[r] - r_m) summed over prompts, the number of prompts, and metrics.

  Only `cfg.temperature` is read: the expectation is over the distribution the
  sampled estimator would draw from.
  """
  w = batch["completion_mask"].astype(jnp.float32)
  P, S, C = w.shape
  temperature = cfg.temperature if cfg is not None else 1.0
  prefix = batch.get("prefix")
  if "attention" in batch:  # packed: one row per prompt (stages.grpo.packed_candidate_batch)
    logp = packed_logprobs(model, batch, temperature, prefix)
  else:
    T = batch["tokens"].shape[-1]
    logp, _ = completion_logprobs(model, batch["tokens"].reshape(P * S, T),
                                  batch["mask"].reshape(P * S, T), C, temperature,
                                  prefix=None if prefix is None else prefix.reshape(P * S, T, -1))
  seq = jnp.sum(logp.reshape(P, S, C) * w, axis=-1)  # [P, S] log p(a|x)
  valid = batch["answer_valid"] if "answer_valid" in batch else jnp.ones((P, S), bool)
  seq = jnp.where(valid, seq, -jnp.inf)  # a padding row's empty answer would have p = 1
  p = jnp.exp(seq)
  r_m = batch["malformed_reward"].astype(jnp.float32)
  r = batch["answer_reward"]
  gain = jnp.sum(p * (r - r_m[:, None]), axis=-1)  # E[r] - r_m
  # The outcomes' probabilities, each answer and "malformed" (the missing mass, taken
  # from log sum p so it stays exact when sum p rounds to 1), and their rewards.
  missing = jnp.clip(-jnp.expm1(jax.nn.logsumexp(seq, axis=-1)), 0.0, 1.0)
  q = jax.lax.stop_gradient(jnp.concatenate([p, missing[:, None]], axis=-1))  # [P, S + 1]
  v = jnp.concatenate([r, r_m[:, None]], axis=-1)
  weight = jnp.ones_like(gain)
  if cfg is None or cfg.advantage == "grpo":  # GRPO's (r - mean) / std, as G -> infinity
    weight = jax.lax.stop_gradient(1.0 / (reward_std(q, v) + STD_EPS))
  objective = weight * gain
  entropy = outcome_entropy(jnp.concatenate([p, missing[:, None]], axis=-1))
  if cfg is not None and cfg.entropy_coef > 0:  # exact, over the answers and "malformed"
    objective = objective + cfg.entropy_coef * entropy
  correct = batch["answer_correct"]
  p_best_other = jnp.max(jnp.where(correct, -1.0, p), axis=-1)
  metrics = {
      "expected_reward": jnp.mean(jax.lax.stop_gradient(r_m + gain)),
      "answer_mass": jnp.mean(jax.lax.stop_gradient(jnp.sum(p, axis=-1))),
      "answer_entropy": jnp.mean(jax.lax.stop_gradient(entropy)),
      "advantage_weight": jnp.mean(weight),
      # The expert's answer is likelier than every other: forced choice in this order.
      "forced_accuracy": jnp.mean((jnp.sum(p * correct, axis=-1) > p_best_other)
                                  .astype(jnp.float32)),
  }
  if "first_letter" in batch:  # a critic's letter bias: p(first letter | a letter)
    first = jnp.sum(q[:, :S] * batch["first_letter"], axis=-1)
    metrics["first_letter_rate"] = jnp.mean(first / jnp.maximum(jnp.sum(q[:, :S], axis=-1),
                                                                1e-30))
  return -jnp.sum(objective), jnp.asarray(P, jnp.float32), metrics
