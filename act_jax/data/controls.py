"""Control critic datasets: what ACT's critic stage becomes without its signal.

They separate "the critic learns which action is better" from "any extra training on
this text helps" (docs/smollm2.md):

  shuffled  the same prompts, each label drawn at random: the reward carries no
            information about which action is better
  blind     each pair's state replaced by the state of a pair from another
            episode (candidates and label kept): which action is better cannot be
            read from the state shown, only guessed from the actions alone

Both keep every other field, so the stage, its budget and its prompts' format are
those of the real critic stage.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from act_jax.data import prompts
from act_jax.data.alternatives import stable_seed
from act_jax.data.pipeline import as_text

Record = dict[str, Any]


def episode_of(record: Record) -> str:
  """'game/seed' of a state id 'game/seed/step'."""
  return as_text(record["state_id"]).rsplit("/", 1)[0]


def shuffled_labels(records: Sequence[Record], seed: int, letters: Sequence[str]
                    ) -> list[Record]:
  rng = np.random.default_rng(stable_seed(seed, "shuffled_labels"))
  return [{**r, "label": letters[int(i)]}
          for r, i in zip(records, rng.integers(0, len(letters), len(records)))]


def blind_states(records: Sequence[Record], seed: int, tokenizer: Any,
                 cfg: prompts.PromptConfig) -> list[Record]:
  """Each record shown with the state of a record from another episode."""
  n = len(records)
  episodes = [episode_of(r) for r in records]
  if len(set(episodes)) < 2:
    raise ValueError("blind control: the critic pairs come from one episode; there is no "
                     "other episode's state to show")
  rng = np.random.default_rng(stable_seed(seed, "blind_states"))
  donor = rng.permutation(n)
  for i in range(n):  # repair the few donors from the same episode
    while episodes[donor[i]] == episodes[i]:
      donor[i] = rng.integers(n)
  out = []
  texts = []
  for r, d in zip(records, donor):
    state = as_text(records[d]["state"])
    texts.append(prompts.critic_prompt(tokenizer, state, as_text(r["action_a"]),
                                       as_text(r["action_b"]), cfg))
    out.append({**r, "state": state, "state_donor": as_text(records[d]["state_id"])})
  ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
  for r, text, x in zip(out, texts, ids):
    r.update(prompt=text, prompt_ids=np.asarray(x, np.int32))
  return out


Control = Callable[[Sequence[Record], int, Any, prompts.PromptConfig], list[Record]]
CONTROLS: dict[str, Control] = {
    "act_shuffled": lambda recs, seed, tok, cfg: shuffled_labels(recs, seed, cfg.letters),
    "act_blind": blind_states,
}
