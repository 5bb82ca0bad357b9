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
import re
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from act_jax.data import prompts


class Scores(NamedTuple):
  reward: np.ndarray  # [N] float32
  correct: np.ndarray  # [N] bool: the expert's choice
  malformed: np.ndarray  # [N] bool: no single parseable answer


RewardFn = Callable[[Sequence[str], Mapping[str, Sequence[Any]]], Scores]

_REGISTRY: dict[str, tuple[Callable[..., Scores], type]] = {}


def register(name: str, config_cls: type) -> Callable:
  """Registers `fn(texts, meta, cfg) -> Scores` with the dataclass of its settings."""
  def deco(fn):
    _REGISTRY[name] = (fn, config_cls)
    return fn
  return deco


def make(name: str, **overrides: Any) -> RewardFn:
  """The reward `name` with its config's fields overridden: `(texts, meta) -> Scores`."""
  if name not in _REGISTRY:
    raise ValueError(f"config.reward.name: unknown reward {name!r}; known: {sorted(_REGISTRY)}")
  fn, cls = _REGISTRY[name]
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(overrides) - known)
  if unknown:
    raise ValueError(f"config.reward: unknown field(s) {unknown} for reward {name!r}; "
                     f"known: {sorted(known)}")
  if "letters" in overrides:
    overrides["letters"] = tuple(overrides["letters"])
  return functools.partial(fn, cfg=cls(**overrides))


def strip_reasoning(text: str, start: str, end: str) -> str | None:
  """The text after the reasoning block; None if a block was opened but never closed.

  With thinking models the answer must follow `</think>`: an answer written inside
  an unfinished block (a length-truncated completion) does not count.
  """
  if end and end in text:
    return text.rsplit(end, 1)[1]
  if start and start in text:
    return None
  return text


# --- ACT stage 2: which of two actions is better -------------------------------------


@dataclasses.dataclass(frozen=True)
class JudgmentConfig:
  """Reward values and the answer format of the critic (pairwise judgment) task.

  conflicting: "malformed" makes a completion that answers two different letters
    (`Answer: A` ... `Answer: B`) malformed; "last" keeps the last answer.
  final_line_only: the answer must be on the last non-empty line, as the prompt asks.
  """
  correct: float = 1.0
  wrong: float = 0.0
  malformed: float = 0.0
  letters: tuple[str, ...] = prompts.PromptConfig.letters
  answer_pattern: str = prompts.PromptConfig.answer_pattern
  final_line_only: bool = True
  conflicting: str = "malformed"
  reasoning_start: str = "<think>"
  reasoning_end: str = "</think>"
  label_key: str = "label"


# Parse outcomes; everything but OK is a format error.
OK, MISSING, NOT_FINAL, INVALID, AMBIGUOUS, UNFINISHED = (
    "ok", "missing", "not_final", "invalid", "ambiguous", "unfinished")


def parse_judgment(text: str, cfg: JudgmentConfig) -> tuple[str | None, str]:
  """(letter or None, outcome) for one critic completion."""
  body = strip_reasoning(text, cfg.reasoning_start, cfg.reasoning_end)
  if body is None:
    return None, UNFINISHED
  matches = list(re.finditer(cfg.answer_pattern, body))
  if not matches:
    return None, MISSING
  last = matches[-1]
  line, _, after = body[last.end():].partition("\n")
  if cfg.final_line_only and after.strip():
    return None, NOT_FINAL
  letters = [l.upper() for l in cfg.letters]
  letter = last.group(1).upper()
  if letter not in letters:
    return None, INVALID
  others = [re.escape(l) for l in cfg.letters if l.upper() != letter]
  # "Answer: A or B", "Answer: A/B": the final line names another choice too.
  if others and re.search(r"\b(?:" + "|".join(others) + r")\b", line):
    return None, AMBIGUOUS
  said = {m.group(1).upper() for m in matches} & set(letters)
  if cfg.conflicting == "malformed" and len(said) > 1:
    return None, AMBIGUOUS
  return cfg.letters[letters.index(letter)], OK


@register("judgment", JudgmentConfig)
def judgment_reward(texts: Sequence[str], meta: Mapping[str, Sequence[Any]],
                    cfg: JudgmentConfig) -> Scores:
  """1 for the expert's letter, 0 for the other, `malformed` for anything else."""
  parsed = [parse_judgment(t, cfg)[0] for t in texts]
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
  action_pattern: str = prompts.DEFAULT_ACTION_PATTERN
  reasoning_start: str = "<think>"
  reasoning_end: str = "</think>"
  expert_key: str = "expert_action"
  admissible_key: str = "admissible"


def normalize_action(action: str) -> str:
  """Case, spacing, quotes and a trailing full stop do not make a different action."""
  a = " ".join(action.strip().lower().split())
  a = a.strip("`'\"*")
  return a[:-1].rstrip() if a.endswith(".") else a


def parse_action(text: str, cfg: ActionConfig) -> str | None:
  """The normalised action a completion names, or None if it names none."""
  body = strip_reasoning(text, cfg.reasoning_start, cfg.reasoning_end)
  if body is None:
    return None
  action, _ = prompts.split_action(body, cfg.action_pattern)
  action = normalize_action(action) if action else ""
  return action or None


@register("action", ActionConfig)
def action_reward(texts: Sequence[str], meta: Mapping[str, Sequence[Any]],
                  cfg: ActionConfig) -> Scores:
  """`expert` / `admissible` / `other` / `malformed` by the generated action."""
  admissible = meta.get(cfg.admissible_key) or [()] * len(texts)
  rewards, correct, malformed = [], [], []
  for text, expert, valid in zip(texts, meta[cfg.expert_key], admissible):
    action = parse_action(text, cfg)
    is_expert = action is not None and action == normalize_action(expert)
    is_valid = action is not None and action in {normalize_action(v) for v in valid}
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
