"""`python -m act_jax.stages --config configs/act_critic_tiny.py --workdir DIR`.

Runs a GRPO stage on a synthetic task (the CPU learning check). Stages on real
datasets are built by the pipeline (`act_jax.main`) from `act_jax.data` records,
e.g. `stages.critic.CriticStage(config, train_source=..., eval_source=..., detokenize=...)`.
"""
from __future__ import annotations

from absl import app, flags

from act_jax import config_lib, distributed, loop


def main(argv):
  del argv
  distributed.initialize()
  loop.setup_process(flags.FLAGS.workdir)
  config = flags.FLAGS.config
  if config.data.kind != "synthetic_critic":
    raise ValueError(f"config.data.kind={config.data.kind!r}: this entry point runs "
                     "'synthetic_critic'; real critic data runs through act_jax.main")
  from act_jax.stages import synthetic_critic
  loop.run(config, flags.FLAGS.workdir, synthetic_critic.make_stage(config))


if __name__ == "__main__":
  config_lib.define_flags()
  app.run(main)
