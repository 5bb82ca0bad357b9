"""A synthetic critic task for learning checks: a word vocabulary, no tokenizer.

Objects o0..o{K-1} have a fixed hidden rank (their index); of the two candidate
actions the expert's names the higher-ranked object. The state names a random
object the judgment does not depend on (the model has to learn to ignore it). The
model must answer `Answer: A` or `Answer: B`: two tokens, then EOS. Held-out
records use object pairs never compared in training, so accuracy there measures
the learned ranking (by transitivity), not memorised pairs.

  prompt:     state o3 A o7 B o2 ?
  completion: Answer: A <eos>

(A rule that compares the state with an action, "pick the action naming the state's
object", is the more obvious design but a 2-layer model from random init needs
thousands of updates to learn token equality; the ranking rule is learned in a few
hundred, which keeps the check to CPU minutes.)
"""
from __future__ import annotations

from typing import Any, Sequence

import ml_collections
import numpy as np

from act_jax import config_lib, loop, stages

PAD, EOS = 0, 1
WORDS = ("<pad>", "<eos>", "Answer:", "A", "B", "state", "?")
_ID = {w: i for i, w in enumerate(WORDS)}


def vocab(num_objects: int) -> tuple[str, ...]:
  return WORDS + tuple(f"o{i}" for i in range(num_objects))


def detokenizer(num_objects: int):
  """ids -> text: words joined by spaces, padding and EOS dropped."""
  words = vocab(num_objects)

  def detokenize(ids: Sequence[int]) -> str:
    return " ".join(words[i] for i in ids if i not in (PAD, EOS) and 0 <= i < len(words))
  return detokenize


def heldout_pair(lo: int, hi: int, heldout_mod: int = 5) -> bool:
  """About 1 in `heldout_mod` pairs, never neighbours in rank: every held-out order
  then follows from trained ones (lo < lo+1 < ... < hi), so 100% is attainable."""
  return hi - lo >= 2 and (7 * lo + hi) % heldout_mod == 0


def records(num_objects: int, count: int, seed: int, heldout: bool,
            heldout_mod: int = 5) -> list[dict[str, Any]]:
  """`count` critic records over the training or the held-out object pairs.

  Training records come as each pair's two A/B orders, one after the other (2 x count
  records: `stages.critic.check_both_orders`); held-out records alternate the
  expert's position, so a constant answer scores 50%.
  """
  rng = np.random.default_rng(seed)
  pairs = [(lo, hi) for lo in range(num_objects) for hi in range(lo + 1, num_objects)
           if heldout_pair(lo, hi, heldout_mod) == heldout]
  obj = lambda i: len(WORDS) + int(i)
  out = []
  for k in range(count):
    lo, hi = pairs[rng.integers(len(pairs))]
    state = rng.integers(num_objects)
    expert_first = k % 2 == 0 if heldout else bool(rng.integers(2))
    for first in ((expert_first,) if heldout else (expert_first, not expert_first)):
      a, b = (hi, lo) if first else (lo, hi)
      ids = [_ID["state"], obj(state), _ID["A"], obj(a), _ID["B"], obj(b), _ID["?"]]
      out.append({"state_id": f"{k}", "prompt_ids": np.asarray(ids, np.int32),
                  "label": "A" if first else "B", "expert_action": f"o{hi}",
                  "alternative_action": f"o{lo}"})
  return out


def inputs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The critic stage's `stages.Inputs` on this task, from a config with a `data`
  section like `configs/act_critic_tiny.py`; refuses a model not sized for the task."""
  d = config.data
  model = config_lib.model_config(config)
  task = dict(vocab_size=len(vocab(d.num_objects)), eos_token_id=EOS, pad_token_id=PAD)
  for field, want in task.items():
    if getattr(model, field) != want:
      raise ValueError(f"config.model.{field}={getattr(model, field)!r}: the synthetic "
                       f"critic task with data.num_objects={d.num_objects} needs {want}")
  return dict(detokenize=detokenizer(d.num_objects),
              answers={l: [_ID["Answer:"], _ID[l], EOS] for l in ("A", "B")},
              train_source=records(d.num_objects, d.train_records, config.seed, heldout=False),
              eval_source=records(d.num_objects, d.eval_records, config.seed + 1, heldout=True))


def make_stage(config: ml_collections.ConfigDict) -> loop.Stage:
  """The critic stage on this task."""
  return stages.make("act", config, **inputs(config))
