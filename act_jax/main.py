"""`python -m act_jax.main --config configs/<name>.py --workdir DIR [--config.x=y]`.

Runs the whole ACT pipeline (`act_jax.pipeline`): trajectories, tokenizer, datasets,
the base model, each variant's training stages and evaluation, then DIR/results.*.
Every step is resumable: rerunning the same command redoes only what is out of date.
"""
from __future__ import annotations

from typing import Sequence

from absl import app, flags

from act_jax import config_lib, distributed, loop, pipeline


def main(argv: Sequence[str]) -> None:
  del argv
  distributed.initialize()
  loop.setup_process(flags.FLAGS.workdir)  # stages and variants recompile the same programs
  pipeline.Pipeline(flags.FLAGS.config, flags.FLAGS.workdir).run()


if __name__ == "__main__":
  config_lib.define_flags()
  app.run(main)
