"""The ACT pipeline's step graph, each step resumable (see `act_jax.workflow`):

  trajectories  expert gold paths (train) + held-out expert states (ID / OOD)
  tokenizer     the model's tokenizer, or a byte-level BPE trained on env text
  datasets      critic pairs + imitation examples (TFDS array_record), held-out pairs
  branches      what each critic alternative does in the env: the Early Experience
                baselines' extra interaction (only when one of them is run)
  base          the initial policy: an HF / act_jax checkpoint, or (from scratch) a
                format warm-up on *random* rollouts — it learns the answer formats and
                (stages.base.lm_loss) the env's language, never which action is right
  s<seed>/act   ACT critic GRPO from base                 (variants act, *_w_act)
  s<seed>/il    imitation from base / from act            (il, il_w_act)
  s<seed>/rl    GRPO on next-action generation, base/act  (rl, rl_w_act)
  s<seed>/act_shuffled, s<seed>/act_blind, s<seed>/act_replay
                the critic stage on control pairs (random labels; states from other
                episodes: `act_jax.data.controls`), or with every judgment reward 0 so
                that only its replay trains; then IL (act_shuffled, act_blind,
                il_w_replay) or RL (rl_w_act_shuffled, rl_w_act_blind, rl_w_replay)
  s<seed>/ee_iwm, s<seed>/ee_sr
                the Early Experience baselines with the IL stage's budget
                (`act_jax.data.early_experience`): implicit world modelling, then IL
                (ee_iwm); self-reflection + action SFT in place of IL (ee_sr)
  s<seed>/eval  episode success (ID, OOD), next-action and judgment accuracy
  results       DIR/results.{json,md}, plots, HF export of each variant

The variants and each stage's config live in `act_jax.chains`, the data steps in
`act_jax.data.steps`, the training stages in `act_jax.stages`, evaluation in
`act_jax.evaluation`; here they are wired together.
"""
from __future__ import annotations

import copy
import functools
import json
import os
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from act_jax import cached_eval, config_lib, evaluation, loop, params as params_lib
from act_jax import results as results_lib, stages, storage, workflow
from act_jax.chains import (CHAINS, EARLY_EXPERIENCE, JUDGES, REFLECTING,  # noqa: F401
                            SECTION, VARIANTS,
                            chain_key, stage_config, stage_fingerprint, validate, variants)
from act_jax.data import branches as branches_lib, builders, controls, replay as replay_lib
from act_jax.data import early_experience as ee, examples, prefix_cache, steps as data_steps
from act_jax.envs.pool import EnvPool
from act_jax.envs.splits import make_pool, validation_split
from act_jax.policy import GREEDY
from act_jax.sampling import Sampler
from act_jax.trainable import Trainable


# --- the run --------------------------------------------------------------------------


