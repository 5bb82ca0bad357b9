"""ACT stage 2: GRPO on the pairwise judgment "which of two actions is better?".

The prompt shows a state and two candidate actions (the expert's and an alternative,
in random order); the model reasons and names a letter, and is rewarded only for
naming the expert's (`rewards.judgment_reward`) — no reasoning text is supervised.
Held-out judgment accuracy (greedy) is the stage's evaluation; the paper-scale
config is `config_lib.critic()`.

  stage = CriticStage(config, train_source=critic_train, eval_source=critic_heldout,
                      detokenize=lambda ids: tok.decode(ids, skip_special_tokens=True))
  loop.run(config, workdir, stage, init_params=pretrained)
"""
from __future__ import annotations

from typing import Any

import ml_collections

from act_jax import rewards
from act_jax.stages import Inputs, grpo, register


def make_reward(c: ml_collections.ConfigDict) -> rewards.RewardFn:
  """The config's reward: `c.reward.name` with its other fields as overrides."""
  fields = c.reward.to_dict()
  return rewards.make(fields.pop("name"), **fields)


class CriticStage(grpo.GRPOStage):
  """GRPO with the pairwise-judgment reward; `evaluate` reports held-out accuracy."""
  name = "act_critic"

  def __init__(self, config: ml_collections.ConfigDict, *, train_source: Any,
               detokenize: grpo.Detokenize, eval_source: Any = None,
               reward: rewards.RewardFn | None = None,
               reference: grpo.Params | grpo.Reference | None = None):
    super().__init__(config, train_source=train_source, detokenize=detokenize,
                     reward=reward or make_reward(config), eval_source=eval_source,
                     reference=reference)


@register("act", "critic")
def make_critic(config: ml_collections.ConfigDict, inputs: Inputs) -> CriticStage:
  return CriticStage(config, train_source=inputs.train_source, detokenize=inputs.detokenize,
                     eval_source=inputs.eval_source, reference=inputs.reference)
