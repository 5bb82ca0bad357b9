"""`python -m act_jax.main --config configs/<name>.py --workdir DIR [--config.x=y]`.

The whole ACT pipeline, each step resumable (see `act_jax.workflow`):

  trajectories  expert gold paths (train) + held-out expert states (ID / OOD)
  tokenizer     the model's tokenizer, or a byte-level BPE trained on env text
  datasets      critic pairs + imitation examples (TFDS array_record), held-out pairs
  base          the initial policy: an HF / act_jax checkpoint, or (from scratch) a
                format warm-up on *random* rollouts — it learns the answer formats and
                (stages.base.lm_loss) the env's language, never which action is right
  s<seed>/act   ACT critic GRPO from base                 (variants act, *_w_act)
  s<seed>/il    imitation from base / from act            (il, il_w_act)
  s<seed>/rl    GRPO on next-action generation, base/act  (rl, rl_w_act)
  s<seed>/eval  episode success (ID, OOD), next-action and judgment accuracy
  results       DIR/results.{json,md}, plots, HF export of each variant
"""
from __future__ import annotations

import collections
import copy
import json
import logging
import os
import re
import shutil
from typing import Any, Iterable, Sequence

import ml_collections
import numpy as np
from absl import app, flags

from act_jax import config_lib, distributed, loop, metrics, policy as policy_lib
from act_jax import results as results_lib, rewards, workflow
from act_jax.data import alternatives as alt_lib, build as build_lib, builders, examples
from act_jax.data import pipeline as data_pipeline, prompts as prompts_lib
from act_jax.data.states import trajectory_states
from act_jax.data.trajectory import read_jsonl, write_jsonl
from act_jax.envs import expert as expert_lib, rollout, splits as splits_lib
from act_jax.envs.pool import EnvPool
from act_jax.sampling import Sampler
from act_jax.stages import critic as critic_lib, grpo as grpo_lib

VARIANTS = ("prompt", "il", "rl", "act", "il_w_act", "rl_w_act")
# Each variant is a chain of training stages run from the base model.
CHAINS = {"prompt": (), "il": ("il",), "rl": ("rl",), "act": ("act",),
          "il_w_act": ("act", "il"), "rl_w_act": ("act", "rl")}

log = logging.getLogger(__name__)


# --- configuration --------------------------------------------------------------------


def stage_config(c: ml_collections.ConfigDict, stage: str, seed: int) -> ml_collections.ConfigDict:
  """The experiment config as one stage's run sees it: its steps, batch, lr, seed, and
  for the GRPO stages (act, rl) its own `stages.<stage>.grpo` section as `grpo`."""
  if "grpo" in c:
    raise ValueError("config.grpo: a pipeline config sets GRPO per stage, in "
                     "config.stages.act.grpo and config.stages.rl.grpo")
  s = copy.deepcopy(c)
  sc = c.stages[stage]
  s.seed = seed
  s.train.update({k: sc[k] for k in ("steps", "batch_size", "eval_every") if k in sc})
  s.optim.update({k: sc[k] for k in ("lr", "warmup_steps", "schedule") if k in sc})
  if stage in ("act", "rl"):
    if "grpo" not in sc:
      raise ValueError(f"config.stages.{stage}.grpo: missing; the {stage} stage runs GRPO "
                       "with its own section, e.g. grpo.default_config(group_size=4)")
    with s.unlocked():
      s.grpo = copy.deepcopy(sc.grpo)
  return s


def stage_fingerprint(c: ml_collections.ConfigDict, stage: str, seed: int) -> dict[str, Any]:
  """Every setting a stage's training reads: its whole `stage_config`, less what cannot
  change the trained model, so that no config change is silently ignored on rerun.

  Left out: which runs and exports to make (`pipeline.variants/seeds/export`),
  evaluation (`eval`), the other stages' sections, and the other GRPO stage's reward.
  """
  d = stage_config(c, stage, seed).to_dict()
  d["stages"] = d["stages"][stage]
  d.pop("eval", None)
  for k in ("variants", "seeds", "export"):
    d["pipeline"].pop(k, None)
  for section, reader in (("reward", "act"), ("action_reward", "rl")):
    if stage != reader:
      d.pop(section, None)
  return d


