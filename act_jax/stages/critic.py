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

from typing import Any, Callable, Mapping, Sequence

import ml_collections
import numpy as np

from act_jax import loop, rewards
from act_jax.data.pipeline import as_text
from act_jax.stages import Inputs, grpo, register


def make_reward(c: ml_collections.ConfigDict) -> rewards.RewardFn:
  """The config's reward: `c.reward.name` with its other fields as overrides."""
  fields = c.reward.to_dict()
  return rewards.make(fields.pop("name"), **fields)


def reward_config(c: ml_collections.ConfigDict) -> Any:
  """The settings dataclass of the config's reward (`rewards.make_config`)."""
  fields = c.reward.to_dict()
  return rewards.make_config(fields.pop("name"), **fields)


def expected_batch(prompt_tokens: np.ndarray, prompt_mask: np.ndarray, labels: Sequence[str],
                   answers: Sequence[Sequence[int]], letters: Sequence[str],
                   judgment: rewards.JudgmentConfig, pad_id: int) -> dict[str, np.ndarray]:
  """The `expected_reward` loss's batch: every prompt with every answer string
  (`answers[j]`: letter j's token ids), laid out by `grpo.candidate_batch`."""
  correct = np.asarray([[label == letter for letter in letters] for label in labels])
  out = grpo.candidate_batch(prompt_tokens, prompt_mask, [answers] * len(labels),
                             np.where(correct, judgment.correct, judgment.wrong), correct,
                             judgment.malformed, pad_id)
  out["first_letter"] = np.broadcast_to(np.arange(len(letters)) == 0, correct.shape).copy()
  return out


def check_both_orders(source: Any, batch_size: int, where: str) -> None:
  """Refuses critic records that do not come as each pair's two A/B orders, one after
  the other (`data.examples.both_orders`), or a batch that cannot hold whole pairs:
  trained in one batch the two orders cancel a letter preference's gradient, which
  one order alone leaves free (a batch's ±4-of-16 label imbalance moves it by steps
  the size of the learning rate)."""
  if batch_size % 2:
    raise ValueError(f"{where}.batch_size={batch_size}: the critic's batches hold both A/B "
                     "orders of each pair, so it must be even")
  src = getattr(source, "uncached", source)
  n = len(src)
  for i in range(0, n - 1, 2):
    a, b = src[i], src[i + 1]
    if as_text(a["state_id"]) != as_text(b["state_id"]) or as_text(a["label"]) == as_text(
        b["label"]):
      raise ValueError(f"critic records {i} and {i + 1} ({as_text(a['state_id'])!r}) are not "
                       "one pair's two A/B orders: pass data.examples.both_orders(records)")
  if n % 2:
    raise ValueError(f"{n} critic records: an odd count cannot be pairs' two A/B orders; "
                     "pass data.examples.both_orders(records)")


class CriticStage(grpo.GRPOStage):
  """GRPO with the pairwise-judgment reward; `evaluate` reports held-out accuracy.

  Its records come as each pair's two A/B orders (`data.examples.both_orders`), and a
  batch always holds both (`check_both_orders`). With `config.grpo.estimator="expected"`
  training samples nothing: `prepare` pairs
  each prompt with every answer string (`answers`: letter -> token ids, EOS included)
  and the `expected_reward` loss takes the exact expected reward (`losses.expected`).
  """
  name = "act_critic"
  enumerable = True
  keep_together = 2  # a pair's two A/B orders: check_both_orders

  def __init__(self, config: ml_collections.ConfigDict, *, train_source: Any,
               detokenize: grpo.Detokenize, eval_source: Any = None,
               reward: rewards.RewardFn | None = None,
               reference: grpo.Params | grpo.Reference | None = None,
               answers: Mapping[str, Sequence[int]] | None = None,
               evaluator: Callable[[grpo.Params], Mapping[str, float]] | None = None):
    self.evaluator = evaluator
    super().__init__(config, train_source=train_source, detokenize=detokenize,
                     reward=reward or make_reward(config), eval_source=eval_source,
                     reference=reference)
    check_both_orders(train_source, config.train.batch_size, "config.train")
    if self.g.estimator == "expected":
      self.loss = "expected_reward"
      self.judgment = reward_config(config)
      self.answers = self._check_answers(answers)
      cached = getattr(train_source, "suffixes", None)  # data.prefix_cache rows
      if cached is not None and [list(a) for a in cached] != self.answers:
        raise ValueError(f"{self.name}: the prefix cache's answer rows {cached} are not "
                         f"the answers {self.answers} in the reward's letter order")

  def evaluate(self, ctx: loop.Context, params: grpo.Params) -> dict[str, float]:
    """The caller's evaluation if it gave one (`stages.Inputs.evaluate`), else greedy
    judgments of the held-out pairs."""
    if self.evaluator is not None:
      return dict(self.evaluator(params))
    return super().evaluate(ctx, params)

  def _check_answers(self, answers: Mapping[str, Sequence[int]] | None) -> list[list[int]]:
    """The answer ids in the reward's letter order, refused unless each one's text earns
    its letter's reward, so the expectation is over what sampling would be paid for."""
    where = "config.grpo.estimator='expected'"
    if not isinstance(self.judgment, rewards.JudgmentConfig):
      raise ValueError(f"{where} needs the judgment reward, not "
                       f"config.reward.name={self.config.reward.name!r}")
    letters = self.judgment.letters
    if answers is None or sorted(answers) != sorted(letters):
      got = None if answers is None else sorted(answers)
      raise ValueError(f"{where} needs the token ids of the answer to each of {letters} "
                       f"(stages.Inputs.answers), got {got}")
    ids = [list(answers[l]) for l in letters]
    texts = [self.detokenize(a) for a in ids]
    if not self.reward(texts, {self.judgment.label_key: list(letters)}).correct.all():
      raise ValueError(f"{where}: the answer strings {texts} do not all parse as their "
                       f"letters {letters} under config.reward")
    return ids

  def prepare(self, ctx: loop.Context, state: dict[str, Any], batch: dict[str, Any]
              ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    if self.g.estimator != "expected":
      return super().prepare(ctx, state, batch)
    j = self.judgment
    out = expected_batch(batch["tokens"], batch["mask"], batch["meta"][j.label_key],
                         self.answers, j.letters, j, self._pad_id(ctx))
    if "prefix" in batch:  # cached for every (prompt, answer) row: data.prefix_cache
      if batch["prefix"].shape[:3] != out["tokens"].shape:
        raise ValueError(f"{self.name}: cached prefix {batch['prefix'].shape[:3]} does not "
                         f"match the (prompt, answer) rows {out['tokens'].shape}")
      out["prefix"] = batch["prefix"]
    return out, {}


@register("act", "critic")
def make_critic(config: ml_collections.ConfigDict, inputs: Inputs) -> CriticStage:
  return CriticStage(config, train_source=inputs.train_source, detokenize=inputs.detokenize,
                     eval_source=inputs.eval_source, reference=inputs.reference,
                     answers=inputs.answers, evaluator=inputs.evaluate)
