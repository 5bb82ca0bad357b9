"""`python -m act_jax.train --config configs/<name>.py --workdir DIR [--config.x=y]`.

Runs one training job from a config. Rerunning the same command resumes from the
latest complete checkpoint in DIR.
"""
from __future__ import annotations


from absl import app, flags

from act_jax import config_lib, distributed, loop
from act_jax.data.synthetic import SyntheticBatches



class PretrainStage(loop.Stage):
  """Next-token training on the config's data source (synthetic for smoke runs)."""
  name = "pretrain"
  loss = "next_token"

  def __init__(self, config):
    self.config = config

  def batches(self, shard_index, shard_count):
    c = self.config
    if c.data.kind != "synthetic":
      raise ValueError(f"config.data.kind={c.data.kind!r}: act_jax.train runs 'synthetic' "
                       "data; ACT/IL/RL stages run through act_jax.main")
    return SyntheticBatches(config_lib.model_config(c).vocab_size, c.train.batch_size,
                            c.train.seq_len, c.seed, shard_index, shard_count)


def main(argv):
  del argv
  distributed.initialize()
  loop.setup_process(flags.FLAGS.workdir)
  config = flags.FLAGS.config
  state = loop.run(config, flags.FLAGS.workdir, PretrainStage(config))
  del state


if __name__ == "__main__":
  config_lib.define_flags()
  app.run(main)
