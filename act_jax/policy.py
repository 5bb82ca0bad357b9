"""A model as an environment policy and as a critic, for evaluation.

The policy renders each live episode's state exactly as the training data does
(`act_jax.data.states`, same prompt templates and token budget), then either
generates `Action: ...` greedily ("generate") or ranks the admissible actions by the
likelihood of their training target: summed log-prob ("rank") or log-prob per target
token ("rank_mean"; the sum favours short actions). Every call is batched across
episodes.

`judgment_accuracy` scores the model as a critic on held-out pairs, both as the ACT
stage's reward sees it (greedy, the stage's token budget, the reward's parser) and by
forced choice (which answer string is likelier, over both A/B orders).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from act_jax import parsing, rewards, stats
from act_jax.data import prompts as prompts_lib
from act_jax.data.states import trajectory_states
from act_jax.envs.rollout import PolicyInput
from act_jax.sampling import SamplingConfig, Sampler

MODES = ("generate", "rank", "rank_mean")
_GREEDY = SamplingConfig(temperature=0.0)


class ModelPolicy:
  """`policy(inputs) -> actions` backed by a model's parameters."""

  def __init__(self, sampler: Sampler, params: Any, tokenizer: Any,
               prompt_cfg: prompts_lib.PromptConfig, *, mode: str = "rank",
               max_state_tokens: int | None = None, max_new_tokens: int = 24,
               instruction: str = "", batch_size: int = 64):
    if mode not in MODES:
      raise ValueError(f"config.eval.modes: unknown policy mode {mode!r}; expected {MODES}")
    self.sampler, self.params, self.tok, self.cfg = sampler, params, tokenizer, prompt_cfg
    self.mode, self.max_state_tokens = mode, max_state_tokens
    self.max_new_tokens, self.instruction, self.batch_size = max_new_tokens, instruction, batch_size
    self._eos = int(tokenizer.convert_tokens_to_ids(prompt_cfg.eos_token or tokenizer.eos_token))
    self.generated = self.unparsed = 0

  def state_text(self, x: PolicyInput) -> str:
    """The state as training rendered it; `instruction` stands in where x has none."""
    traj = x.to_trajectory(self.instruction)
    traj.steps[-1].action = "?"  # the current step's action is what we are choosing
    states = trajectory_states(traj, "policy", self.tok, self.cfg, self.max_state_tokens)
    return states[-1].text

  def prompt_ids(self, inputs: Sequence[PolicyInput]) -> list[list[int]]:
    texts = [prompts_lib.action_prompt(self.tok, self.state_text(x), self.cfg) for x in inputs]
    return self.tok(texts, add_special_tokens=False)["input_ids"]

  def __call__(self, inputs: Sequence[PolicyInput]) -> list[str]:
    out: list[str] = []
    for i in range(0, len(inputs), self.batch_size):
      chunk = inputs[i:i + self.batch_size]
      ids = self.prompt_ids(chunk)
      out.extend(self._generate(ids) if self.mode == "generate" else self._rank(chunk, ids))
    return out

  def _generate(self, ids: list[list[int]]) -> list[str]:
    res = self.sampler.generate(self.params, ids, sampling=_GREEDY,
                                max_new_tokens=self.max_new_tokens)
    actions = []
    for seq in res.sequences():
      text = self.tok.decode(seq, skip_special_tokens=True)
      action = parsing.parse_action(text, self.cfg.action_pattern)
      self.generated += 1
      if action is None:
        self.unparsed += 1
        action = text.strip()
      actions.append(action)
    return actions

  def _rank(self, inputs: Sequence[PolicyInput], ids: list[list[int]]) -> list[str]:
    prompts, conts, owner = [], [], []
    for j, (x, p) in enumerate(zip(inputs, ids)):
      for a in x.admissible:
        target = self.tok(prompts_lib.action_target(a, self.cfg),
                          add_special_tokens=False)["input_ids"]
        prompts.append(p)
        conts.append(list(target) + [self._eos])
        owner.append(j)
    per_token = self.sampler.score(self.params, prompts, conts) if prompts else []
    reduce = np.mean if self.mode == "rank_mean" else np.sum
    scores = [float(reduce(x)) for x in per_token]
    best: dict[int, tuple[float, str]] = {}
    k = 0
    for j, x in enumerate(inputs):
      for a in x.admissible:
        if j not in best or scores[k] > best[j][0]:
          best[j] = (float(scores[k]), a)
        k += 1
    return [best[j][1] if j in best else "look around" for j in range(len(inputs))]


