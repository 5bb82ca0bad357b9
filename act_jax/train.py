"""`python -m act_jax.train --config configs/<name>.py --workdir DIR [--config.x=y]`.

Runs one training stage from a config: `config.stage` names it (see `act_jax.stages`;
default `pretrain`) and `config.data.kind` its data, which this entry makes itself:
`synthetic` text (configs/tiny_cpu.py) or the synthetic critic task
(configs/act_critic_tiny.py, stage `act`). Stages on env datasets get their records
from the pipeline (`python -m act_jax.main`). DIR may be local or `gs://bucket/dir`.
Rerunning the same command resumes from the latest complete checkpoint in DIR.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import ml_collections
from absl import app, flags

from act_jax import config_lib, distributed, loop, stages
from act_jax.stages import synthetic_critic

# The stage inputs this entry makes, by config.data.kind.
DATA: dict[str, Callable[[ml_collections.ConfigDict], dict[str, Any]]] = {
    "synthetic": lambda c: {},  # the pretrain stage makes its own batches
    "synthetic_critic": synthetic_critic.inputs,
}


def make_stage(config: ml_collections.ConfigDict) -> loop.Stage:
  """The stage `config.stage` names, on the data `config.data.kind` names."""
  kind = config.get("data", {}).get("kind")
  if kind not in DATA:
    raise ValueError(f"config.data.kind={kind!r}: act_jax.train makes {sorted(DATA)} data; "
                     "pipeline configs (stages on env datasets, e.g. configs/embedded.py) "
                     "run with python -m act_jax.main")
  return stages.make(config.get("stage", "pretrain"), config, **DATA[kind](config))


def main(argv: Sequence[str]) -> None:
  del argv
  config = flags.FLAGS.config
  with config_lib.usage_errors():  # before anything is written
    config_lib.validate(config)
    stage = make_stage(config)
  distributed.initialize()
  loop.setup_process(flags.FLAGS.workdir)
  loop.run(config, flags.FLAGS.workdir, stage)


if __name__ == "__main__":
  config_lib.define_flags()
  app.run(main)