def prompt_config(c: ml_collections.ConfigDict) -> prompts_lib.PromptConfig:
  return prompts_lib.PromptConfig.from_dict(c.prompts.to_dict())


def env_splits(c: ml_collections.ConfigDict) -> dict[str, splits_lib.SplitSpec]:
  e = c.env
  if e.name == "twx":
    params = {**splits_lib.TWX_TRAIN_PARAMS, **dict(e.get("train_params", {}))}
    out = splits_lib.twx_splits(tuple(e.games), params)
    if not any(name.startswith("ood") for name in out):
      # Games with no unseen-object or harder-size fold: their test-fold seeds.
      out["ood_test_fold"] = splits_lib.SplitSpec(
          "ood_test_fold", "twx", tuple(e.games), "test", "ood",
          {g: params[g] for g in e.games if g in params})
    return out
  if e.name == "scienceworld":
    return splits_lib.sciworld_splits(tuple(e.games) or splits_lib.SW_TRAIN_TASKS)
  raise ValueError(f"config.env.name: unknown env {e.name!r}")


def judgment_config(c: ml_collections.ConfigDict) -> rewards.JudgmentConfig:
  """The critic reward's settings: evaluation parses judgments exactly as it does."""
  fields = c.reward.to_dict()
  return rewards.make_config(fields.pop("name"), **fields)


def training_instruction(trajectories: Iterable[Any]) -> str:
  """The instruction the training prompts carry, so evaluation prompts carry it too.

  Built-in expert data has none; imported data usually shares one system text. Where
  imported trajectories differ, live episodes get the most common one, and it is said.
  """
  counts = collections.Counter(t.instruction for t in trajectories)
  if not counts:
    return ""
  (most, n), total = counts.most_common(1)[0], sum(counts.values())
  if len(counts) > 1:
    log.warning("training trajectories carry %d different instructions; evaluation "
                "episodes use the most common one (%d of %d trajectories)",
                len(counts), n, total)
  return most


def make_pool(c: ml_collections.ConfigDict) -> EnvPool:
  return EnvPool(c.env.name, c.env.pool_size, **c.env.get("env_kwargs", {}))


def chain_key(seed: int, chain: Sequence[str]) -> str:
  """Where a chain of stages from the base model lives: "base", "s0/act", "s0/act_il"."""
  return f"s{seed}/" + "_".join(chain) if chain else "base"


def variants(c: ml_collections.ConfigDict) -> list[str]:
  names = [v.strip() for v in c.pipeline.variants.split(",") if v.strip()]
  bad = sorted(set(names) - set(VARIANTS))
  if bad:
    raise ValueError(f"config.pipeline.variants: unknown {bad}; known: {VARIANTS}")
  return names


def eval_modes(c: ml_collections.ConfigDict) -> list[str]:
  """The policy modes to evaluate; ScienceWorld gets `generate` only.

  ScienceWorld's admissible lists often miss the gold surface form, so held-out states
  carry the expert action appended to them (`rollout.expert_states`): ranking that list
  can pick the expert action because it is the only candidate written that way.
  """
  modes = list(c.eval.modes)
  unknown = sorted(set(modes) - set(policy_lib.MODES))
  if unknown:
    raise ValueError(f"config.eval.modes: unknown {unknown}; known: {policy_lib.MODES}")
  ranked = [m for m in modes if m != "generate"]
  if c.env.name == "scienceworld" and ranked:
    raise ValueError(
        f"config.eval.modes: {ranked} not allowed on ScienceWorld: ranking picks from the "
        "admissible list, to which the expert action is appended because the env's lists "
        "often miss its surface form, so it favours the expert action; use ['generate']")
  return modes


# --- steps ----------------------------------------------------------------------------


