"""A model as an environment policy, for evaluation.

The policy renders each live episode's state exactly as the training data does
(`act_jax.data.states`, same prompt templates and token budget), then either
generates `Action: ...` greedily ("generate") or ranks the admissible actions by the
likelihood of their training target: summed log-prob ("rank") or log-prob per target
token ("rank_mean"; the sum favours short actions). Every call is batched across
episodes. The model as a critic is scored in `act_jax.evaluation`.

In "generate" mode an action is at most `max_new_tokens` long; one that reaches the
budget without ending is cut short, and counted per episode (`counts`), not hidden.

A policy trained to reflect before it acts (the self-reflection baseline, `ee_sr`) gets
`reflection_tokens` more to generate; in a rank mode it first writes its reflection
greedily, up to the action marker, and ranks the action targets after it.
"""
from __future__ import annotations

import collections
from typing import Any, Sequence

import numpy as np

from act_jax import parsing
from act_jax.data import examples, prompts as prompts_lib
from act_jax.data.states import current_state
from act_jax.envs.rollout import PolicyInput
from act_jax.sampling import SamplingConfig, Sampler

MODES = ("generate", "rank", "rank_mean")
GREEDY = SamplingConfig(temperature=0.0)


class ModelPolicy:
  """`policy(inputs) -> actions` backed by a model's parameters."""

  def __init__(self, sampler: Sampler, params: Any, tokenizer: Any,
               prompt_cfg: prompts_lib.PromptConfig, *, mode: str = "rank",
               max_state_tokens: int | None = None, max_new_tokens: int = 24,
               instruction: str = "", batch_size: int = 64, reflection_tokens: int = 0):
    if mode not in MODES:
      raise ValueError(f"config.eval.modes: unknown policy mode {mode!r}; expected {MODES}")
    self.sampler, self.params, self.tok, self.cfg = sampler, params, tokenizer, prompt_cfg
    self.mode, self.max_state_tokens = mode, max_state_tokens
    self.max_new_tokens, self.instruction, self.batch_size = max_new_tokens, instruction, batch_size
    self.reflection_tokens = reflection_tokens
    self._eos = examples.eos_id(tokenizer, prompt_cfg)
    # episode key (None: a state without an episode spec) -> generated / unparsed / truncated.
    self.counts: dict[str | None, collections.Counter] = collections.defaultdict(
        collections.Counter)

  def take_counts(self) -> dict[str | None, collections.Counter]:
    """The generation counts since the last call, per episode key; resets them."""
    counts, self.counts = self.counts, collections.defaultdict(collections.Counter)
    return counts

  def state_text(self, x: PolicyInput) -> str:
    """The state as training rendered it; `instruction` stands in where x has none."""
    traj = x.to_trajectory(self.instruction)
    traj.steps[-1].action = "?"  # the current step's action is what we are choosing
    return current_state(traj, "policy", self.tok, self.cfg, self.max_state_tokens).text

  def prompt_ids(self, inputs: Sequence[PolicyInput]) -> list[list[int]]:
    texts = [prompts_lib.action_prompt(self.tok, self.state_text(x), self.cfg) for x in inputs]
    return self.tok(texts, add_special_tokens=False)["input_ids"]

  def __call__(self, inputs: Sequence[PolicyInput]) -> list[str]:
    out: list[str] = []
    for i in range(0, len(inputs), self.batch_size):
      chunk = inputs[i:i + self.batch_size]
      ids = self.prompt_ids(chunk)
      out.extend(self._generate(chunk, ids) if self.mode == "generate"
                 else self._rank(chunk, ids))
    return out

  def _completions(self, ids: list[list[int]]) -> tuple[list[str], list[str]]:
    """Greedy completions and their finish reasons ("length": cut by the budget)."""
    res = self.sampler.generate(self.sampler.prepare(self.params), ids, sampling=GREEDY,
                                max_new_tokens=self.max_new_tokens + self.reflection_tokens)
    return ([self.tok.decode(seq, skip_special_tokens=True) for seq in res.sequences()],
            list(res.finish_reasons))

  def _reflect(self, ids: list[list[int]]) -> list[list[int]]:
    """Each prompt followed by the policy's own reflection: what it writes before the
    action marker (all of it, when no marker comes within the budget)."""
    texts = [parsing.split_action(t, self.cfg.action_pattern)[1]
             for t in self._completions(ids)[0]]
    return [list(p) + (self.tok(t, add_special_tokens=False)["input_ids"] if t else [])
            for p, t in zip(ids, texts)]

  def _generate(self, inputs: Sequence[PolicyInput], ids: list[list[int]]) -> list[str]:
    actions = []
    for x, text, finish in zip(inputs, *self._completions(ids)):
      action = parsing.parse_action(text, self.cfg.action_pattern)
      count = self.counts[x.spec.key if x.spec else None]
      count["generated"] += 1
      count["truncated"] += finish == "length"
      if action is None:
        count["unparsed"] += 1
        action = text.strip()
      actions.append(action)
    return actions

  def _rank(self, inputs: Sequence[PolicyInput], ids: list[list[int]]) -> list[str]:
    if self.reflection_tokens:
      ids = self._reflect(ids)
    prompts, conts, owner = [], [], []
    for j, (x, p) in enumerate(zip(inputs, ids)):
      for a in x.admissible:
        target = self.tok(prompts_lib.action_target(a, self.cfg),
                          add_special_tokens=False)["input_ids"]
        prompts.append(p)
        conts.append(list(target) + [self._eos])
        owner.append(j)
    # At most batch_size rows per scoring program: it holds [rows, heads, T, T] float32
    # attention scores, and a reflection makes T up to `reflection_tokens` longer
    # (64 states' ~600 rows in one program: gigabytes for even a tiny model).
    per_token = [x for i in range(0, len(prompts), self.batch_size)
                 for x in self.sampler.score(self.params, prompts[i:i + self.batch_size],
                                             conts[i:i + self.batch_size])]
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
