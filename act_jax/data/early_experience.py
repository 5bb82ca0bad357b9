"""Training records of the Early Experience baselines (Zhang et al. 2025, "Agent
Learning via Early Experience"), from the branching rollouts (`data.branches`).

  ee_iwm  implicit world modelling: prompt = the state and an action taken
          (`PromptConfig.world_model_user`), target = the observation it led to + EOS,
          loss on the observation only; one record for the expert's action and one
          per alternative. The pipeline trains this, then IL (`pipeline.CHAINS`).
  ee_sr   self-reflection: prompt = the action prompt, target = a reflection on what
          the expert's action and one alternative led to, then the action target
          exactly as IL writes it + EOS; one record per (state, alternative). From
          scratch the reflection is `PromptConfig.reflection` filled in; a pretrained
          θ0 writes it itself (`reflection_user`, greedy), as in the paper.

Both baselines use what the environment answered to the alternatives: interaction ACT
never has (its critic sees the same alternatives, never their outcomes).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from act_jax.data import examples, prompts
from act_jax.data.branches import Branch

# A θ0 that writes reflections: prompt token ids in, completion texts out (greedy).
Generate = Callable[[list[list[int]]], list[str]]


def world_model_records(branches: Sequence[Branch], tokenizer: Any,
                        cfg: prompts.PromptConfig) -> list[dict[str, Any]]:
  """One record per (state, action taken): the expert's first, then each alternative's."""
  rows = [(b, a, obs) for b in branches
          for a, obs in [(b["expert_action"], b["expert_observation"])]
          + [(x["action"], x["observation"]) for x in b["alternatives"]]]
  texts = [prompts.world_model_prompt(tokenizer, b["state"], a, cfg) for b, a, _ in rows]
  targets = [obs for _, _, obs in rows]
  ids = examples.supervised_rows(tokenizer, texts, targets, examples.eos_id(tokenizer, cfg))
  return [{"state_id": b["state_id"], "source": b["source"], "prompt": text, "target": obs,
           "action": a, "expert_action": b["expert_action"], **x}
          for (b, a, obs), text, x in zip(rows, texts, ids)]


def reflection_pairs(branches: Sequence[Branch]) -> list[tuple[Branch, dict[str, Any]]]:
  """(state, alternative) pairs: one reflection each."""
  return [(b, x) for b in branches for x in b["alternatives"]]


def template_reflections(pairs: Sequence[tuple[Branch, dict[str, Any]]],
                         cfg: prompts.PromptConfig) -> list[str]:
  return [cfg.reflection.format(expert=b["expert_action"],
                                expert_observation=b["expert_observation"],
                                alternative=x["action"], alternative_observation=x["observation"])
          for b, x in pairs]


def model_reflections(pairs: Sequence[tuple[Branch, dict[str, Any]]], generate: Generate,
                      tokenizer: Any, cfg: prompts.PromptConfig,
                      batch_size: int = 64) -> list[str]:
  """θ0's reflections: shown both outcomes and told which action is the expert's."""
  texts = [prompts.reflection_prompt(tokenizer, b["state"], b["expert_action"],
                                     b["expert_observation"], x["action"], x["observation"], cfg)
           for b, x in pairs]
  ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
  return [t.strip() for i in range(0, len(ids), batch_size)
          for t in generate(ids[i:i + batch_size])]


def reflection_target(reflection: str, expert_action: str,
                      cfg: prompts.PromptConfig) -> tuple[str, str]:
  """The SR target's two pieces: the reflection (to its own line), then the action target.
  Encoded apart (`examples.supervised_rows`), so a policy scoring actions after its own
  reflection scores the tokens training saw."""
  return reflection.strip() + "\n", prompts.action_target(expert_action, cfg)


def reflection_records(branches: Sequence[Branch], tokenizer: Any, cfg: prompts.PromptConfig,
                       generate: Generate | None = None) -> list[dict[str, Any]]:
  """One SR record per (state, alternative); `generate`: θ0 writes the reflections,
  None: the template does (a model trained from scratch)."""
  pairs = reflection_pairs(branches)
  reflections = (template_reflections(pairs, cfg) if generate is None
                 else model_reflections(pairs, generate, tokenizer, cfg))
  texts = [prompts.action_prompt(tokenizer, b["state"], cfg) for b, _ in pairs]
  targets = [reflection_target(r, b["expert_action"], cfg) for r, (b, _) in zip(reflections, pairs)]
  ids = examples.supervised_rows(tokenizer, texts, targets, examples.eos_id(tokenizer, cfg))
  return [{"state_id": b["state_id"], "source": b["source"], "prompt": text,
           "target": "".join(t), "reflection": r, "expert_action": b["expert_action"],
           "alternative_action": x["action"], **row}
          for (b, x), text, t, r, row in zip(pairs, texts, targets, reflections, ids)]
