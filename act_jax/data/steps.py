"""The pipeline's data steps, each from the experiment config into its step's directory.

  trajectories  expert gold paths (train) + held-out expert states (ID / OOD)
  tokenizer     the model's tokenizer, or a byte-level BPE trained on env text
  datasets      critic pairs + imitation examples (TFDS array_record), held-out pairs
  branches      what each critic alternative does in the env (the Early Experience
                baselines only: `act_jax.data.branches`)
  random_play   format examples from random play (from scratch only), which the base
                step's warm-up trains on (`format_records`) and a stage may replay

Nothing here trains: `act_jax.pipeline` wires these steps together.
"""
from __future__ import annotations

import collections
import json
import os
import re
from typing import Any

import ml_collections
import numpy as np

from act_jax.data import alternatives as alt_lib, branches as branches_lib
from act_jax.data import build as build_lib, builders, examples
from act_jax.data import prompts as prompts_lib
from act_jax.data.report import DropLog
from act_jax.data.states import current_state, trajectory_ids
from act_jax.data.trajectory import read_jsonl, write_jsonl
from act_jax.envs import expert as expert_lib, rollout
from act_jax.envs.splits import data_splits, env_splits, make_pool


def prompt_config(c: ml_collections.ConfigDict) -> prompts_lib.PromptConfig:
  return prompts_lib.PromptConfig.from_dict(c.prompts.to_dict())


def load_tokenizer(path: str) -> Any:
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(path)


def check_imported_observations(c: ml_collections.ConfigDict) -> None:
  """Imported expert data records each observation as the env said it, without the
  `look` / `inventory` text our envs append by default; held-out states and episodes
  come from the live envs, so they must not append it either, or training and
  evaluation prompts differ."""
  if c.pipeline.get("trajectories") and c.env.get("env_kwargs", {}).get(
      "observe_look_inventory", True):
    raise ValueError(
        f"config.pipeline.trajectories={c.pipeline.trajectories!r} is imported data, whose "
        "observations carry no look/inventory text: set "
        "config.env.env_kwargs.observe_look_inventory=False so live prompts match it")


def make_trajectories(c: ml_collections.ConfigDict, out: str) -> dict[str, Any]:
  """Expert gold paths: the train split for training, the eval splits for held-out states."""
  splits = data_splits(c)
  report = {}
  check_imported_observations(c)
  imported = c.pipeline.get("trajectories")  # the user's expert data (public SFT sets)
  if imported:
    splits = {k: v for k, v in splits.items() if k != "train"}
  heldout = []
  with make_pool(c) as pool:
    for name, spec in splits.items():
      n = {"train": c.env.train_per_game, "validation": spec.count}.get(
          name, c.env.heldout_per_game)
      trajs, failures, _ = expert_lib.generate(pool, spec.episodes(n), progress=False)
      write_jsonl(os.path.join(out, f"{name}.jsonl"), trajs)
      write_jsonl(os.path.join(out, f"{name}.failures.jsonl"), failures)
      report[name] = {"trajectories": len(trajs), "failed_replays": len(failures)}
      heldout += trajs + failures
  if imported:  # never train on an episode an evaluation split holds
    from act_jax.data.importers import drop_heldout, load_trajectories
    trajs, dropped = drop_heldout(load_trajectories(imported.split(","), format="auto"),
                                  heldout)
    write_jsonl(os.path.join(out, "train.jsonl"), trajs)
    report["train"] = {"trajectories": len(trajs), "source": imported,
                       "dropped_as_heldout": len(dropped)}
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report


def make_tokenizer(c: ml_collections.ConfigDict, out: str, traj_dir: str) -> str:
  """The imported model's tokenizer files, or a BPE trained on the train split's text."""
  if c.pipeline.model_dir:
    from act_jax import params as params_lib
    from act_jax.hf.tokenizer import copy_tokenizer_files
    tok_dir = params_lib.tokenizer_dir(c.pipeline.model_dir)
    if tok_dir is None:
      raise ValueError(f"config.pipeline.model_dir={c.pipeline.model_dir}: no tokenizer files")
    copy_tokenizer_files(tok_dir, out)  # an HF dir's weights stay where they are
    return out
  from act_jax import tokenizer as tok_lib
  trajs = [t for name in ("train",) for t in read_jsonl(os.path.join(traj_dir, f"{name}.jsonl"))]
  pcfg = prompt_config(c)
  texts = list(tok_lib.trajectory_texts(trajs, prompt_cfg=pcfg))
  # The prompt templates' own words, as often as a state appears, so they merge too.
  template = re.sub(r"\{\w+\}", " ", pcfg.action_user + "\n" + pcfg.critic_user)
  texts.extend([template] * len(trajs))
  return tok_lib.train_tokenizer(texts, c.tokenizer.vocab_size, out)


def make_datasets(c: ml_collections.ConfigDict, out: str, traj_dir: str, tok_dir: str) -> str:
  """Critic pairs and imitation examples of every split, one directory each."""
  tok = load_tokenizer(tok_dir)
  pcfg = prompt_config(c)
  alt = alt_lib.AlternativesConfig(
      source=c.data.alternatives, k=c.data.k, seed=c.seed,
      # policy samples: keep only valid actions, so a malformed one is not spotted by form
      require_admissible=c.data.get("require_admissible", False),
      temperature=c.data.get("temperature", 1.0))
  # Alternatives from the *initial* policy (the paper's setting) need the model.
  sample_fn = (build_lib.policy_sample_fn(c.pipeline.model_dir)
               if c.data.alternatives == "policy" else None)
  lines = []
  for name in ["train"] + [s for s in data_splits(c) if s != "train"]:
    trajs = list(read_jsonl(os.path.join(traj_dir, f"{name}.jsonl")))
    rep = build_lib.build_datasets(trajs, tok, os.path.join(out, name), prompt_cfg=pcfg,
                                   alt_cfg=alt, max_state_tokens=c.data.max_state_tokens,
                                   sample_fn=sample_fn)
    lines.append(f"{name}: {rep.line()}")
  return "; ".join(lines)


