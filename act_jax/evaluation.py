"""Evaluation of one model: the pipeline's `s<seed>/eval_<variant>` steps.

  success        episodes of every held-out split (ID / OOD), the model as the policy in
                 each `config.eval.modes` mode (`act_jax.policy`)
  next action    the policy's action on held-out expert states against the expert's
  judgment       the model as a critic on held-out pairs: greedy, as the ACT stage's
                 reward sees it (its token budget, its parser), and by forced choice
                 (which answer string is likelier, over both A/B orders)
"""
from __future__ import annotations

import collections
import logging
import os
import re
from typing import Any, Callable, Iterable, Sequence

import ml_collections
import numpy as np

from act_jax import console, rewards, stats
from act_jax.data import builders, examples, prompts as prompts_lib
from act_jax.data.pipeline import as_text
from act_jax.data.steps import prompt_config
from act_jax.data.trajectory import read_jsonl
from act_jax.envs import rollout, splits as splits_lib
from act_jax.envs.pool import EnvPool
from act_jax.policy import GREEDY, MODES, ModelPolicy
from act_jax.sampling import Sampler

log = logging.getLogger(__name__)


def eval_modes(c: ml_collections.ConfigDict) -> list[str]:
  """The policy modes to evaluate; ScienceWorld gets `generate` only.

  ScienceWorld's admissible lists often miss the gold surface form, so held-out states
  carry the expert action appended to them (`rollout.expert_states`): ranking that list
  can pick the expert action because it is the only candidate written that way.
  """
  modes = list(c.eval.modes)
  unknown = sorted(set(modes) - set(MODES))
  if unknown:
    raise ValueError(f"config.eval.modes: unknown {unknown}; known: {MODES}")
  ranked = [m for m in modes if m != "generate"]
  if c.env.name == "scienceworld" and ranked:
    raise ValueError(
        f"config.eval.modes: {ranked} not allowed on ScienceWorld: ranking picks from the "
        "admissible list, to which the expert action is appended because the env's lists "
        "often miss its surface form, so it favours the expert action; use ['generate']")
  return modes


def judgment_config(c: ml_collections.ConfigDict) -> rewards.JudgmentConfig:
  """The critic reward's settings: evaluation parses judgments exactly as it does."""
  fields = c.reward.to_dict()
  return rewards.make_config(fields.pop("name"), **fields)


# Tokens allowed beyond the longest expert action target when the budget is derived.
ACTION_MARGIN = 8


def action_budget(c: ml_collections.ConfigDict, trajectories: Iterable[Any], tokenizer: Any,
                  pcfg: prompts_lib.PromptConfig) -> int:
  """Tokens a generated action may take: `config.eval.action_max_new_tokens`, or when
  unset the longest expert action target (with EOS) in the data plus `ACTION_MARGIN`.

  A budget shorter than an expert action would cut correct answers short, so it is
  refused; actions that still reach the budget are counted in eval.json.
  """
  targets = sorted({prompts_lib.action_target(s.action, pcfg)
                    for t in trajectories for s in t.steps})
  lengths = tokenizer(targets, add_special_tokens=False)["input_ids"] if targets else []
  longest, action = max(((len(ids) + 1, a) for ids, a in zip(lengths, targets)),
                        default=(1, ""))
  budget = c.eval.get("action_max_new_tokens")
  if budget is None:
    return longest + ACTION_MARGIN
  if budget < longest:
    raise ValueError(
        f"config.eval.action_max_new_tokens={budget} is shorter than the longest expert "
        f"action target in the data ({longest} tokens with EOS: {action!r}); raise it or "
        "leave it unset to derive it from the data")
  return int(budget)


def generation_counts(counts: Iterable[collections.Counter]) -> dict[str, Any]:
  """eval.json's generate-mode fields from `ModelPolicy.take_counts()` entries."""
  c = sum(counts, collections.Counter())
  n = max(c["generated"], 1)
  return {"unparsed_action_rate": c["unparsed"] / n, "truncated_actions": c["truncated"],
          "truncated_action_rate": c["truncated"] / n, "generated_actions": c["generated"]}


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


