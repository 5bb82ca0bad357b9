"""Stage-3 RL: GRPO on next-action generation, rewarded by the generated action.

The same `GRPOStage` as the critic's, with the `action` reward
(`rewards.action_reward`, settings in `config.action_reward`) on imitation records.
With `config.grpo.estimator="expected"` it samples nothing: each state's admissible
actions (and the expert's) are the paid completions, each one's target
("Action: ..." + EOS, exactly as IL writes it) is scored in one forward pass, and the
`expected_reward` loss takes the exact expected reward (`losses.expected`) — the
G -> infinity limit of GRPO (std-normalised or, with `advantage="dr_grpo"`, group-
centred) for a policy that acts without reasoning.
Probability mass outside the listed actions earns `action_reward.malformed` there;
sampling would pay a well-formed unlisted action `action_reward.other` instead.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from act_jax import loop, parsing, rewards
from act_jax.data.pipeline import as_text
from act_jax.stages import Inputs, grpo, register


class ActionStage(grpo.GRPOStage):
  """GRPO (or its exact expectation) on next-action generation."""
  name = "rl"
  enumerable = True

  def __init__(self, config: ml_collections.ConfigDict, *, train_source: Any,
               detokenize: grpo.Detokenize, eval_source: Any = None,
               reference: Any = None, action_ids: Callable[[str], Sequence[int]] | None = None):
    fields = config.action_reward.to_dict()
    super().__init__(config, train_source=train_source, detokenize=detokenize,
                     reward=rewards.make("action", **fields), eval_source=eval_source,
                     reference=reference)
    self.values = rewards.make_config("action", **fields)
    if self.g.estimator == "expected":
      if action_ids is None:
        raise ValueError("config.grpo.estimator='expected' needs each action's target "
                         "token ids (stages.Inputs.action_ids)")
      self.loss = "expected_reward"
      self.action_ids = functools.lru_cache(maxsize=None)(lambda a: tuple(action_ids(a)))
      self.shape = self._candidate_shape()

  def candidates(self, expert: str, admissible: Sequence[str]) -> list[str]:
    """The expert's action, then every other admissible action (once each, in order)."""
    seen = {parsing.normalize_action(expert)}
    out = [expert]
    for a in admissible:
      if parsing.normalize_action(a) not in seen:
        seen.add(parsing.normalize_action(a))
        out.append(a)
    return out

  def _candidate_shape(self) -> tuple[int, int]:
    """(S, C): the most candidates of any record and the longest target, over the whole
    train source. C is every batch's completion width; a batch pads its candidate lists
    to a power of two up to S (a few compiled programs, not S times the rows)."""
    src, S, C = self.train_source, 0, 0
    for i in range(len(src)):
      r = src[i]
      if not len(r[self.values.admissible_key]):
        raise ValueError(f"{self.name}: config.grpo.estimator='expected' needs every record's "
                         f"'{self.values.admissible_key}' list; record {i} "
                         f"({r.get('state_id')!r}) has none")
      cands = self.candidates(as_text(r[self.values.expert_key]),
                              [as_text(a) for a in r[self.values.admissible_key]])
      S = max(S, len(cands))
      C = max(C, max(len(self.action_ids(a)) for a in cands))
    return S, C

  def prepare(self, ctx: loop.Context, state: dict[str, Any], batch: dict[str, Any]
              ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    if self.g.estimator != "expected":
      return super().prepare(ctx, state, batch)
    v, meta = self.values, batch["meta"]
    cands = [self.candidates(e, adm) for e, adm in zip(meta[v.expert_key], meta[v.admissible_key])]
    most, C = self.shape
    S = min(1 << (max(map(len, cands)) - 1).bit_length(), most)
    ids = [[list(self.action_ids(a)) for a in c] for c in cands]
    # Each candidate is paid what sampling its text would be paid.
    texts = [self.detokenize(x) for row in ids for x in row]
    rep = lambda key: [meta[key][i] for i, c in enumerate(cands) for _ in c]
    scores = self.reward(texts, {v.expert_key: rep(v.expert_key),
                                 v.admissible_key: rep(v.admissible_key)})
    reward, correct = np.zeros((len(cands), S), np.float32), np.zeros((len(cands), S), bool)
    k = 0
    for i, c in enumerate(cands):
      reward[i, :len(c)] = scores.reward[k:k + len(c)]
      correct[i, :len(c)] = scores.correct[k:k + len(c)]
      if not correct[i, 0]:
        raise ValueError(f"{self.name}: the expert action's target {texts[k]!r} does not "
                         f"parse as the expert action {c[0]!r} under config.action_reward")
      k += len(c)
    return grpo.packed_candidate_batch(batch["tokens"], batch["mask"], ids, reward, correct,
                                       v.malformed, self._pad_id(ctx), width=C), {}


@register("rl", "action")
def make_action(config: ml_collections.ConfigDict, inputs: Inputs) -> ActionStage:
  return ActionStage(config, train_source=inputs.train_source, detokenize=inputs.detokenize,
                     eval_source=inputs.eval_source, reference=inputs.reference,
                     action_ids=inputs.action_ids)
