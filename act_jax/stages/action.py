"""Stage-3 RL: GRPO on next-action generation, rewarded by the generated action.

The same `GRPOStage` as the critic's, with the `action` reward
(`rewards.action_reward`, settings in `config.action_reward`) on imitation records.
"""
from __future__ import annotations

import ml_collections

from act_jax import rewards
from act_jax.stages import Inputs, grpo, register


@register("rl", "action")
def make_action(config: ml_collections.ConfigDict, inputs: Inputs) -> grpo.GRPOStage:
  reward = rewards.make("action", **config.action_reward.to_dict())
  return grpo.GRPOStage(config, train_source=inputs.train_source, reward=reward,
                        detokenize=inputs.detokenize, eval_source=inputs.eval_source,
                        reference=inputs.reference, name="rl")
