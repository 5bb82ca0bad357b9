"""Imitation: the supervised action loss on (prompt, target) records.

The pipeline's IL stage trains on expert imitation examples; its base step runs the
same stage (named `base`) on random-play records to teach the answer formats.
"""
from __future__ import annotations

import functools
from typing import Any

import ml_collections

from act_jax import loop
from act_jax.data import pipeline as data_pipeline
from act_jax.stages import Inputs, register


class ImitationStage(loop.Stage):
  """The supervised action loss on (prompt, target) records: IL and the format warm-up."""
  loss = "action_ce"

  def __init__(self, config: ml_collections.ConfigDict, source: Any, pad_id: int,
               name: str = "il"):
    self.config, self.source, self.pad_id, self.name = config, source, pad_id, name

  def batches(self, shard_index: int, shard_count: int) -> loop.Batches:
    return data_pipeline.make_batches(
        self.source, batch_size=self.config.train.batch_size // shard_count,
        seed=self.config.seed, pad_id=self.pad_id, mode="supervised",
        shard_index=shard_index, shard_count=shard_count, meta=False,
        group_by_length=self.config.data.get("group_by_length", 0))


@register("il", "imitation")
def make_imitation(config: ml_collections.ConfigDict, inputs: Inputs,
                   name: str = "il") -> ImitationStage:
  return ImitationStage(config, inputs.train_source, inputs.pad_id, name=name)


register("base")(functools.partial(make_imitation, name="base"))
