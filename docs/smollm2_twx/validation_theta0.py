"""θ0's forced choice on the validation split, the reference the critic sweep is read
against (docs/smollm2.md). On a workdir whose data steps have finished:

  PYTHONPATH=. python docs/smollm2_twx/validation_theta0.py --config configs/smollm2_twx.py:cpu \
      --workdir WORKDIR [--config.stages.act.trainable=top:K]
"""
import json
from typing import Sequence

from absl import app, flags

from act_jax import config_lib
from act_jax.chains import stage_config
from act_jax.data import builders
from act_jax.pipeline import Pipeline
from act_jax.trainable import Trainable


def main(argv: Sequence[str]) -> None:
  del argv
  p = Pipeline(flags.FLAGS.config, flags.FLAGS.workdir)
  depth = stage_config(p.c, "act", 0).train.trainable
  pairs = builders.load_source(p.local("datasets", "validation"), "critic_pairs")
  evaluate = p.validation_forced_choice(pairs, Trainable.parse(depth, p.ctx.model_cfg.num_layers))
  print(json.dumps({"trainable": depth, **evaluate(p.params_of(p.path("base")))}, indent=1))


if __name__ == "__main__":
  config_lib.define_flags()
  app.run(main)