def _text(v: Any) -> str:
  return v.decode() if isinstance(v, bytes) else str(v)


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
                      batch_size: int = 64) -> dict[str, Any]:
  """The critic on held-out pairs, greedy and by forced choice.

  Greedy: one completion per pair in its dataset order, `max_new_tokens` long (the
  critic stage's budget), scored by the stage's own reward function, so a critic that
  reasons is judged as training judged it. Forced choice: for each A/B order, the
  greedy reasoning (if any) is kept and log p of each answer string ("Answer: A" +
  EOS) compared after it; a pair counts as right when the expert's answer wins on
  the margin averaged over both orders (a tie counts half), which cancels a letter bias.
  Intervals: bootstrap over episodes (pairs of one episode share its states).
  """
  eos = int(tokenizer.convert_tokens_to_ids(prompt_cfg.eos_token or tokenizer.eos_token))
  answers = {l: tokenizer(prompts_lib.answer_text(l, prompt_cfg), add_special_tokens=False)
             ["input_ids"] + [eos] for l in prompt_cfg.letters}
  other = dict(zip(prompt_cfg.letters, prompt_cfg.letters[::-1]))
  # Two orders per pair: as stored, and with the candidates swapped (label swapped too).
  rows: list[tuple[list[int], str]] = []
  for r in records:
    label = _text(r["label"])
    if "state" not in r:
      raise ValueError("critic pair records lack their 'state' field (datasets written "
                       "before forced-choice evaluation): rebuild the datasets step")
    swapped = prompts_lib.critic_prompt(tokenizer, _text(r["state"]), _text(r["action_b"]),
                                        _text(r["action_a"]), prompt_cfg)
    rows.append((np.asarray(r["prompt_ids"]).tolist(), label))
    rows.append((tokenizer(swapped, add_special_tokens=False)["input_ids"], other[label]))
  texts: list[str] = []
  for i in range(0, len(rows), batch_size):
    res = sampler.generate(params, [p for p, _ in rows[i:i + batch_size]], sampling=_GREEDY,
                           max_new_tokens=max_new_tokens)
    texts.extend(tokenizer.decode(seq, skip_special_tokens=True) for seq in res.sequences())
  labels = [l for _, l in rows]
  scores = rewards.judgment_reward(texts[::2], {judgment.label_key: labels[::2]}, judgment)
  prompts, conts = [], []
  for (p, _), text in zip(rows, texts):
    prefix = reasoning_prefix(text, judgment)
    ids = p + (tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else [])
    for letter in prompt_cfg.letters:
      prompts.append(ids)
      conts.append(answers[letter])
  lp = np.asarray(sampler.score_sums(params, prompts, conts) if prompts else [], np.float64)
  lp = lp.reshape(len(rows), len(prompt_cfg.letters))
  first = np.asarray([l == prompt_cfg.letters[0] for l in labels])
  margin = np.where(first, lp[:, 0] - lp[:, 1], lp[:, 1] - lp[:, 0]).reshape(-1, 2).mean(1)
  forced = np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))
  episodes = [_text(r["state_id"]).rsplit("/", 1)[0] for r in records]
  greedy = scores.correct.astype(np.float64)
  n = len(records)
  return {"pairs": n, "episodes": len(set(episodes)),
          "judgment_accuracy": float(greedy.mean()) if n else 0.0,
          "judgment_accuracy_ci95": list(stats.cluster_bootstrap_ci(greedy, episodes)),
          "judgment_format_error_rate": float(scores.malformed.mean()) if n else 0.0,
          "judgment_forced_accuracy": float(forced.mean()) if n else 0.0,
          "judgment_forced_accuracy_ci95": list(stats.cluster_bootstrap_ci(forced, episodes)),
          "max_new_tokens": int(max_new_tokens)}