def evaluate(c: ml_collections.ConfigDict, sampler: Sampler, params: Any, tokenizer: Any,
             pool: EnvPool, traj_dir: str, datasets_dir: str,
             judgment_max_new_tokens: int, reflection_tokens: int = 0,
             desc: str = "eval") -> dict[str, Any]:
  """eval.json's content, `{"splits": {split: metrics}}`, for the model `params`.

  Metrics of a mode other than the first are filed under `split[mode]`; judgments go to
  the split's own entry, `judgment_max_new_tokens` long (the critic stage's budget).
  reflection_tokens: a policy that reflects before it acts writes up to this many more
  (`policy.ModelPolicy`). Progress (`desc`) counts episodes, states and pairs done.
  """
  pcfg = prompt_config(c)
  report: dict[str, Any] = {"splits": {}}
  splits = splits_lib.env_splits(c)
  eval_specs = splits_lib.eval_episodes(splits, c.eval.episodes_per_game)
  modes = eval_modes(c)
  trajs, instruction, budget = heldout_trajectories(c, tokenizer, traj_dir)
  pairs = {split: critic_pairs(os.path.join(datasets_dir, split), c.eval.critic_pairs)
           for split in splits if split != "train"}
  n_states = {split: min(len(rollout.expert_states(t)), c.eval.heldout_states)
              for split, t in trajs.items()}
  total = (len(modes) * sum(len(s) + n_states[k] for k, s in eval_specs.items())
           + sum(len(r) for r in pairs.values() if r is not None))
  with console.Progress(total, desc) as bar:
    for mode in modes:
      pol = ModelPolicy(sampler, params, tokenizer, pcfg, mode=mode,
                        max_state_tokens=c.data.max_state_tokens, instruction=instruction,
                        reflection_tokens=reflection_tokens, max_new_tokens=budget)
      bar.update_to(bar.n, {"doing": f"{mode} episodes"})
      res = rollout.evaluate(pol, pool, eval_specs, c.env.max_steps, keep_episodes=True,
                             progress=bar.update)
      episode_counts = pol.take_counts()
      for split, r in res.items():
        key = split if mode == modes[0] else f"{split}[{mode}]"
        entry = report["splits"].setdefault(key, {})
        entry.update(success_rate=r["success_rate"], success_rate_ci95=r["success_ci95"],
                     invalid_action_rate=r["invalid_action_rate"], avg_steps=r["avg_steps"],
                     policy_mode=mode,
                     success_rate_per_unit=[int(e["success"]) for e in r["per_episode"]],
                     success_rate_unit_cluster=list(range(len(r["per_episode"]))))
        bar.update_to(bar.n, {"doing": f"{key} states"})
        entry.update(next_action_entry(rollout.next_action_accuracy(
            pol, trajs[split], max_states=c.eval.heldout_states, progress=bar.update)))
        if mode == "generate":  # this split's episodes and its held-out states
          keys = {spec.key for spec in eval_specs[split]}
          counts = [n for k, n in episode_counts.items() if k in keys]
          entry.update(generation_counts(counts + list(pol.take_counts().values())),
                       action_max_new_tokens=budget)
    judgment = judgment_config(c)
    for split, recs in pairs.items():
      if recs is None:
        continue
      bar.update_to(bar.n, {"doing": f"{split} pairs"})
      j = judgment_accuracy(sampler, params, tokenizer, pcfg, recs, judgment,
                            max_new_tokens=judgment_max_new_tokens, progress=bar.update)
      report["splits"].setdefault(split, {}).update(
          {k: v for k, v in j.items() if k.startswith("judgment_") or k == "first_letter_rate"},
          judgment_pairs=j["pairs"], judgment_max_new_tokens=j["max_new_tokens"])
  return report


def heldout_trajectories(c: ml_collections.ConfigDict, tokenizer: Any, traj_dir: str
                         ) -> tuple[dict[str, list[Any]], str, int]:
  """Each held-out split's expert trajectories, the training instruction and the action
  token budget: what a policy's evaluation reads from the trajectories step."""
  train = list(read_jsonl(os.path.join(traj_dir, "train.jsonl")))
  trajs = {split: list(read_jsonl(os.path.join(traj_dir, f"{split}.jsonl")))
           for split in splits_lib.env_splits(c) if split != "train"}
  budget = action_budget(c, train + [t for ts in trajs.values() for t in ts], tokenizer,
                         prompt_config(c))
  return trajs, training_instruction(train), budget


