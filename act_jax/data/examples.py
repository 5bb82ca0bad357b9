"""Records for the two datasets: critic pairs (ACT stage 2) and imitation (stage 3).

Critic: the state and two candidate actions in a seeded order with the expert
first in exactly half of the pairs (±1), so a constant answer earns 50%; the
label is the expert's letter. Imitation: prompt = the action prompt, target =
`Action: <expert action>` + EOS, loss on the target tokens only.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

from act_jax.data import prompts
from act_jax.data.alternatives import stable_seed
from act_jax.data.pipeline import as_text
from act_jax.data.states import State

_CHUNK = 256  # prompts tokenized per call: bounded memory, batched Rust calls.


def expert_positions(n: int, seed: int) -> np.ndarray:
  """0/1 per pair (0: expert is the first letter), balanced to within one."""
  rng = np.random.default_rng(stable_seed(seed, "expert_positions"))
  pos = np.arange(n) % 2 if rng.random() < 0.5 else 1 - np.arange(n) % 2
  return rng.permutation(pos)


def eos_id(tokenizer: Any, cfg: prompts.PromptConfig) -> int:
  token = cfg.eos_token or tokenizer.eos_token
  token_id = tokenizer.convert_tokens_to_ids(token) if token else None
  if token_id is None:
    raise ValueError("the tokenizer has no eos_token; set PromptConfig.eos_token")
  return int(token_id)


def answer_ids(tokenizer: Any, cfg: prompts.PromptConfig) -> dict[str, list[int]]:
  """Each letter's answer string ("Answer: A" + EOS) as token ids: what forced-choice
  evaluation scores and the critic's `expected` estimator enumerates."""
  eos = eos_id(tokenizer, cfg)
  return {l: tokenizer(prompts.answer_text(l, cfg), add_special_tokens=False)["input_ids"]
          + [eos] for l in cfg.letters}


def action_ids(tokenizer: Any, cfg: prompts.PromptConfig) -> Callable[[str], list[int]]:
  """An action -> its target's token ids + EOS, exactly as `imitation_records` writes
  them: what next-action RL's `expected` estimator scores for each admissible action."""
  eos = eos_id(tokenizer, cfg)
  return lambda action: next(supervised_rows(tokenizer, [""], [prompts.action_target(
      action, cfg)], eos))["target_ids"].tolist()


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[np.ndarray]:
  ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
  return [np.asarray(x, dtype=np.int32) for x in ids]


def critic_records(states: Sequence[State], alternatives: Sequence[Sequence[str]],
                   tokenizer: Any, cfg: prompts.PromptConfig, seed: int,
                   alternative_source: str) -> Iterator[tuple[str, dict[str, Any]]]:
  """Yields (key, record), one per (state, alternative) pair."""
  pairs = [(s, alt, j) for s, alts in zip(states, alternatives)
           for j, alt in enumerate(alts)]
  positions = expert_positions(len(pairs), seed)
  for c in range(0, len(pairs), _CHUNK):
    chunk = pairs[c:c + _CHUNK]
    texts, recs = [], []
    for (s, alt, j), pos in zip(chunk, positions[c:c + _CHUNK]):
      a, b = (s.expert_action, alt) if pos == 0 else (alt, s.expert_action)
      texts.append(prompts.critic_prompt(tokenizer, s.text, a, b, cfg))
      recs.append((f"{s.state_id}|{j}", {
          "state_id": s.state_id, "source": s.source, "state": s.text,
          "alternative_source": alternative_source,
          "label": cfg.letters[int(pos)], "expert_action": s.expert_action,
          "alternative_action": alt, "action_a": a, "action_b": b}))
    for (key, rec), text, ids in zip(recs, texts, _encode(tokenizer, texts)):
      rec.update(prompt=text, prompt_ids=ids)
      yield key, rec


def swapped_order(record: dict[str, Any], tokenizer: Any, cfg: prompts.PromptConfig
                  ) -> dict[str, Any]:
  """The critic pair with its candidates in the other order: the prompt re-rendered from
  its state with actions b and a, the label the other letter."""
  if "state" not in record:
    raise ValueError("critic pair records lack their 'state' field (datasets written "
                     "before both-order critic training): rebuild the datasets step")
  a, b = as_text(record["action_a"]), as_text(record["action_b"])
  text = prompts.critic_prompt(tokenizer, as_text(record["state"]), b, a, cfg)
  other = dict(zip(cfg.letters, cfg.letters[::-1]))
  return {**record, "action_a": b, "action_b": a, "label": other[as_text(record["label"])],
          "prompt": text, "prompt_ids": _encode(tokenizer, [text])[0]}


def both_orders(records: Sequence[dict[str, Any]], tokenizer: Any,
                cfg: prompts.PromptConfig) -> list[dict[str, Any]]:
  """Each critic pair followed by its `swapped_order`: trained in one batch
  (`stages.critic`), the two orders cancel a letter preference's gradient pair by pair,
  and their mean is the paper's random-order objective in expectation."""
  return [x for r in records for x in (r, swapped_order(r, tokenizer, cfg))]


def supervised_rows(tokenizer: Any, prompts_: Sequence[str],
                    targets: Sequence[str | Sequence[str]], eos: int
                    ) -> Iterator[dict[str, np.ndarray]]:
  """prompt_ids, target_ids (+ EOS), input_ids and loss_mask (the target's tokens only)
  per (prompt, target). A target given as pieces is encoded piece by piece, so a policy
  that writes the first pieces itself can score the last one on the tokens training saw
  (the self-reflection baseline's reflection, then its action: `early_experience`)."""
  for c in range(0, len(prompts_), _CHUNK):
    pieces = [[t] if isinstance(t, str) else list(t) for t in targets[c:c + _CHUNK]]
    flat = iter(_encode(tokenizer, [x for p in pieces for x in p]))
    for p_ids, n in zip(_encode(tokenizer, prompts_[c:c + _CHUNK]), map(len, pieces)):
      t_ids = np.concatenate([next(flat) for _ in range(n)] + [np.asarray([eos], np.int32)])
      yield {"prompt_ids": p_ids, "target_ids": t_ids,
             "input_ids": np.concatenate([p_ids, t_ids]),
             "loss_mask": np.concatenate([np.zeros_like(p_ids), np.ones_like(t_ids)])}


def imitation_records(states: Sequence[State], tokenizer: Any,
                      cfg: prompts.PromptConfig
                      ) -> Iterator[tuple[str, dict[str, Any]]]:
  """Yields (key, record), one per state; also the stage-3 RL prompts."""
  eos = eos_id(tokenizer, cfg)
  for c in range(0, len(states), _CHUNK):  # prompts rendered a chunk at a time
    chunk = states[c:c + _CHUNK]
    texts = [prompts.action_prompt(tokenizer, s.text, cfg) for s in chunk]
    targets = [prompts.action_target(s.expert_action, cfg) for s in chunk]
    for s, text, target, ids in zip(chunk, texts, targets,
                                    supervised_rows(tokenizer, texts, targets, eos)):
      yield s.state_id, {
          "state_id": s.state_id, "source": s.source, "prompt": text,
          "target": target, "expert_action": s.expert_action,
          "admissible": list(s.admissible or ()), **ids}
