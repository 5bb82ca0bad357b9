"""GRPO as a `loop.Stage`: prompts -> G samples each -> rewards -> advantages -> loss batch.

The shared loop calls `prepare` on every data batch; here it generates G completions
per prompt with the current parameters, scores them with a registered reward, turns
the rewards into group advantages and lays everything out at fixed shapes for the
registered `grpo` loss, which the one shared train step (`act_jax.step`) optimises
with `updates_per_batch` (mu) minibatch updates. Stages differ only in data and
reward: ACT's critic stage (`stages.critic`) uses the pairwise-judgment reward, and
stage-3 RL on next-action generation (`stages.action`) is this same class with the
action reward:

  GRPOStage(config, train_source=imitation_records, reward=rewards.make("action"),
            detokenize=tok.decode, name="rl")
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from act_jax import config_lib, loop, models, rewards as rewards_lib, sharding
from act_jax import step as step_lib
from act_jax.data import pipeline
from act_jax.losses import grpo as grpo_loss
from act_jax.sampling import Result, Sampler, SamplingConfig

Params = models.Params
Detokenize = Callable[[Sequence[int]], str]
Reference = Callable[[loop.Context], Params]


def loss_config(g: config_lib.GRPOSection) -> grpo_loss.GRPOConfig:
  """The loss's settings (`g` has already refused truncated sampling)."""
  return grpo_loss.GRPOConfig(eps_low=g.eps_low, eps_high=g.eps_high, beta=g.beta,
                              kl_estimator=g.kl_estimator, aggregation=g.aggregation,
                              temperature=g.temperature, advantage=g.advantage,
                              entropy_coef=g.entropy_coef)


# --- Generation ---------------------------------------------------------------------


def host_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in global order."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  shards = {}
  for s in x.addressable_shards:
    shards.setdefault(s.index[0].start or 0, np.asarray(s.data))
  return np.concatenate([shards[k] for k in sorted(shards)], axis=0)


class Rollout:
  """G samples per prompt from the current parameters, through `sampling.Sampler`.

  Each process passes its own (padded) prompt rows; the sampler runs on the global
  batch and each process keeps the completions of its rows. Processes that feed the
  same batch slots (the tensor axis spans them) pass the same rows as the same
  `block`: those rows are sampled once, so every such process keeps the same
  completions, as the slots they feed together need.
  """

  def __init__(self, ctx: loop.Context, sampling: SamplingConfig, max_new_tokens: int,
               pad_id: int):
    self.sampler = Sampler(ctx.model_cfg, ctx.mesh, pad_id=pad_id)
    self.sampling, self.max_new_tokens = sampling, max_new_tokens

  def __call__(self, params: Params, tokens: np.ndarray, mask: np.ndarray, rng: jax.Array,
               n: int, greedy: bool = False, block: int | None = None) -> Result:
    """`block`: which row block of the global batch these rows are (`batch_shard`'s
    index); default the process index, for rows that are this process's alone."""
    mine = len(tokens)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      block = jax.process_index() if block is None else block
      blocks, tokens, mask = (np.asarray(multihost_utils.process_allgather(x))
                              for x in (np.array(block), tokens, mask))
      ids, first = np.unique(blocks, return_index=True)  # one copy of each block
      tokens, mask = (x[first].reshape(-1, x.shape[-1]) for x in (tokens, mask))
      block = int(np.searchsorted(ids, block))
    sampling = dataclasses.replace(self.sampling, temperature=0.0) if greedy else self.sampling
    out = self.sampler.generate(params, [row[m].tolist() for row, m in zip(tokens, mask)],
                                sampling=sampling, max_new_tokens=self.max_new_tokens, n=n,
                                seed=rng)
    if jax.process_count() > 1:
      rows = slice(block * mine * n, (block + 1) * mine * n)
      out = dataclasses.replace(
          out, tokens=out.tokens[rows], logprobs=out.logprobs[rows],
          model_logprobs=out.model_logprobs[rows], lengths=out.lengths[rows],
          finish_reasons=out.finish_reasons[rows])
    return out