class Pipeline:
  """Holds what every step needs: config, workdir, tokenizer, model config, sampler.

  `self.c` stays the config as given (the steps' fingerprints read it); `full_config`
  adds the model's fields, once the tokenizer step has run.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               redo: Sequence[str] = ()):
    validate(config)  # before anything is written
    self.c, self.dir, self.redo = config, workdir, set(redo)
    storage.makedirs(workdir)
    self.steps: dict[str, workflow.Step] = {}
    self._pool: EnvPool | None = None

  def path(self, *parts: str) -> str:
    return os.path.join(self.dir, *parts)

  def local(self, step: str, *parts: str) -> str:
    """A finished data step's files, as a local path (`storage.local_dir`): their
    readers (TFDS, tokenizers, memory maps) open OS files."""
    return os.path.join(storage.local_dir(self.path(step)), *parts)

  # Shared objects, built when a step first needs them.
  @functools.cached_property
  def tok(self) -> Any:
    return data_steps.load_tokenizer(self.local("tokenizer"))

  @functools.cached_property
  def full_config(self) -> ml_collections.ConfigDict:
    """The experiment config with the model filled in: the imported checkpoint's
    architecture (`c.model`'s fields on top), or from scratch the run's tokenizer's
    vocabulary (a multiple of 64) and special ids."""
    c = copy.deepcopy(self.c)
    with c.unlocked():
      if self.c.pipeline.model_dir:
        mcfg = params_lib.model_config(self.c.pipeline.model_dir)
        c.model_preset = None
        c.model = ml_collections.ConfigDict({**mcfg.to_dict(), **self.c.model.to_dict()})
      else:
        tok = self.tok
        c.model.vocab_size = int(np.ceil(len(tok) / 64) * 64)
        c.model.eos_token_id = int(tok.convert_tokens_to_ids(tok.eos_token))
        c.model.pad_token_id = int(tok.pad_token_id or 0)
    return c

  @functools.cached_property
  def ctx(self) -> loop.Context:
    return loop.build_context(self.full_config)

  @property
  def pool(self) -> EnvPool:
    """One pool of environments (JVMs) for every evaluation of the run."""
    if self._pool is None:
      self._pool = make_pool(self.c)
    return self._pool

  @functools.cached_property
  def sampler(self) -> Sampler:
    return Sampler(self.ctx.model_cfg, self.ctx.mesh)

  def params_of(self, stage_dir: str) -> Any:
    params, _ = params_lib.load(stage_dir, self.ctx.mesh,
                               config_lib.sharding_rules(self.full_config))
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
    st = self.steps
    run_step = functools.partial(workflow.run_step, redo=self.redo)
    st["trajectories"] = run_step(
        "trajectories", self.path("trajectories"), {},
        lambda d: data_steps.make_trajectories(c, d), lambda r: json.dumps(r),
        config=[c.env.to_dict(), c.pipeline.get("trajectories", "")], staged=True,
        reproducible=True)
    st["tokenizer"] = run_step(
        "tokenizer", self.path("tokenizer"), {"trajectories": st["trajectories"]},
        lambda d: data_steps.make_tokenizer(c, d, self.local("trajectories")),
        config=[c.tokenizer.to_dict(), c.pipeline.model_dir], staged=True, reproducible=True)
    st["datasets"] = run_step(
        "datasets", self.path("datasets"),
        {"trajectories": st["trajectories"], "tokenizer": st["tokenizer"]},
        lambda d: data_steps.make_datasets(c, d, self.local("trajectories"),
                                           self.local("tokenizer")),
        lambda s: s, config=[c.data.to_dict(), c.prompts.to_dict(), c.seed,
                             c.pipeline.model_dir, builders.VERSION], staged=True,
        reproducible=True)
    if set(variants(c)) & {v for v in VARIANTS if set(CHAINS[v]) & set(EARLY_EXPERIENCE)}:
      st["branches"] = run_step(
          "branches", self.path("branches"),
          {"trajectories": st["trajectories"], "datasets": st["datasets"]},
          lambda d: data_steps.make_branches(c, d, self.local("trajectories"),
                                             self.local("datasets"), self.local("tokenizer")),
          lambda r: json.dumps({k: r[k] for k in ("episodes", "failed_replays", "branched_states",
                                                  "states_skipped", "branches", "wall_s")}),
          config=[c.env.to_dict()], staged=True)
    base_deps = {"tokenizer": st["tokenizer"]}
    if not c.pipeline.model_dir:  # from scratch: θ0 is a warm-up on random play
      st["random_play"] = base_deps["random_play"] = run_step(
          "random_play", self.path("random_play"), {"tokenizer": st["tokenizer"]},
          lambda d: data_steps.make_random_play(c, d, self.local("tokenizer")), lambda s: s,
          config=[c.env.to_dict(), c.stages.base.rollouts_per_game, c.seed,
                  c.prompts.to_dict(), c.data.max_state_tokens], staged=True)
    st["base"] = run_step(
        "base", self.path("base"), base_deps, self.train_base,
        config=stage_fingerprint(c, "base", c.seed),
        reproducible=bool(c.pipeline.model_dir))  # imported; a warm-up trains
    evals: dict[str, dict[int, Any]] = {v: {} for v in variants(c)}
    first = c.pipeline.get("first_seed", 0)  # a later slice of the seeds (another process)
    for seed in range(first, first + c.pipeline.seeds):
      for v in variants(c):
        if not CHAINS[v] and seed > 0:
          continue  # θ0 and its greedy evaluation do not depend on the seed: one run
        prev = "base"
        for i, stage in enumerate(CHAINS[v]):
          key = chain_key(seed, CHAINS[v][:i + 1])
          if key not in st:
            deps = {"from": st[prev], "datasets": st["datasets"]}
            if stage_config(c, stage, seed).train.replay_batch_size:
              deps["random_play"] = st["random_play"]
            if stage in EARLY_EXPERIENCE:
              deps["branches"] = st["branches"]
            st[key] = run_step(
                key, self.path(key), deps,
                lambda d, stage=stage, prev=prev, seed=seed: self.train_stage(
                    stage, seed, self.path(prev), d),
                config=stage_fingerprint(c, stage, seed))
          prev = key
        if not c.pipeline.get("evaluate", True):
          continue  # a settings sweep: the stages' own validation metrics are its result
        ev_key = f"s{seed}/eval_{v}"
        reflect = self._reflection_budget() if v in REFLECTING else 0
        judge = bool(c.eval.get("cached")) and v in JUDGES  # no generated actions
        st[ev_key] = run_step(
            ev_key, self.path(ev_key), {"model": st[prev], "datasets": st["datasets"]},
            lambda d, prev=prev, reflect=reflect, judge=judge: self.evaluate(
                self.path(prev), d, reflect, generate=not judge),
            lambda r: json.dumps({k: round(v.get("success_rate", v.get("next_action_accuracy", 0)),
                                           3)
                                  for k, v in r.items() if isinstance(v, dict)}),
            config=[c.eval.to_dict(), c.env.to_dict(), c.reward.to_dict(), c.prompts.to_dict(),
                    c.data.max_state_tokens, self._judgment_budget()]
            + ([{"reflection_tokens": reflect}] if reflect else [])
            + ([{"generate_actions": False}] if judge else []))
        evals[v][seed] = storage.read_json(self.path(ev_key, "eval.json"))["splits"]
    if not c.pipeline.get("evaluate", True):
      return {}
    return self.write_results({v: e for v, e in evals.items() if e})

  # -- training ---------------------------------------------------------------------
  def train_base(self, out: str) -> str:
    c = self.full_config
    if c.pipeline.model_dir:
      self._save_params(out, self.params_of(c.pipeline.model_dir))
      return "imported " + c.pipeline.model_dir
    recs = data_steps.format_records(data_steps.load_random_play(self.local("random_play")),
                                     c.stages.base.get("lm_loss", False))
    sc = stage_config(c, "base", c.seed)
    loop.run(sc, out, stages.make("base", sc, train_source=recs, pad_id=self._pad()),
             ctx=self.ctx)
    return f"format warm-up on {len(recs)} random-play examples"

  def _pad(self) -> int:
    return int(self.ctx.model_cfg.pad_token_id or 0)

  def _save_params(self, out: str, params: Any) -> None:
    """A one-step 'run' holding the params, so every stage dir loads the same way."""
    params_lib.save(out, params, self.ctx.model_cfg, tokenizer_dir=self.local("tokenizer"))

  def train_stage(self, stage: str, seed: int, init_dir: str, out: str) -> str:
    sc = stage_config(self.full_config, stage, seed)
    section = SECTION.get(stage, stage)
    init = self.params_of(init_dir)
    if stage in EARLY_EXPERIENCE:
      train = self.early_experience_records(stage, init, out)
    else:
      train = builders.load_source(self.local("datasets", "train"),
                                   "critic_pairs" if section == "act" else "imitation_pairs")
    if stage in controls.CONTROLS:  # seeded by the dataset seed: one cache for all seeds
      train = controls.CONTROLS[stage]([train[i] for i in range(len(train))], self.c.seed,
                                       self.tok, data_steps.prompt_config(self.c))
    if section == "act":  # both A/B orders of every pair, in one batch (stages.critic)
      train = examples.both_orders([train[i] for i in range(len(train))], self.tok,
                                   data_steps.prompt_config(self.c))
    # Only the critic evaluates while it trains (every train.eval_every steps): on the
    # validation split's pairs if the run has one (env.validation_per_game), else on
    # held-out ID pairs, which may be watched but must not choose a setting.
    val = validation_split(self.c) is not None
    held = (builders.load_source(self.local("datasets", "validation" if val else "id"),
                                 "critic_pairs") if section == "act" else None)
    answers = (examples.answer_ids(self.tok, data_steps.prompt_config(self.c))
               if section == "act" else None)
    trainable = Trainable.parse(sc.train.trainable, self.ctx.model_cfg.num_layers)
    evaluate = (self.validation_forced_choice(held, trainable)
                if val and held is not None and trainable.frozen_prefix
                and sc.grpo.get("estimator") == "expected" else None)
    # A fixed input's frozen prefix is computed once: imitation examples, and the
    # expected critic's (prompt, answer) rows.
    if trainable.frozen_prefix and (section == "il" or sc.grpo.get("estimator") == "expected"):
      train = prefix_cache.attach(
          train, "input_ids" if section == "il" else "prompt_ids", trainable.split(init)[1],
          self.ctx.model_cfg, self.local("prefix_cache"),
          suffixes=[answers[l] for l in stages.critic.reward_config(sc).letters]
          if section == "act" else None)
    s = stages.make(section, sc, train_source=train, eval_source=held, reference=init,
                    detokenize=lambda ids: self.tok.decode(ids, skip_special_tokens=True),
                    pad_id=self._pad(), answers=answers,
                    action_ids=examples.action_ids(self.tok, data_steps.prompt_config(self.c)),
                    evaluate=evaluate)
    loop.run(sc, out, s, init_params=init, ctx=self.ctx, replay=self.replay(sc, seed),
             label=os.path.relpath(out, self.dir))
    return f"{stage} seed {seed}"

  def forced_choice(self, pairs: Any, trainable: Trainable
                    ) -> Callable[[Any], dict[str, Any]]:
    """params -> the answer-only critic's forced choice on every pair of `pairs`, both
    A/B orders, from the frozen prefix's cache (`cached_eval.forced_choice`), with each
    pair's outcome (`*_per_unit`) for comparisons paired pair by pair."""
    recs = [pairs[i] for i in range(len(pairs))]
    pcfg = data_steps.prompt_config(self.c)

    def evaluate(params: Any) -> dict[str, Any]:
      train, frozen = trainable.split(params)
      return cached_eval.forced_choice(self.ctx.gdef, trainable.top_model(train, frozen),
                                       frozen, self.ctx.model_cfg, self.local("prefix_cache"),
                                       self.tok, pcfg, recs)
    return evaluate

  def validation_forced_choice(self, pairs: Any, trainable: Trainable
                               ) -> Callable[[Any], dict[str, float]]:
    """`forced_choice` on the validation pairs, its scalars as metrics `val_*`: what a
    critic's learning rate, depth and step budget are chosen on."""
    score = self.forced_choice(pairs, trainable)
    return lambda params: {f"val_{k}": float(v) for k, v in score(params).items()
                           if np.isscalar(v)}

  def replay(self, sc: ml_collections.ConfigDict, seed: int) -> replay_lib.Replay | None:
    """The stage's replay of θ0's random-play *action* records (`data.replay`): the
    action format, with random admissible actions, nothing about which one is right."""
    n = sc.train.replay_batch_size
    if n == 0:
      return None
    if self.c.pipeline.model_dir:
      raise ValueError("config.stages.<stage>.replay_batch_size: replay needs θ0's "
                       "random-play records, which only a from-scratch run has "
                       "(config.pipeline.model_dir is set)")
    recs = data_steps.load_random_play(self.local("random_play"), kind="action")
    return replay_lib.Replay(recs, n, sc.train.replay_weight, seed, self._pad())

  def early_experience_records(self, stage: str, init: Any, out: str) -> list[dict[str, Any]]:
    """The ee_iwm / ee_sr stage's records from the branching rollouts. A pretrained θ0
    (`init`: the chain starts at base) writes the SR reflections, kept in
    `out`/reflections.jsonl to read; from scratch the template does."""
    branches = branches_lib.read_jsonl(self.local("branches", "train.jsonl"))
    pcfg = data_steps.prompt_config(self.c)
    if stage == "ee_iwm":
      return ee.world_model_records(branches, self.tok, pcfg)
    generate = None
    if self.c.pipeline.model_dir:
      budget = int(self.c.data.get("reflection_max_new_tokens", 128))
      generate = lambda ids: [
          self.tok.decode(seq, skip_special_tokens=True) for seq in self.sampler.generate(
              init, ids, sampling=GREEDY, max_new_tokens=budget).sequences()]
    recs = ee.reflection_records(branches, self.tok, pcfg, generate=generate)
    with storage.open(os.path.join(out, "reflections.jsonl"), "w") as f:
      for r in recs:
        f.write(json.dumps({k: r[k] for k in ("state_id", "alternative_action", "target")}) + "\n")
    return recs

  # -- evaluation and results -------------------------------------------------------
  def _judgment_budget(self) -> int:
    """Judgments are evaluated with the critic stage's own token budget (a config
    without a critic stage: the GRPO default)."""
    if "act" not in self.c.stages:
      return config_lib.GRPOSection().max_new_tokens
    return stage_config(self.c, "act", 0).grpo.max_new_tokens

  def _reflection_budget(self) -> int:
    """Tokens a reflecting policy (ee_sr) may write before its action."""
    return int(self.c.eval.get("reflection_max_new_tokens", 256))

  def evaluate(self, model_dir: str, out: str, reflection_tokens: int = 0,
               generate: bool = True) -> dict[str, Any]:
    """eval.json for one trained model; `generate=False` (a critic under a cached
    evaluation) leaves out the generated next action."""
    params = self.params_of(model_dir)
    if self.c.eval.get("cached"):
      report = cached_eval.evaluate(self.c, params, self.tok, self.ctx.gdef,
                                    self.ctx.model_cfg, self.local("datasets"),
                                    self.local("prefix_cache"))
      if generate and "generate" in evaluation.eval_modes(self.c):  # what it writes, too
        report["splits"].update(evaluation.generated_next_action(
            self.c, self.sampler, params, self.tok, self.local("trajectories"),
            desc=os.path.relpath(out, self.dir)))
    else:
      report = evaluation.evaluate(self.c, self.sampler, params, self.tok, self.pool,
                                   self.local("trajectories"), self.local("datasets"),
                                   int(self._judgment_budget()), reflection_tokens,
                                   desc=os.path.relpath(out, self.dir))
    storage.write_json(os.path.join(out, "eval.json"), report, indent=2)
    return report["splits"]

  def write_results(self, evals: dict[str, dict[int, Any]]) -> dict[str, Any]:
    """results.{json,md}, the plots, and (`pipeline.export`) each variant's model from
    the run's first seed (`pipeline.first_seed`: a seed slice trained no other) in HF
    format under export/; an export already there is kept."""
    order = [v for v in variants(self.c) if v in evals]
    curves = results_lib.read_curves(self.dir)
    doc = results_lib.write(self.dir, evals, order, extra={
        "config": json.loads(self.full_config.to_json_best_effort()),
        "policy_modes": evaluation.eval_modes(self.c),
        "critic_training": results_lib.critic_training(curves)})
    results_lib.draw(self.dir, doc, curves)
    if self.c.pipeline.export:
      from act_jax.hf import save_pretrained
      for v in order:
        src = chain_key(self.c.pipeline.get("first_seed", 0), CHAINS[v])
        dst = self.path("export", v)
        if not storage.exists(os.path.join(dst, "config.json")):
          save_pretrained(dst, self.params_of(self.path(src)), self.ctx.model_cfg,
                          tokenizer_dir=self.local("tokenizer"), overwrite=True)
    print(storage.read_text(self.path("results.md")), flush=True)
    return doc
