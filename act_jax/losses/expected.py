"""The exact expected reward of a critic that answers without reasoning.

Such a critic's well-formed completions are a small set S of answer strings, e.g.
S = {"Answer: A" + EOS, "Answer: B" + EOS}: exactly the strings forced-choice
evaluation scores. Every other completion is malformed and earns r_m. For a prompt x

  E[r] = sum_{a in S} p(a|x) r(a) + (1 - sum_{a in S} p(a|x)) r_m
       = r_m + sum_{a in S} p(a|x) (r(a) - r_m),
  grad E[r] = sum_{a in S} p(a|x) (r(a) - r_m) grad log p(a|x).

That gradient is also the expectation over ALL completions y of the unclipped
on-policy policy gradient with any baseline b, E_y[(r(y) - b) grad log p(y|x)] (the
baseline term vanishes in expectation): the limit of group-centred (dr_grpo-style)
GRPO as G -> infinity, computed with one forward pass per (prompt, answer) instead
of G samples, and without their variance; nothing is sampled, so the group size
and the reasoning budget (max_new_tokens) play no part. The loss per prompt is
-(E[r] - r_m), whose gradient is -grad E[r]; it is summed over prompts with the
number of prompts as denominator. A token sequence outside S that decodes to the same text (another
tokenisation of an answer) counts as malformed here; the sampled estimator's reward
would read its text.

The batch, leading axis the prompt so that minibatches and microbatches keep each
prompt's answers together (`step._split` takes rows i, i+k, ...):
  tokens, mask       [P, S, T]  the prompt (left-padded), then answer j (right-padded)
                                to C tokens: the layout of `stages.grpo.build_loss_batch`
  completion_mask    [P, S, C]  the answer's real tokens
  answer_reward      [P, S]     r(a) for the prompt's label
  answer_correct     [P, S]     a is the expert's answer
  malformed_reward   [P]        r_m
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from act_jax.losses import register
from act_jax.losses.grpo import GRPOConfig, completion_logprobs


@register("expected_judgment")
def expected_judgment_loss(model, batch: dict[str, jax.Array], cfg: GRPOConfig | None = None
                           ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """-(E[r] - r_m) summed over prompts, the number of prompts, and metrics.

  Only `cfg.temperature` is read: the expectation is over the distribution the
  sampled estimator would draw from.
  """
  P, S, T = batch["tokens"].shape
  w = batch["completion_mask"].astype(jnp.float32)
  C = w.shape[-1]
  prefix = batch.get("prefix")
  logp, _ = completion_logprobs(model, batch["tokens"].reshape(P * S, T),
                                batch["mask"].reshape(P * S, T), C,
                                cfg.temperature if cfg is not None else 1.0,
                                prefix=None if prefix is None else prefix.reshape(P * S, T, -1))
  p = jnp.exp(jnp.sum(logp.reshape(P, S, C) * w, axis=-1))  # [P, S]
  r_m = batch["malformed_reward"].astype(jnp.float32)
  gain = jnp.sum(p * (batch["answer_reward"] - r_m[:, None]), axis=-1)  # E[r] - r_m
  correct = batch["answer_correct"]
  p_best_other = jnp.max(jnp.where(correct, -1.0, p), axis=-1)
  metrics = {
      "expected_reward": jnp.mean(jax.lax.stop_gradient(r_m + gain)),
      "answer_mass": jnp.mean(jax.lax.stop_gradient(jnp.sum(p, axis=-1))),
      # The expert's answer is likelier than every other: forced choice in this order.
      "forced_accuracy": jnp.mean((jnp.sum(p * correct, axis=-1) > p_best_other)
                                  .astype(jnp.float32)),
  }
  return -jnp.sum(gain), jnp.asarray(P, jnp.float32), metrics
