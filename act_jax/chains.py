"""The pipeline's variants, each a chain of training stages from θ0, and the config each
stage's run sees (`stage_config`) and is fingerprinted by (`stage_fingerprint`): what
`act_jax.pipeline` runs, kept apart from how it runs it.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import ml_collections

from act_jax import config_lib, evaluation, storage

# Each variant is a chain of training stages run from the base model.
CHAINS = {"prompt": (), "il": ("il",), "rl": ("rl",), "act": ("act",),
          "il_w_act": ("act", "il"), "rl_w_act": ("act", "rl"),
          # Controls: the critic stage without its signal (random labels; another
          # episode's state; no judgment reward at all, only the stage's replay), then
          # the same IL or RL stage.
          "act_shuffled": ("act_shuffled", "il"), "act_blind": ("act_blind", "il"),
          "il_w_replay": ("act_replay", "il"),
          "rl_w_act_shuffled": ("act_shuffled", "rl"), "rl_w_act_blind": ("act_blind", "rl"),
          "rl_w_replay": ("act_replay", "rl"),
          "ee_iwm": ("ee_iwm", "il"), "ee_sr": ("ee_sr",)}
VARIANTS = tuple(CHAINS)
# The control critic stages run the act stage's section on transformed pairs (the
# replay-only one with every judgment reward 0); the Early Experience stages run the il
# section (its budget and loss) on their own records.
SECTION = {"act_shuffled": "act", "act_blind": "act", "act_replay": "act", "ee_iwm": "il",
           "ee_sr": "il"}
REPLAY_ONLY = "act_replay"
EARLY_EXPERIENCE = ("ee_iwm", "ee_sr")  # stages trained on the branching rollouts
# Variants whose policy writes a reflection before its action.
REFLECTING = tuple(v for v, chain in CHAINS.items() if "ee_sr" in chain)
# Variants that end in a critic stage: judges, not policies. A cached evaluation scores
# their next action by teacher forcing but does not generate one (no hypothesis reads a
# critic's written action, and generating 700 of them costs as much as a policy's).
JUDGES = tuple(v for v, chain in CHAINS.items()
               if chain and SECTION.get(chain[-1], chain[-1]) == "act")


def stage_config(c: ml_collections.ConfigDict, stage: str, seed: int) -> ml_collections.ConfigDict:
  """The experiment config as one stage's run sees it: its steps, batch, lr, seed, and
  for the GRPO stages (act, rl) its own `stages.<stage>.grpo` section as `grpo`."""
  if "grpo" in c:
    raise ValueError("config.grpo: a pipeline config sets GRPO per stage, in "
                     "config.stages.act.grpo and config.stages.rl.grpo")
  s = copy.deepcopy(c)
  orig, stage = stage, SECTION.get(stage, stage)
  sc = c.stages[stage]
  s.seed = seed
  given = lambda keys: {k: sc[k] for k in keys if sc.get(k) is not None}  # None keeps theirs
  s.train.update(given(("steps", "batch_size", "eval_every", "trainable", "replay_batch_size",
                        "replay_weight")))
  s.optim.update(given(("lr", "warmup_steps", "schedule")))
  if orig == REPLAY_ONLY:
    if not sc.get("replay_batch_size"):
      raise ValueError("config.stages.act.replay_batch_size: the replay-only control "
                       "(il_w_replay, rl_w_replay) trains on the critic stage's replay "
                       "alone, and this config has none")
    s.reward.update(dict(correct=0.0, wrong=0.0, malformed=0.0))  # no judgment signal
  if stage in ("act", "rl"):
    if "grpo" not in sc:
      raise ValueError(f"config.stages.{stage}.grpo: missing; the {stage} stage runs GRPO "
                       "with its own section, e.g. config_lib.grpo(group_size=4)")
    with s.unlocked():
      s.grpo = copy.deepcopy(sc.grpo)
  return s


def stage_fingerprint(c: ml_collections.ConfigDict, stage: str, seed: int) -> dict[str, Any]:
  """Every setting a stage's training reads: its whole `stage_config`, less what cannot
  change the trained model, so that no config change is silently ignored on rerun.

  Left out: which runs and exports to make (`pipeline.variants/seeds/first_seed/export/evaluate`),
  evaluation (`eval`), the other stages' sections, and the other GRPO stage's reward.
  """
  d = stage_config(c, stage, seed).to_dict()
  d["stages"] = d["stages"][SECTION.get(stage, stage)]
  if stage in SECTION:
    d["control"] = stage
  d.pop("eval", None)
  for k in ("variants", "seeds", "first_seed", "export", "evaluate"):
    d["pipeline"].pop(k, None)
  for section, reader in (("reward", "act"), ("action_reward", "rl")):
    if SECTION.get(stage, stage) != reader:
      d.pop(section, None)
  return d


def chain_key(seed: int, chain: Sequence[str]) -> str:
  """Where a chain of stages from the base model lives: "base", "s0/act", "s0/act_il"."""
  return f"s{seed}/" + "_".join(chain) if chain else "base"


def variants(c: ml_collections.ConfigDict) -> list[str]:
  names = [v.strip() for v in c.pipeline.variants.split(",") if v.strip()]
  bad = sorted(set(names) - set(VARIANTS))
  if bad:
    raise ValueError(f"config.pipeline.variants: unknown {bad}; known: {VARIANTS}")
  if c.eval.get("cached") and set(names) & set(REFLECTING):
    raise ValueError(f"config.eval.cached: cached evaluation scores the action right after "
                     f"the prompt; {sorted(set(names) & set(REFLECTING))} reflect first")
  return names


def validate(c: ml_collections.ConfigDict) -> None:
  """Every config check a pipeline run makes before it writes anything."""
  config_lib.validate(c), variants(c), evaluation.eval_modes(c)
  if c.eval.get("cached") and c.eval.get("episodes_per_game"):
    raise ValueError("config.eval.episodes_per_game: a cached evaluation (config.eval.cached) "
                     "scores held-out states and critic pairs, not episodes; set it to 0, or "
                     "config.eval.cached=None to play the episodes with the full model")
  for field in ("model_dir", "trajectories"):
    if field in c.pipeline and c.pipeline[field] is None:
      raise ValueError(f"config.pipeline.{field}: required by this config; pass "
                       f"--config.pipeline.{field}=PATH (local or gs://)")
    for p in (c.pipeline.get(field) or "").split(","):
      if p and not storage.exists(p):
        raise ValueError(f"config.pipeline.{field}: {p} does not exist")
