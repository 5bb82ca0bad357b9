"""Next-token training on synthetic text: the smoke and multi-host checks' stage."""
from __future__ import annotations

import ml_collections

from act_jax import config_lib, loop
from act_jax.data.synthetic import SyntheticBatches
from act_jax.stages import Inputs, register


class PretrainStage(loop.Stage):
  """Next-token training on the config's data source (synthetic for smoke runs)."""
  name = "pretrain"
  loss = "next_token"

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  def batches(self, shard_index: int, shard_count: int) -> loop.Batches:
    c = self.config
    if c.data.kind != "synthetic":
      raise ValueError(f"config.data.kind={c.data.kind!r}: the pretrain stage trains on "
                       "'synthetic' data; ACT/IL/RL stages on env datasets run through "
                       "act_jax.main")
    return SyntheticBatches(config_lib.model_config(c).vocab_size, c.train.batch_size,
                            c.train.seq_len, c.seed, shard_index, shard_count)


@register("pretrain")
def make_pretrain(config: ml_collections.ConfigDict, inputs: Inputs) -> PretrainStage:
  del inputs  # its data is synthetic, made from the config
  return PretrainStage(config)
