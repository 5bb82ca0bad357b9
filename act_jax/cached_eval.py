"""Held-out accuracies of models fine-tuned above one frozen prefix, from its cache.

When every variant of a run trains only the top K layers of the same θ0
(`train.trainable = "top:K"`), the frozen layers' output on a fixed input is the same
for all of them: it is computed once per held-out record (`data.prefix_cache`) and each
variant's evaluation runs its top K layers alone, a fraction of a full forward. Used
when `config.eval.cached` is set; the metrics are those of fixed inputs:

  next_action_accuracy  greedy decoding reproduces the expert's target exactly: every
                        target token (EOS included) is the argmax given the ones
                        before it. Teacher forcing decides, token for token, what
                        greedy generation would emit, so this is generate-mode
                        next-action accuracy for outputs in the expert's tokenisation;
                        a greedy output that differs in tokens but parses to the same
                        action counts as wrong (a lower bound).
  heldout_action_loss   the action loss (nats per target token) on held-out examples.
  judgment_forced_accuracy
                        forced choice for a critic that answers without reasoning:
                        log p("Answer: A" + EOS) against "Answer: B" + EOS, in both A/B
                        orders, the margin averaged (as `evaluation.judgment_accuracy`).

Episode success, rank mode and greedy judgments need the full model on live or
sampled inputs: `act_jax.evaluation`.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from act_jax import stats
from act_jax.data import builders, examples, pipeline as data_pipeline, prefix_cache
from act_jax.data import prompts as prompts_lib
from act_jax.data.steps import prompt_config
from act_jax.envs import splits as splits_lib
from act_jax.evaluation import evenly_spaced
from act_jax.losses import grpo as grpo_loss, supervised
from act_jax.models import ModelConfig, positions_from_mask
from act_jax.trainable import Trainable

BATCH = 16


def _episode(record: dict[str, Any]) -> str:
  return data_pipeline.as_text(record["state_id"]).rsplit("/", 1)[0]


def evaluate(c: ml_collections.ConfigDict, params: Any, tokenizer: Any, gdef: nnx.GraphDef,
             model_cfg: ModelConfig, datasets_dir: str, cache_dir: str) -> dict[str, Any]:
  """eval.json's content, `{"splits": {split: metrics}}`, from the prefix cache."""
  trainable = Trainable.parse(c.eval.cached, model_cfg.num_layers)
  if not trainable.frozen_prefix:
    raise ValueError(f"config.eval.cached={c.eval.cached!r}: a cached evaluation needs a "
                     "frozen prefix ('top:K')")
  train, frozen = trainable.split(params)
  top = trainable.top_model(train, frozen)
  pcfg = prompt_config(c)
  report: dict[str, Any] = {"splits": {}, "method": "cached (act_jax.cached_eval)"}
  for split in splits_lib.env_splits(c):
    if split == "train":
      continue
    d = os.path.join(datasets_dir, split)
    src = builders.load_source(d, "imitation_pairs")
    recs = [src[i] for i in evenly_spaced(len(src), c.eval.heldout_states)]
    entry = next_action(gdef, top, prefix_cache.attach(
        recs, "input_ids", frozen, model_cfg, cache_dir, log=False), recs)
    src = builders.load_source(d, "critic_pairs")
    pairs = [src[i] for i in evenly_spaced(len(src), c.eval.critic_pairs)]
    entry.update(forced_choice(gdef, top, frozen, model_cfg, cache_dir, tokenizer, pcfg,
                               pairs))
    report["splits"][split] = entry
  return report


