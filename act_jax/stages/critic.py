"""ACT stage 2: GRPO on the pairwise judgment "which of two actions is better?".

The prompt shows a state and two candidate actions (the expert's and an alternative,
in random order); the model reasons and names a letter, and is rewarded only for
naming the expert's (`rewards.judgment_reward`) — no reasoning text is supervised.
Held-out judgment accuracy (greedy) is the stage's evaluation.

  stage = CriticStage(config, train_source=critic_train, eval_source=critic_heldout,
                      detokenize=lambda ids: tok.decode(ids, skip_special_tokens=True))
  loop.run(config, workdir, stage, init_params=pretrained)
"""
from __future__ import annotations

from typing import Any

import ml_collections

from act_jax import config_lib, rewards
from act_jax.stages import grpo


def default_config() -> ml_collections.ConfigDict:
  """ACT critic training of a pretrained model (Qwen3-8B, the paper's main model).

  The paper states the model, the prompt shape and "GRPO, rewarded only for selecting
  correctly"; every number below is marked [I] (our inference) in `grpo.default_config`
  or here.
  """
  c = config_lib.base()
  c.model_preset = "qwen3-8b"
  c.mesh_preset = "auto"  # pick the hardware's layout, e.g. --config.mesh_preset=tpu_v5p_64
  c.train.update(dict(steps=300, batch_size=32, eval_every=25, loss="grpo"))
  # ~10k critic pairs / 32 prompts = ~1 epoch in 300 steps [I].
  c.optim.update(dict(lr=1e-6, schedule="constant", warmup_steps=10, weight_decay=0.0,
                      b1=0.9, b2=0.99, grad_clip=1.0))  # full fine-tune [I]
  c.checkpoint.update(dict(every=25, best_metric="eval_accuracy", best_mode="max"))
  c.grpo = grpo.default_config()
  # Reward values: 1 correct / 0 wrong / 0 unparseable [I]; see rewards.JudgmentConfig.
  c.reward = ml_collections.ConfigDict(dict(name="judgment", correct=1.0, wrong=0.0,
                                            malformed=0.0))
  return c


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
