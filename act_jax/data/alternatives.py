"""Alternative (non-expert) actions per state: the a− of ACT's (s, a+, a−) triples.

Two sources. `policy`: K samples from the *initial* model, as in the paper, which
makes the critic judge the mistakes that model actually makes. `admissible`: K
valid non-expert actions from the environment's list, for models trained from
scratch whose samples are noise. Every candidate lost (unparseable, empty, not
admissible) and every state left without one is counted in `drops`; a candidate that
repeats an action already there (the expert's own, a duplicate) loses nothing and is
counted in `notes`.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Literal, Protocol, Sequence

import numpy as np

from act_jax import parsing
from act_jax.data import prompts
from act_jax.data.report import DropLog
from act_jax.data.states import State


class SampleFn(Protocol):
  """Samples `n` completions per prompt; the real one lives in `act_jax.sampling`."""

  def __call__(self, prompts: list[str], n: int, temperature: float,
               seed: int) -> list[list[str]]:
    ...


@dataclasses.dataclass(frozen=True)
class AlternativesConfig:
  source: Literal["admissible", "policy"] = "admissible"
  k: int = 4
  temperature: float = 1.0
  case_insensitive: bool = True  # ALFWorld, WebShop and ScienceWorld ignore case.
  require_admissible: bool = False  # policy: reject samples not in step.admissible.
  sample_batch_size: int = 64  # prompts per sample_fn call.
  seed: int = 0


def stable_seed(*parts: Any) -> int:
  """A 32-bit seed from any parts, equal across processes (unlike `hash`)."""
  digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
  return int.from_bytes(digest[:4], "little")


def filter_candidates(candidates: Sequence[str | None], expert: str,
                      cfg: AlternativesConfig, where: str, drops: DropLog, notes: DropLog,
                      admissible: Sequence[str] | None = None) -> list[str]:
  """Distinct non-expert actions, in order, whitespace-normalised.

  Compared as `parsing.normalize_action` compares them; None stands for a completion
  with no parseable action.
  """
  norm = lambda a: parsing.normalize_action(a, cfg.case_insensitive)
  expert_key = norm(expert)
  seen = {expert_key}
  allowed = {norm(a) for a in admissible} if admissible is not None else None
  out = []
  for cand in candidates:
    if cand is None:
      drops.drop("candidate/unparseable", where)
      continue
    key = norm(cand)
    if not key:
      drops.drop("candidate/empty", where)
    elif key == expert_key:
      notes.drop("candidate/equals_expert", where)
    elif key in seen:
      notes.drop("candidate/duplicate", where)
    elif allowed is not None and key not in allowed:
      drops.drop("candidate/not_admissible", where)
    else:
      seen.add(key)
      out.append(" ".join(cand.split()))
  return out


def admissible_alternatives(states: Sequence[State], cfg: AlternativesConfig,
                            drops: DropLog, notes: DropLog) -> list[list[str]]:
  """Up to K valid non-expert actions per state, drawn by a per-state seeded RNG."""
  out = []
  for s in states:
    if not s.admissible:
      drops.drop("state/no_admissible_list", s.state_id)
      out.append([])
      continue
    cands = filter_candidates(s.admissible, s.expert_action, cfg, s.state_id, drops, notes)
    rng = np.random.default_rng(stable_seed(cfg.seed, s.state_id))
    picked = sorted(rng.choice(len(cands), size=min(cfg.k, len(cands)),
                               replace=False)) if cands else []
    out.append([cands[i] for i in picked])
    if not cands:
      drops.drop("state/no_alternatives", s.state_id)
  return out


def policy_alternatives(states: Sequence[State], sample_fn: SampleFn,
                        tokenizer: Any, prompt_cfg: prompts.PromptConfig,
                        cfg: AlternativesConfig, drops: DropLog, notes: DropLog,
                        on_batch: Callable[[int], None] | None = None,
                        ) -> list[list[str]]:
  """K samples per state from the initial policy, given the imitation prompt.

  Each batch gets its own seed so results do not depend on how a sampler splits
  work; a sampler answering the wrong shape is an error, not a silent drop.
  """
  out = []
  bs = cfg.sample_batch_size
  for b in range(0, len(states), bs):
    batch = states[b:b + bs]
    batch_prompts = [prompts.action_prompt(tokenizer, s.text, prompt_cfg)
                     for s in batch]
    samples = sample_fn(batch_prompts, n=cfg.k, temperature=cfg.temperature,
                        seed=stable_seed(cfg.seed, "policy", b))
    if len(samples) != len(batch):
      raise ValueError(f"sample_fn returned {len(samples)} lists for "
                       f"{len(batch)} prompts")
    for s, completions in zip(batch, samples):
      if len(completions) != cfg.k:
        raise ValueError(f"sample_fn returned {len(completions)} samples for "
                         f"{s.state_id}, expected {cfg.k}")
      cands = [parsing.parse_action(c, prompt_cfg.action_pattern) for c in completions]
      alts = filter_candidates(
          cands, s.expert_action, cfg, s.state_id, drops, notes,
          admissible=s.admissible if cfg.require_admissible else None)
      if not alts:
        drops.drop("state/no_alternatives", s.state_id)
      out.append(alts)
    if on_batch is not None:
      on_batch(len(batch))
  return out
