"""Verifiable rewards, registered by name: each stage picks one, none forks a trainer.

A reward scores decoded completions against their records' fields (`meta`, one row
per completion) and returns `Scores`: the reward, whether the completion made the
expert's choice, and whether it was malformed (no single parseable answer), so a run
reports format errors apart from wrong answers.

  judgment  ACT stage 2: reasoning, then a final `Answer: A` line naming the expert's
            letter earns `correct`, the other letter `wrong`, anything unparseable,
            ambiguous or unfinished `malformed`.
  action    stage-3 RL: the text after the last `Action:` marker, normalised, earns
            `expert` if it is the expert action, `admissible` if it is another valid
            action, `other` otherwise, `malformed` when there is no action.

`make(name, **overrides)` binds a reward to its config: `rewards.make("judgment",
malformed=-0.1)`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from act_jax import parsing
from act_jax.registry import Registry


class Scores(NamedTuple):
  reward: np.ndarray  # [N] float32
  correct: np.ndarray  # [N] bool: the expert's choice
  malformed: np.ndarray  # [N] bool: no single parseable answer


RewardFn = Callable[[Sequence[str], Mapping[str, Sequence[Any]]], Scores]

# name -> (fn(texts, meta, cfg) -> Scores, the dataclass of its settings)
REWARDS: Registry[tuple[Callable[..., Scores], type]] = Registry("reward", "config.reward.name")


def register(name: str, config_cls: type) -> Callable:
  """Registers `fn(texts, meta, cfg) -> Scores` with the dataclass of its settings."""
  def deco(fn):
    REWARDS.register(name)((fn, config_cls))
    return fn
  return deco


def make(name: str, **overrides: Any) -> RewardFn:
  """The reward `name` with its config's fields overridden: `(texts, meta) -> Scores`."""
  cfg = make_config(name, **overrides)
  return functools.partial(REWARDS.get(name)[0], cfg=cfg)


def make_config(name: str, **overrides: Any) -> Any:
  """The settings dataclass of reward `name` with `overrides` applied (checked)."""
  cls = REWARDS.get(name)[1]
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(overrides) - known)
  if unknown:
    raise ValueError(f"config.reward: unknown field(s) {unknown} for reward {name!r}; "
                     f"known: {sorted(known)}")
  if "letters" in overrides:
    overrides["letters"] = tuple(overrides["letters"])
  return cls(**overrides)


# --- ACT stage 2: which of two actions is better -------------------------------------


@dataclasses.dataclass(frozen=True)
class JudgmentConfig:
  """Reward values and the answer format of the critic (pairwise judgment) task.

  final_line_only, conflicting: how strictly answers parse (`parsing.parse_judgment`).
  """
  correct: float = 1.0
  wrong: float = 0.0
  malformed: float = 0.0
  letters: tuple[str, ...] = parsing.LETTERS
  answer_pattern: str = parsing.ANSWER_PATTERN
  final_line_only: bool = True
  conflicting: str = "malformed"
  reasoning_start: str = parsing.REASONING_START
  reasoning_end: str = parsing.REASONING_END
  label_key: str = "label"


@register("judgment", JudgmentConfig)
def judgment_reward(texts: Sequence[str], meta: Mapping[str, Sequence[Any]],
                    cfg: JudgmentConfig) -> Scores:
  """1 for the expert's letter, 0 for the other, `malformed` for anything else."""
  parsed = [parsing.parse_judgment(
      t, cfg.letters, cfg.answer_pattern, final_line_only=cfg.final_line_only,
      conflicting=cfg.conflicting, reasoning_start=cfg.reasoning_start,
      reasoning_end=cfg.reasoning_end)[0] for t in texts]
  labels = meta[cfg.label_key]
  correct = np.array([p is not None and p == l for p, l in zip(parsed, labels)])
  malformed = np.array([p is None for p in parsed])
  reward = np.where(correct, cfg.correct, np.where(malformed, cfg.malformed, cfg.wrong))
  return Scores(reward.astype(np.float32), correct, malformed)


# --- Stage 3: next-action generation ------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ActionConfig:
  """Reward values of step-level action RL ([S] third-party summary of the paper).

  other: a well-formed action that is neither the expert's nor admissible (or, when
  a record lists no admissible actions, any non-expert action).
  """
  expert: float = 1.0
  admissible: float = 0.1
  other: float = 0.0
  malformed: float = -0.5
  action_pattern: str = parsing.ACTION_PATTERN
  reasoning_start: str = parsing.REASONING_START
  reasoning_end: str = parsing.REASONING_END
  expert_key: str = "expert_action"
  admissible_key: str = "admissible"


@register("action", ActionConfig)
def action_reward(texts: Sequence[str], meta: Mapping[str, Sequence[Any]],
                  cfg: ActionConfig) -> Scores:
  """`expert` / `admissible` / `other` / `malformed` by the generated action."""
  admissible = meta.get(cfg.admissible_key) or [()] * len(texts)
  rewards, correct, malformed = [], [], []
  for text, expert, valid in zip(texts, meta[cfg.expert_key], admissible):
    action = parsing.parse_action(text, cfg.action_pattern, reasoning_start=cfg.reasoning_start,
                                  reasoning_end=cfg.reasoning_end)
    action = parsing.normalize_action(action) if action is not None else None
    is_expert = action is not None and action == parsing.normalize_action(expert)
    is_valid = action is not None and action in {parsing.normalize_action(v) for v in valid}
    rewards.append(cfg.malformed if action is None else cfg.expert if is_expert
                   else cfg.admissible if is_valid else cfg.other)
    correct.append(is_expert)
    malformed.append(action is None)
  return Scores(np.asarray(rewards, np.float32), np.asarray(correct, bool),
                np.asarray(malformed, bool))


def summarize(scores: Scores, prefix: str = "") -> dict[str, float]:
  """Mean reward, accuracy (expert's choice) and format-error rate."""
  return {f"{prefix}reward": float(np.mean(scores.reward)),
          f"{prefix}accuracy": float(np.mean(scores.correct)),
          f"{prefix}format_error_rate": float(np.mean(scores.malformed))}