def make_trajectories(c: ml_collections.ConfigDict, out: str) -> dict[str, Any]:
  """Expert gold paths: the train split for training, the eval splits for held-out states."""
  splits = env_splits(c)
  report = {}
  if c.pipeline.get("trajectories"):  # the user's expert data (e.g. public ALFWorld SFT sets)
    from act_jax.data.importers import load_trajectories
    trajs = load_trajectories(c.pipeline.trajectories.split(","), format="auto")
    write_jsonl(os.path.join(out, "train.jsonl"), trajs)
    report["train"] = {"trajectories": len(trajs), "source": c.pipeline.trajectories}
    splits = {k: v for k, v in splits.items() if k != "train"}
  with make_pool(c) as pool:
    for name, spec in splits.items():
      n = c.env.train_per_game if name == "train" else c.env.heldout_per_game
      trajs, failures, _ = expert_lib.generate(pool, spec.episodes(n), progress=False)
      write_jsonl(os.path.join(out, f"{name}.jsonl"), trajs)
      write_jsonl(os.path.join(out, f"{name}.failures.jsonl"), failures)
      report[name] = {"trajectories": len(trajs), "failed_replays": len(failures)}
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


def make_tokenizer(c: ml_collections.ConfigDict, out: str, traj_dir: str) -> str:
  if c.pipeline.model_dir:
    from act_jax.hf import resolve_params_source
    src = resolve_params_source(c.pipeline.model_dir)
    if not src.tokenizer_dir:
      raise ValueError(f"config.pipeline.model_dir={c.pipeline.model_dir}: no tokenizer files")
    shutil.copytree(src.tokenizer_dir, out, dirs_exist_ok=True)
    return out
  from act_jax import tokenizer as tok_lib
  trajs = [t for name in ("train",) for t in read_jsonl(os.path.join(traj_dir, f"{name}.jsonl"))]
  pcfg = prompt_config(c)
  texts = list(tok_lib.trajectory_texts(trajs, prompt_cfg=pcfg))
  # The prompt templates' own words, as often as a state appears, so they merge too.
  template = re.sub(r"\{\w+\}", " ", pcfg.action_user + "\n" + pcfg.critic_user)
  texts.extend([template] * len(trajs))
  return tok_lib.train_tokenizer(texts, c.tokenizer.vocab_size, out)


def load_tokenizer(path: str):
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(path)


def make_datasets(c: ml_collections.ConfigDict, out: str, traj_dir: str, tok_dir: str) -> str:
  tok = load_tokenizer(tok_dir)
  pcfg = prompt_config(c)
  alt = alt_lib.AlternativesConfig(source=c.data.alternatives, k=c.data.k, seed=c.seed)
  # Alternatives from the *initial* policy (the paper's setting) need the model.
  sample_fn = (build_lib.policy_sample_fn(c.pipeline.model_dir)
               if c.data.alternatives == "policy" else None)
  lines = []
  for name in ["train"] + [s for s in env_splits(c) if s != "train"]:
    trajs = list(read_jsonl(os.path.join(traj_dir, f"{name}.jsonl")))
    rep = build_lib.build_datasets(trajs, tok, os.path.join(out, name), prompt_cfg=pcfg,
                                   alt_cfg=alt, max_state_tokens=c.data.max_state_tokens,
                                   sample_fn=sample_fn)
    lines.append(f"{name}: trajectories={rep.trajectories} states={rep.states} "
                 f"pairs={rep.pairs} dropped={rep.drops.total}")
  return "; ".join(lines)


def format_records(c: ml_collections.ConfigDict, tok) -> list[dict[str, Any]]:
  """Warm-up examples from random play: action and answer *formats*, random content."""
  pcfg = prompt_config(c)
  rng = np.random.default_rng(c.seed)
  states = []
  for i, (x, a) in enumerate(random_rollouts(c, c.stages.base.rollouts_per_game)):
    traj = x.to_trajectory()
    traj.steps[-1].action = a
    states.append(trajectory_states(traj, f"random/{i}", tok, pcfg, c.data.max_state_tokens)[-1])
  recs = [r for _, r in examples.imitation_records(states, tok, pcfg)]
  # Critic format: two random admissible actions, a random letter as the "answer".
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
    recs.append({"state_id": r["state_id"], "input_ids": np.concatenate([p, ans]),
                 "loss_mask": np.concatenate([np.zeros_like(p), np.ones_like(ans)])})
  if c.stages.base.get("lm_loss", False):
    # Language modelling on the whole random-play text as well: predicting "You take
    # the papaya." after a random "take papaya" grows the copy (token-equality)
    # circuits that judging "which action matches the instruction" needs, without
    # ever showing which action is right.
    for r in recs:
      r["loss_mask"] = np.ones_like(r["loss_mask"])
  return recs


