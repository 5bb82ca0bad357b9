"""Training stages for the shared loop, chosen by name: `stages.make(name, config, **inputs)`.

  pretrain          next-token training on synthetic text (`stages.pretrain`)
  il, imitation     the supervised action loss on (prompt, target) records
                    (`stages.imitation`); `base` is the same stage on the pipeline's
                    random-play format warm-up
  act, critic       GRPO on the pairwise judgment (`stages.critic`)
  rl, action        GRPO on next-action generation (`stages.action`)

Stages differ only in their data, reward and loss entries; `act_jax.loop` runs them all.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from act_jax import loop
from act_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What a caller has for a stage to train on; each stage reads the fields it needs.

  train_source / eval_source: random-access records (`act_jax.data`); detokenize:
  completion ids -> text (GRPO rewards read text); reference: the frozen KL reference
  (params, or `ctx -> params`); pad_id: the padding id of supervised batches; answers:
  the critic's answer strings as token ids by letter, EOS included (its `expected`
  estimator enumerates them); action_ids: an action -> its target's token ids, EOS
  included, as IL writes it (the next-action stage's `expected` estimator); evaluate:
  params -> metrics, run every `train.eval_every` steps in place of the stage's own
  held-out evaluation (the pipeline's validation forced choice for a critic).
  """
  train_source: Any = None
  eval_source: Any = None
  detokenize: Callable[[Any], str] | None = None
  reference: Any = None
  pad_id: int = 0
  answers: Mapping[str, Sequence[int]] | None = None
  action_ids: Callable[[str], Sequence[int]] | None = None
  evaluate: Callable[[Any], Mapping[str, float]] | None = None


Constructor = Callable[[ml_collections.ConfigDict, Inputs], loop.Stage]
STAGES: Registry[Constructor] = Registry("stage", "config.stage")
register = STAGES.register


def make(name: str, config: ml_collections.ConfigDict, **inputs: Any) -> loop.Stage:
  """The stage registered as `name`, on `config` and the `Inputs` fields given."""
  return STAGES.get(name)(config, Inputs(**inputs))


from act_jax.stages import action, critic, imitation, pretrain  # noqa: E402,F401  (register)