def make_branches(c: ml_collections.ConfigDict, out: str, traj_dir: str,
                  datasets_dir: str, tok_dir: str) -> dict[str, Any]:
  """Branching rollouts from every train state, with its critic pairs' alternatives:
  `out`/train.jsonl and report.json (`data.branches`)."""
  tok = load_tokenizer(tok_dir)
  trajs = list(read_jsonl(os.path.join(traj_dir, "train.jsonl")))
  # The states exactly as the datasets step rendered them (same ids, text, budget).
  states = build_lib.build_states(trajs, tok, prompt_config(c), c.data.max_state_tokens,
                                  DropLog(), DropLog())
  train_dir = os.path.join(datasets_dir, "train")
  alts = (branches_lib.critic_alternatives(builders.load_source(train_dir, "critic_pairs"))
          if os.path.exists(builders.dataset_dir(train_dir, "critic_pairs")) else {})
  with make_pool(c) as pool:
    records, report = branches_lib.make_branches(pool, trajs, trajectory_ids(trajs), states,
                                                 alts)
  branches_lib.write_jsonl(os.path.join(out, "train.jsonl"), records)
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report


def random_rollouts(c: ml_collections.ConfigDict, n_per_game: int) -> list[tuple[Any, str]]:
  """(state, action) pairs from a random-admissible policy on train-fold episodes."""
  recorded: list[tuple[Any, str]] = []
  base = rollout.RandomPolicy(seed=c.seed)

  def recording(inputs):
    acts = base(inputs)
    recorded.extend(zip(inputs, acts))
    return acts

  spec = env_splits(c)["train"]
  with make_pool(c) as pool:
    rollout.run_episodes(recording, pool, spec.episodes(n_per_game), c.env.max_steps)
  return recorded


def random_play_records(c: ml_collections.ConfigDict, tok: Any) -> list[dict[str, Any]]:
  """Format examples from random play, the loss on each target only: action prompts ->
  the random admissible action taken (`kind` "action"), critic prompts over two random
  admissible actions -> a random letter (`kind` "critic"). Formats, random content:
  nothing in them says which action is right."""
  pcfg = prompt_config(c)
  rng = np.random.default_rng(c.seed)
  states = []
  for i, (x, a) in enumerate(random_rollouts(c, c.stages.base.rollouts_per_game)):
    traj = x.to_trajectory()
    traj.steps[-1].action = a
    states.append(current_state(traj, f"random/{i}", tok, pcfg, c.data.max_state_tokens))
  recs = [{"kind": "action", "state_id": r["state_id"], "input_ids": r["input_ids"],
           "loss_mask": r["loss_mask"]} for _, r in examples.imitation_records(states, tok, pcfg)]
  alts = []
  for s in states:
    others = [b for b in (s.admissible or ()) if b != s.expert_action]
    alts.append([others[rng.integers(len(others))]] if others else [])
  eos = examples.eos_id(tok, pcfg)
  for _, r in examples.critic_records(states, alts, tok, pcfg, c.seed, "random"):
    letter = pcfg.letters[int(rng.integers(2))]
    ans = np.asarray(tok(prompts_lib.answer_text(letter, pcfg), add_special_tokens=False)
                     ["input_ids"] + [eos], np.int32)
    p = np.asarray(r["prompt_ids"], np.int32)
    recs.append({"kind": "critic", "state_id": r["state_id"], "input_ids": np.concatenate([p, ans]),
                 "loss_mask": np.concatenate([np.zeros_like(p), np.ones_like(ans)])})
  return recs


def make_random_play(c: ml_collections.ConfigDict, out: str, tok_dir: str) -> str:
  """`out`/records.jsonl: `random_play_records`, which the base step's format warm-up
  trains on and a stage's `replay` mixes in (`data.replay`)."""
  recs = random_play_records(c, load_tokenizer(tok_dir))
  with open(os.path.join(out, "records.jsonl"), "w") as f:
    for r in recs:
      f.write(json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v
                          for k, v in r.items()}) + "\n")
  kinds = collections.Counter(r["kind"] for r in recs)
  return " ".join(f"{k}_records={n}" for k, n in sorted(kinds.items()))


def load_random_play(out: str, kind: str | None = None) -> list[dict[str, Any]]:
  """The random-play records (of one `kind`, or all), token fields as arrays."""
  recs = []
  with open(os.path.join(out, "records.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if kind is None or r["kind"] == kind:
        recs.append({**r, "input_ids": np.asarray(r["input_ids"], np.int32),
                     "loss_mask": np.asarray(r["loss_mask"], np.int32)})
  return recs


def format_records(records: list[dict[str, Any]], lm_loss: bool) -> list[dict[str, Any]]:
  """The base step's warm-up examples: the random-play records, with `lm_loss` the loss
  on their whole text.

  Language modelling on the random-play text as well: predicting "You take the
  papaya." after a random "take papaya" grows the copy (token-equality) circuits that
  judging "which action matches the instruction" needs, without ever showing which
  action is right.
  """
  if not lm_loss:
    return records
  return [{**r, "loss_mask": np.ones_like(r["loss_mask"])} for r in records]