class ImitationStage(loop.Stage):
  """The supervised action loss on (prompt, target) records: IL and the format warm-up."""
  loss = "action_ce"

  def __init__(self, config: ml_collections.ConfigDict, source: Any, pad_id: int,
               name: str = "il"):
    self.config, self.source, self.pad_id, self.name = config, source, pad_id, name

  def batches(self, shard_index: int, shard_count: int) -> loop.Batches:
    return data_pipeline.make_batches(
        self.source, batch_size=self.config.train.batch_size // shard_count,
        seed=self.config.seed, pad_id=self.pad_id, mode="supervised",
        shard_index=shard_index, shard_count=shard_count, meta=False,
        group_by_length=self.config.data.get("group_by_length", 0))


# --- the run --------------------------------------------------------------------------


class Pipeline:
  """Holds what every step needs: config, workdir, tokenizer, model config, sampler."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.c, self.dir = config, workdir
    os.makedirs(workdir, exist_ok=True)
    self.steps: dict[str, workflow.Step] = {}
    self._tok = self._ctx = self._sampler = self._pool = None

  def path(self, *parts: str) -> str:
    return os.path.join(self.dir, *parts)

  # Lazily built shared objects.
  @property
  def tok(self):
    if self._tok is None:
      self._tok = load_tokenizer(self.path("tokenizer"))
    return self._tok

  def model_config(self) -> ml_collections.ConfigDict:
    """The experiment config with the model's vocabulary and special ids filled in."""
    c = copy.deepcopy(self.c)
    if not self.c.pipeline.model_dir:
      tok = self.tok
      with c.unlocked():
        c.model.vocab_size = int(np.ceil(len(tok) / 64) * 64)
        c.model.eos_token_id = int(tok.convert_tokens_to_ids(tok.eos_token))
        c.model.pad_token_id = int(tok.pad_token_id or 0)
    return c

  @property
  def ctx(self) -> loop.Context:
    if self._ctx is None:
      c = self.model_config()
      if self.c.pipeline.model_dir:
        from act_jax.hf import resolve_params_source
        _, mcfg = resolve_params_source(self.c.pipeline.model_dir).load(None)
        with c.unlocked():
          c.model_preset = ""
          c.model = ml_collections.ConfigDict({**mcfg.to_dict(), **self.c.model.to_dict()})
      self.c = c
      self._ctx = loop.build_context(c, self.dir)
    return self._ctx

  @property
  def pool(self) -> EnvPool:
    """One pool of environments (JVMs) for every evaluation of the run."""
    if self._pool is None:
      self._pool = make_pool(self.c)
    return self._pool

  @property
  def sampler(self) -> Sampler:
    if self._sampler is None:
      self._sampler = Sampler(self.ctx.model_cfg, self.ctx.mesh)
    return self._sampler

  def params_of(self, stage_dir: str):
    from act_jax.hf import resolve_params_source
    params, _ = resolve_params_source(stage_dir).load(self.ctx.mesh)
    return params

  def run(self) -> dict[str, Any]:
    try:
      return self._run()
    finally:
      if self._pool is not None:
        self._pool.close()
        self._pool = None

  def _run(self) -> dict[str, Any]:
    c = self.c
    variants(c), eval_modes(c)  # refuse a bad config before any step runs
    st = self.steps
    st["trajectories"] = workflow.run_step(
        "trajectories", self.path("trajectories"), {},
        lambda d: make_trajectories(c, d), lambda r: json.dumps(r),
        config=[c.env.to_dict(), c.pipeline.get("trajectories", "")])
    st["tokenizer"] = workflow.run_step(
        "tokenizer", self.path("tokenizer"), {"trajectories": st["trajectories"]},
        lambda d: make_tokenizer(c, d, self.path("trajectories")),
        config=[c.tokenizer.to_dict(), c.pipeline.model_dir])
    st["datasets"] = workflow.run_step(
        "datasets", self.path("datasets"),
        {"trajectories": st["trajectories"], "tokenizer": st["tokenizer"]},
        lambda d: make_datasets(c, d, self.path("trajectories"), self.path("tokenizer")),
        lambda s: s, config=[c.data.to_dict(), c.prompts.to_dict(), c.seed,
                             c.pipeline.model_dir, builders.VERSION])
    st["base"] = workflow.run_step(
        "base", self.path("base"), {"tokenizer": st["tokenizer"]}, self.train_base,
        config=stage_fingerprint(c, "base", c.seed))
    evals: dict[str, dict[int, Any]] = {v: {} for v in variants(c)}
    for seed in range(c.pipeline.seeds):
      for v in variants(c):
        if not CHAINS[v] and seed > 0:
          continue  # θ0 and its greedy evaluation do not depend on the seed: one run
        prev = "base"
        for i, stage in enumerate(CHAINS[v]):
          key = chain_key(seed, CHAINS[v][:i + 1])
          if key not in st:
            st[key] = workflow.run_step(
                key, self.path(key), {"from": st[prev], "datasets": st["datasets"]},
                lambda d, stage=stage, prev=prev, seed=seed: self.train_stage(
                    stage, seed, self.path(prev), d),
                config=stage_fingerprint(c, stage, seed))
          prev = key
        ev_key = f"s{seed}/eval_{v}"
        st[ev_key] = workflow.run_step(
            ev_key, self.path(ev_key), {"model": st[prev], "datasets": st["datasets"]},
            lambda d, prev=prev: self.evaluate(self.path(prev), d),
            lambda r: json.dumps({k: round(v.get("success_rate", v.get("accuracy", 0)), 3)
                                  for k, v in r.items() if isinstance(v, dict)}),
            config=[c.eval.to_dict(), c.env.to_dict(), c.reward.to_dict(), c.prompts.to_dict(),
                    c.data.max_state_tokens, stage_config(c, "act", 0).grpo.max_new_tokens])
        with open(os.path.join(self.path(ev_key), "eval.json")) as f:
          evals[v][seed] = json.load(f)["splits"]
    return self.write_results(evals)

  # -- training ---------------------------------------------------------------------
  def train_base(self, out: str) -> str:
    c = self.model_config()
    if c.pipeline.model_dir:
      from act_jax.hf import resolve_params_source
      params, _ = resolve_params_source(c.pipeline.model_dir).load(self.ctx.mesh)
      self._save_params(out, params)
      return "imported " + c.pipeline.model_dir
    recs = format_records(c, self.tok)
    sc = stage_config(c, "base", c.seed)
    loop.run(sc, out, ImitationStage(sc, recs, self._pad(), name="base"), ctx=self.ctx)
    return f"format warm-up on {len(recs)} random-play examples"

  def _pad(self) -> int:
    return int(self.ctx.model_cfg.pad_token_id or 0)

  def _save_params(self, out: str, params) -> None:
    """A one-step 'run' holding the params, so every stage dir loads the same way."""
    from act_jax.hf import save_params_checkpoint
    save_params_checkpoint(out, params, self.ctx.model_cfg, tokenizer_dir=self.path("tokenizer"))

  def train_stage(self, stage: str, seed: int, init_dir: str, out: str) -> str:
    sc = stage_config(self.c, stage, seed)
    init = self.params_of(init_dir)
    train = builders.load_source(self.path("datasets", "train"),
                                 "critic_pairs" if stage == "act" else "imitation_pairs")
    detok = lambda ids: self.tok.decode(ids, skip_special_tokens=True)
    if stage == "il":
      s = ImitationStage(sc, train, self._pad(), name="il")
    elif stage == "act":
      held = builders.load_source(self.path("datasets", "id"), "critic_pairs")
      s = critic_lib.CriticStage(sc, train_source=train, eval_source=held, detokenize=detok,
                                 reference=init)
    elif stage == "rl":
      reward = rewards.make("action", **sc.action_reward.to_dict())
      s = grpo_lib.GRPOStage(sc, train_source=train, reward=reward, detokenize=detok,
                             reference=init, name="rl")
    else:
      raise ValueError(f"unknown stage {stage!r}")
    loop.run(sc, out, s, init_params=init, ctx=self.ctx)
    return f"{stage} seed {seed}"

  # -- evaluation -------------------------------------------------------------------
  def evaluate(self, model_dir: str, out: str) -> dict[str, Any]:
    c = self.c
    params = self.params_of(model_dir)
    pcfg = prompt_config(c)
    report: dict[str, Any] = {"splits": {}}
    splits = env_splits(c)
    eval_specs = splits_lib.eval_episodes(splits, c.eval.episodes_per_game)
    instruction = training_instruction(read_jsonl(self.path("trajectories", "train.jsonl")))
    modes = eval_modes(c)
    for mode in modes:
      pol = policy_lib.ModelPolicy(self.sampler, params, self.tok, pcfg, mode=mode,
                                   max_state_tokens=c.data.max_state_tokens,
                                   instruction=instruction)
      res = rollout.evaluate(pol, self.pool, eval_specs, c.env.max_steps)
      for split, r in res.items():
        key = split if mode == modes[0] else f"{split}[{mode}]"
        entry = report["splits"].setdefault(key, {})
        entry.update(success_rate=r["success_rate"], success_rate_ci95=r["success_ci95"],
                     invalid_action_rate=r["invalid_action_rate"], avg_steps=r["avg_steps"],
                     policy_mode=mode)
        trajs = list(read_jsonl(self.path("trajectories", f"{split}.jsonl")))
        na = rollout.next_action_accuracy(pol, trajs, max_states=c.eval.heldout_states)
        entry.update(next_action_accuracy=na["accuracy"],
                     next_action_accuracy_ci95=na["accuracy_ci95"],
                     next_action_states=na["states"], next_action_episodes=na["episodes"])
        if mode == "generate":
          entry["unparsed_action_rate"] = pol.unparsed / max(pol.generated, 1)
    judgment = judgment_config(c)
    max_new = int(stage_config(c, "act", 0).grpo.max_new_tokens)
    for split in splits:
      if split == "train":
        continue
      try:
        src = builders.load_source(self.path("datasets", split), "critic_pairs")
      except Exception:  # no critic pairs for this split (e.g. no admissible lists)
        continue
      recs = [src[i] for i in policy_lib.evenly_spaced(len(src), c.eval.critic_pairs)]
      j = policy_lib.judgment_accuracy(self.sampler, params, self.tok, pcfg, recs, judgment,
                                       max_new_tokens=max_new)
      report["splits"].setdefault(split, {}).update(
          {k: v for k, v in j.items() if k.startswith("judgment_")},
          judgment_pairs=j["pairs"], judgment_max_new_tokens=j["max_new_tokens"])
    with open(os.path.join(out, "eval.json"), "w") as f:
      json.dump(report, f, indent=2)
    return report["splits"]

  # -- results ----------------------------------------------------------------------
  def write_results(self, evals: dict[str, dict[int, Any]]) -> dict[str, Any]:
    order = variants(self.c)
    doc = results_lib.write(self.dir, evals, order, extra={
        "config": json.loads(self.c.to_json_best_effort()),
        "policy_modes": eval_modes(self.c)})
    results_lib.plot_variants(self.path("variants.png"), doc["variants"], order)
    curves = {}
    for key in self.steps:
      f = self.path(key, "metrics.jsonl")
      if os.path.exists(f):
        curves[key] = metrics.read_jsonl(f)
    results_lib.plot_curves(self.path("curves.png"), curves,
                            keys=("loss", "reward", "eval_accuracy"))
    if self.c.pipeline.export:
      from act_jax.hf import save_pretrained
      for v in order:
        src = chain_key(0, CHAINS[v])
        dst = self.path("export", v)
        if not os.path.exists(os.path.join(dst, "config.json")):
          save_pretrained(dst, self.params_of(self.path(src)), self.ctx.model_cfg,
                          tokenizer_dir=self.path("tokenizer"), overwrite=True)
    print(open(self.path("results.md")).read(), flush=True)
    return doc




def main(argv: Sequence[str]) -> None:
  del argv
  distributed.initialize()
  loop.setup_process(flags.FLAGS.workdir)  # stages and variants recompile the same programs
  Pipeline(flags.FLAGS.config, flags.FLAGS.workdir).run()


if __name__ == "__main__":
  config_lib.define_flags()
  app.run(main)