def next_action_entry(na: dict[str, Any]) -> dict[str, Any]:
  """eval.json's next-action fields from `rollout.next_action_accuracy`."""
  return dict(next_action_accuracy=na["accuracy"], next_action_accuracy_ci95=na["accuracy_ci95"],
              next_action_states=na["states"], next_action_episodes=na["episodes"],
              next_action_accuracy_per_unit=na["per_state"],
              next_action_accuracy_unit_cluster=na["per_state_episode"])


def generated_next_action(c: ml_collections.ConfigDict, sampler: Sampler, params: Any,
                          tokenizer: Any, traj_dir: str, desc: str = "eval"
                          ) -> dict[str, dict[str, Any]]:
  """`{"<split>[generate]": metrics}`: next-action accuracy of the policy's greedy
  generation (the sampler) on up to `eval.heldout_states` held-out expert states per
  split, with its parse and truncation counts. What a cached evaluation
  (`act_jax.cached_eval`), which scores the expert's tokens by teacher forcing, adds
  when `eval.modes` holds "generate": the action the model actually writes."""
  trajs, instruction, budget = heldout_trajectories(c, tokenizer, traj_dir)
  pol = ModelPolicy(sampler, params, tokenizer, prompt_config(c), mode="generate",
                    max_state_tokens=c.data.max_state_tokens, instruction=instruction,
                    max_new_tokens=budget)
  total = sum(min(len(rollout.expert_states(t)), c.eval.heldout_states) for t in trajs.values())
  out = {}
  with console.Progress(total, desc) as bar:
    for split, t in trajs.items():
      bar.update_to(bar.n, {"doing": f"{split} states (generate)"})
      entry = next_action_entry(rollout.next_action_accuracy(
          pol, t, max_states=c.eval.heldout_states, progress=bar.update))
      entry.update(generation_counts(pol.take_counts().values()), policy_mode="generate",
                   action_max_new_tokens=budget)
      out[f"{split}[generate]"] = entry
  return out


def critic_pairs(split_dir: str, k: int) -> list[dict[str, Any]] | None:
  """At most k of a split's critic pairs, evenly spaced; None when it has none (e.g. a
  split without admissible lists)."""
  try:
    src = builders.load_source(split_dir, "critic_pairs")
  except Exception:  # pylint: disable=broad-except
    return None
  return [src[i] for i in evenly_spaced(len(src), k)]


# --- The model as a critic --------------------------------------------------------------


def evenly_spaced(n: int, k: int) -> list[int]:
  """At most k indices spread evenly over range(n), first and last included."""
  if n <= k:
    return list(range(n))
  return sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist()))


def reasoning_prefix(completion: str, judgment: rewards.JudgmentConfig) -> str:
  """What a completion says before its answer: the reasoning forced choice conditions on.

  The text before the last answer line if there is one; else the reasoning block,
  closed with `</think>` and a newline where the token budget cut it off; else nothing
  (the answer comes straight after the prompt, as for a model trained to answer
  without reasoning).
  """
  matches = list(re.finditer(judgment.answer_pattern, completion))
  if matches:
    return completion[:matches[-1].start()]
  start, end = judgment.reasoning_start, judgment.reasoning_end
  if end and end in completion:
    return completion[:completion.rindex(end) + len(end)] + "\n"
  if start and start in completion:
    return completion.rstrip() + end + "\n"
  return ""