def _batches(source: Any, mode: str, pad_id: int = 0):
  for i in range(0, len(source), BATCH):
    recs = [source[j] for j in range(i, min(i + BATCH, len(source)))]
    field = "input_ids" if mode == "supervised" else "prompt_ids"
    length = -(-max(len(r[field]) for r in recs) // 32) * 32
    yield data_pipeline.collate(recs, length, pad_id, mode, meta=mode != "supervised")


def next_action(gdef: nnx.GraphDef, top: Any, source: Any,
                records: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Teacher-forced greedy exact match and held-out loss on imitation records."""

  @jax.jit
  def score(top, b):
    model = nnx.merge(gdef, top)
    mask = b["mask"]
    h = model.hidden(b["tokens"], positions_from_mask(mask), mask, x=b["prefix"])
    idx = b["target_index"]
    h = jnp.take_along_axis(h, jnp.maximum(idx - 1, 0)[..., None], axis=1)
    targets = jnp.take_along_axis(b["tokens"], idx, axis=1)
    B, M, D = h.shape
    logits = model.logits(h.reshape(B * M, D)).reshape(B, M, -1)
    hit = (jnp.argmax(logits, axis=-1) == targets) | ~b["target_mask"]
    logp = supervised.target_logprobs(model, h, targets)
    return jnp.all(hit, axis=-1), -jnp.sum(logp * b["target_mask"], axis=-1)

  exact, nll, tokens = [], [], []
  for b in _batches(source, "supervised"):
    keys = ("tokens", "mask", "target_index", "target_mask", "prefix")
    e, n = jax.device_get(score(top, {k: b[k] for k in keys}))
    exact.extend(e.tolist())
    nll.extend(n.tolist())
    tokens.extend(b["target_mask"].sum(axis=1).tolist())
  exact = np.asarray(exact, np.float64)
  episodes = [_episode(r) for r in records]
  return {"next_action_accuracy": float(exact.mean()),
          "next_action_accuracy_ci95": list(stats.cluster_bootstrap_ci(exact, episodes)),
          "next_action_states": len(records), "next_action_episodes": len(set(episodes)),
          "next_action_method": "greedy exact match, teacher-forced (act_jax.cached_eval)",
          "heldout_action_loss": float(np.sum(nll) / max(np.sum(tokens), 1))}


def forced_choice(gdef: nnx.GraphDef, top: Any, frozen: Any, model_cfg: ModelConfig,
                  cache_dir: str, tokenizer: Any, pcfg: prompts_lib.PromptConfig,
                  pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Answer-only forced choice over both A/B orders, from cached (prompt, answer) rows."""
  answers = examples.answer_ids(tokenizer, pcfg)
  letters = list(pcfg.letters)
  rows = [{"prompt_ids": np.asarray(x["prompt_ids"], np.int32),
           "label": data_pipeline.as_text(x["label"])}
          for x in examples.both_orders(pairs, tokenizer, pcfg)]
  suffixes = [answers[l] for l in letters]
  source = prefix_cache.attach(rows, "prompt_ids", frozen, model_cfg, cache_dir,
                               suffixes=suffixes, log=False)
  C = max(len(s) for s in suffixes)
  if not pairs:
    return {"judgment_forced_accuracy": 0.0, "judgment_pairs": 0}
  table = np.zeros((len(suffixes), C), np.int32)
  real = np.zeros((len(suffixes), C), bool)
  for j, s in enumerate(suffixes):
    table[j, :len(s)], real[j, :len(s)] = s, True
  lp = []
  for b in _batches(source, "generation"):
    P = len(b["tokens"])
    tokens = np.concatenate([np.repeat(b["tokens"], len(suffixes), 0), np.tile(table, (P, 1))], 1)
    mask = np.concatenate([np.repeat(b["mask"], len(suffixes), 0), np.tile(real, (P, 1))], 1)
    prefix = b["prefix"].reshape(P * len(suffixes), *b["prefix"].shape[2:])
    lp.append(np.asarray(_answer_logp(gdef, C, top, tokens, mask, prefix,
                                      np.tile(real, (P, 1)))).reshape(P, len(suffixes)))
  lp = np.concatenate(lp).astype(np.float64)
  labels = [r["label"] for r in rows]
  first = np.asarray([l == letters[0] for l in labels])
  margin = np.where(first, lp[:, 0] - lp[:, 1], lp[:, 1] - lp[:, 0])
  score = lambda m: np.where(m > 0, 1.0, np.where(m == 0, 0.5, 0.0))
  by_order = {f"judgment_forced_accuracy_{l}": float(score(margin[first == (l == letters[0])])
                                                     .mean())
              for l in letters[:2]}  # each order alone: a letter preference shows as a gap
  n = len(pairs)
  # each pair's two orders (examples.both_orders), their margins averaged
  forced = score(margin.reshape(n, 2).mean(1))
  episodes = [_episode(r) for r in pairs]
  return {"judgment_forced_accuracy": float(forced.mean()),
          "judgment_forced_accuracy_ci95": list(stats.cluster_bootstrap_ci(forced, episodes)),
          **by_order,
          "first_letter_rate": float(np.mean(1.0 / (1.0 + np.exp(lp[:, 1] - lp[:, 0])))),
          "judgment_pairs": n,
          # each pair's outcome, in `pairs` order, for deltas paired by pair (results.py)
          "judgment_forced_accuracy_per_unit": forced.tolist(),
          "judgment_forced_accuracy_unit_cluster": episodes}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _answer_logp(gdef: nnx.GraphDef, width: int, top: Any, tokens: jax.Array,
                 mask: jax.Array, prefix: jax.Array, real: jax.Array) -> jax.Array:
  """Each (prompt, answer) row's answer log-probability above its cached prefix; at
  module level so repeated evaluations (every `train.eval_every` steps) compile once."""
  logp, _ = grpo_loss.completion_logprobs(nnx.merge(gdef, top), tokens, mask, width,
                                          prefix=prefix)
  return jnp.sum(logp * real, axis=-1)