# --- The loss batch -------------------------------------------------------------------


def build_loss_batch(prompt_tokens: np.ndarray, prompt_mask: np.ndarray,
                     comp: Result, advantages: np.ndarray, keep: np.ndarray
                     ) -> dict[str, np.ndarray]:
  """The `grpo` loss's inputs at fixed shapes [N, P + C] / [N, C] / [N].

  Rows as `completion_rows` lays them out; rows with keep=False (filtered groups)
  keep their tokens but no loss weight.
  """
  tokens, mask, real = completion_rows(prompt_tokens, prompt_mask, comp.tokens, comp.lengths)
  return {"tokens": tokens, "mask": mask,
          "completion_mask": real & np.asarray(keep, bool)[:, None],
          "old_logps": np.where(real, comp.logprobs, 0.0).astype(np.float32),
          "advantages": np.asarray(advantages, np.float32)}


def completion_rows(prompt_tokens: np.ndarray, prompt_mask: np.ndarray,
                    completions: np.ndarray, lengths: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """[N, P + C] tokens and mask, [N, C] real completion tokens, for N = n x prompts.

  Each prompt (left-padded) is repeated for its n completions (rows i*n .. i*n+n-1)
  and followed by its completion (right-padded), so token positions match what the
  sampler saw.
  """
  n = completions.shape[0] // prompt_tokens.shape[0]
  real = np.arange(completions.shape[1])[None, :] < np.asarray(lengths)[:, None]
  tokens = np.concatenate([np.repeat(prompt_tokens, n, axis=0), completions], axis=1)
  mask = np.concatenate([np.repeat(prompt_mask.astype(bool), n, axis=0), real], axis=1)
  return tokens.astype(np.int32), mask, real


def candidate_batch(prompt_tokens: np.ndarray, prompt_mask: np.ndarray,
                    candidates: Sequence[Sequence[Sequence[int]]], rewards: np.ndarray,
                    correct: np.ndarray, malformed_reward: float, pad_id: int,
                    width: int | None = None) -> dict[str, np.ndarray]:
  """The `expected_reward` loss's batch: prompt i followed by each of its candidates.

  `candidates[i][j]`: the token ids of prompt i's j-th paid completion (EOS included);
  `rewards`, `correct`: [P, S] per candidate, S >= every prompt's count (the rest is
  padding, `answer_valid` False); `width`: the completion width C (default the longest).
  Rows are laid out by `completion_rows` (prompt i, candidate j at row i*S + j), then
  grouped [P, S, ...] by prompt.
  """
  P, S = rewards.shape
  C = width or max(len(a) for cands in candidates for a in cands)
  table = np.full((P * S, C), pad_id, np.int32)
  lengths = np.zeros(P * S, np.int64)
  valid = np.zeros((P, S), bool)
  for i, cands in enumerate(candidates):
    for j, ids in enumerate(cands):
      table[i * S + j, :len(ids)] = ids
      lengths[i * S + j] = len(ids)
      valid[i, j] = True
  tokens, mask, real = completion_rows(prompt_tokens, prompt_mask, table, lengths)
  return {"tokens": tokens.reshape(P, S, -1), "mask": mask.reshape(P, S, -1),
          "completion_mask": real.reshape(P, S, C), "answer_valid": valid,
          "answer_correct": np.asarray(correct, bool) & valid,
          "answer_reward": np.where(valid, rewards, 0.0).astype(np.float32),
          "malformed_reward": np.full(P, malformed_reward, np.float32)}


def packed_candidate_batch(prompt_tokens: np.ndarray, prompt_mask: np.ndarray,
                           candidates: Sequence[Sequence[Sequence[int]]], rewards: np.ndarray,
                           correct: np.ndarray, malformed_reward: float, pad_id: int,
                           width: int) -> dict[str, np.ndarray]:
  """`candidate_batch`'s content with each prompt computed once: one row per prompt,
  the prompt (left-padded, Tp) then its S candidates, `width` (C) tokens each.

  A candidate sees the prompt and itself only (`attention` [P, L, L], L = Tp + S*C)
  and sits at the positions right after the prompt, so its log-prob equals that of
  the prompt followed by it alone; `answer_index` [P, S, C] is the position whose
  logits predict each candidate token (the prompt's last one for its first token).
  For many short candidates after a long prompt (a state's admissible actions) this
  is several times fewer tokens than a row per candidate.
  """
  P, S = rewards.shape
  Tp, C = prompt_tokens.shape[1], width
  L = Tp + S * C
  tokens = np.full((P, L), pad_id, np.int32)
  tokens[:, :Tp] = prompt_tokens
  real = np.zeros((P, L), bool)
  real[:, :Tp] = prompt_mask
  block = np.zeros(L, np.int32)  # 0: the prompt, k + 1: candidate k
  block[Tp:] = 1 + np.arange(S * C) // C
  offset = np.tile(np.arange(C), S)  # a candidate token's place in its candidate
  positions = np.zeros((P, L), np.int32)
  n = prompt_mask.sum(axis=1)
  positions[:, :Tp] = np.maximum(np.cumsum(prompt_mask, axis=1) - 1, 0)
  positions[:, Tp:] = n[:, None] + offset[None]
  answer_tokens = np.full((P, S, C), pad_id, np.int32)
  in_answer = np.zeros((P, S, C), bool)
  valid = np.zeros((P, S), bool)
  for i, cands in enumerate(candidates):
    for k, ids in enumerate(cands):
      answer_tokens[i, k, :len(ids)] = ids
      in_answer[i, k, :len(ids)] = True
      valid[i, k] = True
  real[:, Tp:] = in_answer.reshape(P, S * C)
  tokens[:, Tp:] = answer_tokens.reshape(P, S * C)
  causal = np.tril(np.ones((L, L), bool))
  same = (block[None, :] == 0) | (block[None, :] == block[:, None])
  attention = causal[None] & same[None] & real[:, None, :]
  index = np.where(offset == 0, Tp - 1, Tp + np.arange(S * C) - 1).reshape(S, C)
  return {"tokens": tokens, "positions": positions, "attention": attention,
          "answer_tokens": answer_tokens,
          "answer_index": np.broadcast_to(index, (P, S, C)).astype(np.int32),
          "completion_mask": in_answer,
          "answer_valid": valid, "answer_correct": np.asarray(correct, bool) & valid,
          "answer_reward": np.where(valid, rewards, 0.0).astype(np.float32),
          "malformed_reward": np.full(P, malformed_reward, np.float32)}


def group_advantages(rewards: np.ndarray, group_size: int, estimator: str,
                     filter_zero_variance: bool) -> tuple[np.ndarray, np.ndarray, int]:
  """[N] rewards -> ([N] advantages, [N] keep, number of zero-variance groups)."""
  table = np.asarray(rewards, np.float32).reshape(-1, group_size)
  adv = grpo_loss.get_advantage(estimator)(table).reshape(-1)
  zero = grpo_loss.zero_variance_groups(table)
  keep = np.repeat(~zero, group_size) if filter_zero_variance else np.ones(adv.shape, bool)
  return adv, keep, int(zero.sum())


# --- The stage ------------------------------------------------------------------------


def reference_fn(gdef: nnx.GraphDef, num_completion: int, temperature: float,
                 accum_steps: int = 1) -> Callable[[Params, jax.Array, jax.Array], jax.Array]:
  """(params, tokens, mask) -> the completions' log-probs [N, C] under params, in
  `accum_steps` microbatches split as the train step splits its batch
  (`step.microbatches`), so the reference pass holds no more activations than the
  update it feeds."""
  def logps(p, t, m):
    return grpo_loss.completion_logprobs(nnx.merge(gdef, p), t, m, num_completion,
                                         temperature)[0]

  if accum_steps == 1:
    return logps

  def accumulated(p, t, m):
    out = jax.lax.map(lambda tm: logps(p, *tm), step_lib.microbatches((t, m), accum_steps))
    return out.swapaxes(0, 1).reshape(-1, num_completion)  # rows back in their order
  return accumulated


class GRPOStage(loop.Stage):
  """GRPO on prompts from `train_source`, scored by `reward`.

  Args:
    config: the experiment config (sections `train`, `grpo`, `seed`); `grpo` is checked
      as a `config_lib.GRPOSection`.
    train_source: random-access prompt records (`prompt_ids` + the reward's fields),
      e.g. the critic or imitation records of `act_jax.data`.
    reward: `(texts, meta) -> rewards.Scores`, e.g. `rewards.make("judgment")`.
    detokenize: completion token ids (without padding) -> text.
    eval_source: held-out records; `evaluate` decodes them greedily.
    reference: the frozen KL reference, as params or `ctx -> params` (loaded only
      when beta > 0); default: the parameters of step 0 (an error on resume).
    name: the stage's name in logs and checkpoints.
  """
  name = "grpo"
  loss = "grpo"
  enumerable = False  # whether `config.grpo.estimator` may be "expected"
  keep_together = 1  # consecutive records that share a batch (`pipeline.make_batches`)

  def __init__(self, config: ml_collections.ConfigDict, *, train_source: Any,
               reward: rewards_lib.RewardFn, detokenize: Detokenize,
               eval_source: Any = None, reference: Params | Reference | None = None,
               name: str | None = None):
    self.config = config
    self.g = config_lib.GRPOSection.from_config(config.grpo, "config.grpo")
    config_lib.check_estimator(self.g, self.enumerable, "config.grpo")
    self.name = name or self.name
    self.loss_cfg = loss_config(self.g)
    self.updates_per_batch = self.g.updates_per_batch
    self.train_source, self.eval_source = train_source, eval_source
    self.reward, self.detokenize = reward, detokenize
    self._reference = reference
    self._ref_params = None
    self._ref_fn = None
    self._rollout: Rollout | None = None

  # -- data --
  def batches(self, shard_index: int, shard_count: int) -> loop.Batches:
    return pipeline.make_batches(
        self.train_source, batch_size=self.config.train.batch_size // shard_count,
        seed=self.config.seed, pad_id=self._pad_id(None), mode="generation",
        shard_index=shard_index, shard_count=shard_count, meta=True,
        group_by_length=self.config.data.get("group_by_length", 0),
        keep_together=self.keep_together)

  def _pad_id(self, ctx: loop.Context | None) -> int:
    if self.g.pad_id is not None:
      return self.g.pad_id
    pad = ctx.model_cfg.pad_token_id if ctx is not None else None
    if pad is None:  # the model config, before a context exists
      pad = config_lib.model_config(self.config).pad_token_id
    return int(pad or 0)

  def rollout(self, ctx: loop.Context) -> Rollout:
    if self._rollout is None:
      g = self.g
      sampling = SamplingConfig(temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
                                eos_ids=g.eos_ids)
      self._rollout = Rollout(ctx, sampling, g.max_new_tokens, self._pad_id(ctx))
    return self._rollout

  # -- generation, scoring, loss batch --
  def prepare(self, ctx: loop.Context, state: dict[str, Any], batch: dict[str, Any]
              ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    G = self.g.group_size
    t0 = time.perf_counter()
    step = int(jax.device_get(state["step"]))
    rng = jax.random.fold_in(jax.random.key(self.config.seed), step)
    comp = self.rollout(ctx)(state["params"], batch["tokens"], batch["mask"], rng, n=G,
                             block=sharding.batch_shard(ctx.mesh)[0])
    t_gen = time.perf_counter() - t0
    texts = self._texts(comp)
    meta = {k: [v for v in vals for _ in range(G)] for k, vals in batch["meta"].items()}
    scores = self.reward(texts, meta)
    adv, keep, n_zero = group_advantages(scores.reward, G, self.g.advantage,
                                         self.g.filter_zero_variance)
    out = build_loss_batch(batch["tokens"], batch["mask"], comp, adv, keep)
    t_ref = 0.0
    if self.loss_cfg.beta > 0:
      t1 = time.perf_counter()
      out["ref_logps"] = self.reference_logps(ctx, state, out)
      t_ref = time.perf_counter() - t1
    n_groups = len(scores.reward) // G
    metrics = {
        **rewards_lib.summarize(scores),
        "reward_std": float(np.std(scores.reward)),
        "response_len": float(np.mean(comp.lengths)),
        "truncated_frac": float(np.mean([f == "length" for f in comp.finish_reasons])),
        "zero_var_group_frac": n_zero / max(n_groups, 1),
        "advantage_abs": float(np.mean(np.abs(adv[keep]))) if keep.any() else 0.0,
        "gen_s": t_gen, "ref_s": t_ref,
        "gen_tokens_per_s": float(np.sum(comp.lengths)) / max(t_gen, 1e-9),
    }
    return out, metrics

  def _texts(self, comp: Result) -> list[str]:
    return [self.detokenize(row[:n].tolist()) for row, n in zip(comp.tokens, comp.lengths)]

  def reference_logps(self, ctx: loop.Context, state: dict[str, Any],
                      batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per-token log-probs of the completions under the frozen reference model."""
    if self._ref_params is None:
      self._ref_params = self._load_reference(ctx, state)
      self._ref_fn = jax.jit(sharding.with_mesh(  # rows split, as in the train step
          reference_fn(ctx.gdef, batch["completion_mask"].shape[1],
                       self.loss_cfg.temperature, self.config.train.accum_steps), ctx.mesh))
    dev = sharding.shard_batch({"tokens": batch["tokens"], "mask": batch["mask"]}, ctx.mesh)
    return host_rows(self._ref_fn(self._ref_params, dev["tokens"], dev["mask"]))

  def _load_reference(self, ctx: loop.Context, state: dict[str, Any]) -> Params:
    ref = self._reference
    if callable(ref):
      ref = ref(ctx)
    if ref is not None:
      return ref
    if int(jax.device_get(state["step"])) != 0:
      raise ValueError(
          f"{self.name}: grpo.beta={self.loss_cfg.beta} needs the reference (initial) "
          "model, but the run resumed past step 0; pass GRPOStage(reference=...)")
    # The step donates the state, so the reference must be a copy, not an alias.
    copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=ctx.param_shardings)
    return copy(state["params"])

  # -- evaluation --
  def evaluate(self, ctx: loop.Context, params: Params) -> dict[str, float]:
    """Greedy decoding on the held-out prompts: reward, accuracy, format errors."""
    if self.eval_source is None:
      return {}
    rollout = self.rollout(ctx)
    sums = np.zeros(5)  # reward, correct, malformed, length, count
    for batch in self.eval_batches():
      comp = rollout(rollout.sampler.prepare(params), batch["tokens"], batch["mask"],
                     jax.random.key(0), n=1, greedy=True)
      s = self.reward(self._texts(comp), batch["meta"])
      sums += [s.reward.sum(), s.correct.sum(), s.malformed.sum(), comp.lengths.sum(),
               len(s.reward)]
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      sums = np.asarray(multihost_utils.process_allgather(sums)).sum(axis=0)
    n = max(sums[4], 1.0)
    return {"eval_reward": sums[0] / n, "eval_accuracy": sums[1] / n,
            "eval_format_error_rate": sums[2] / n, "eval_response_len": sums[3] / n}

  def eval_batches(self) -> Iterable[dict[str, Any]]:
    count = jax.process_count()
    if self.g.eval_batch_size % count:
      raise ValueError(f"{self.name}: config.grpo.eval_batch_size={self.g.eval_batch_size} "
                       f"is not divisible by the {count} processes")
    return pipeline.make_batches(
        self.eval_source, batch_size=self.g.eval_batch_size // count,
        seed=self.config.seed, pad_id=self._pad_id(None), mode="generation",
        shard_index=jax.process_index(), shard_count=count, num_epochs=1, meta=True)