def judgment_accuracy(sampler: Sampler, params: Any, tokenizer: Any,
                      prompt_cfg: prompts_lib.PromptConfig, records: Sequence[dict[str, Any]],
                      judgment: rewards.JudgmentConfig, max_new_tokens: int,
                      batch_size: int = 64, progress: Callable[[int], None] | None = None
                      ) -> dict[str, Any]:
  """The critic on held-out pairs, greedy and by forced choice.

  Greedy: one completion per pair and A/B order, `max_new_tokens` long (the critic
  stage's budget), scored by the stage's own reward function, so a critic that reasons
  is judged as training judged it; a pair scores the mean of its two orders, so a
  letter preference earns exactly half. Forced choice: for each A/B order, the
  greedy reasoning (if any) is kept and log p of each answer string ("Answer: A" +
  EOS) compared after it; a pair counts as right when the expert's answer wins on
  the margin averaged over both orders (a tie counts half), which cancels a letter bias.
  Intervals: bootstrap over episodes (pairs of one episode share its states). Each
  pair's outcomes are kept (`*_per_unit`, in record order, with their episodes) for
  paired deltas against θ0.
  `progress(n)` as n pairs are judged greedily.
  """
  answers = examples.answer_ids(tokenizer, prompt_cfg)
  # Two orders per pair: as stored, and with the candidates swapped (label swapped too).
  rows = [(np.asarray(x["prompt_ids"]).tolist(), as_text(x["label"]))
          for x in examples.both_orders(records, tokenizer, prompt_cfg)]
  texts: list[str] = []
  for i in range(0, len(rows), batch_size):
    res = sampler.generate(sampler.prepare(params), [p for p, _ in rows[i:i + batch_size]],
                           sampling=GREEDY, max_new_tokens=max_new_tokens)
    seqs = res.sequences()
    texts.extend(tokenizer.decode(seq, skip_special_tokens=True) for seq in seqs)
    if progress is not None:
      progress(len(seqs) // 2)  # two rows per pair; batch_size is even
  labels = [l for _, l in rows]
  scores = rewards.judgment_reward(texts, {judgment.label_key: labels}, judgment)
  prompts, conts = [], []
  for (p, _), text in zip(rows, texts):
    prefix = reasoning_prefix(text, judgment)
    ids = p + (tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else [])
    for letter in prompt_cfg.letters:
      prompts.append(ids)
      conts.append(answers[letter])
  # Scored in chunks like the generation above: one batch of 4 x pairs rows would not
  # fit a large model's device memory.
  lp = np.asarray([x for i in range(0, len(prompts), batch_size)
                   for x in sampler.score_sums(params, prompts[i:i + batch_size],
                                               conts[i:i + batch_size])], np.float64)
  lp = lp.reshape(len(rows), len(prompt_cfg.letters))
  first = np.asarray([l == prompt_cfg.letters[0] for l in labels])
  margin = np.where(first, lp[:, 0] - lp[:, 1], lp[:, 1] - lp[:, 0]).reshape(-1, 2).mean(1)
  forced = np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))
  episodes = [as_text(r["state_id"]).rsplit("/", 1)[0] for r in records]
  # Greedy, per pair: the mean over its two orders (a constant letter scores 0.5).
  greedy = scores.correct.astype(np.float64).reshape(-1, 2).mean(1)
  said_first = np.where(scores.correct, first, ~first) & ~scores.malformed
  n = len(records)
  return {"pairs": n, "episodes": len(set(episodes)),
          "judgment_accuracy": float(greedy.mean()) if n else 0.0,
          "judgment_accuracy_ci95": list(stats.cluster_bootstrap_ci(greedy, episodes)),
          "judgment_format_error_rate": float(scores.malformed.mean()) if n else 0.0,
          # The letter bias over both orders (0.5: none): p(first letter | a letter) by
          # the answers' scores, and the share of greedy answers naming the first.
          "first_letter_rate": float(np.mean(1.0 / (1.0 + np.exp(lp[:, 1] - lp[:, 0]))))
          if n else 0.0,
          "judgment_greedy_first_letter_rate": float(said_first.sum()
                                                     / max((~scores.malformed).sum(), 1)),
          "judgment_forced_accuracy": float(forced.mean()) if n else 0.0,
          # Per pair, in a fixed order, for deltas paired by pair (`results`).
          "judgment_accuracy_per_unit": greedy.tolist(),
          "judgment_forced_accuracy_per_unit": forced.tolist(),
          "judgment_accuracy_unit_cluster": episodes,
          "judgment_forced_accuracy_unit_cluster": episodes,
          "judgment_forced_accuracy_ci95": list(stats.cluster_bootstrap_ci(forced, episodes)),
          "max_new_tokens": int(max_new_tokens)}
