"""`python -m act_jax.main --config configs/<name>.py --workdir DIR [--config.x=y]`.

Runs the whole ACT pipeline (`act_jax.pipeline`): trajectories, tokenizer, datasets,
the base model, each variant's training stages and evaluation, then DIR/results.*.
DIR may be local or `gs://bucket/dir` (`act_jax.storage`). Every step is resumable:
rerunning the same command redoes only what is out of date. A finished step whose
settings changed is never redone silently: the run stops and names the changed
fields; `--redo=<step>[,<step>]` redoes it, keeping the finished one aside.
"""
from __future__ import annotations

from typing import Sequence

from absl import app, flags

from act_jax import config_lib, distributed, loop, pipeline, workflow


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  with config_lib.usage_errors():
    run = pipeline.Pipeline(f.config, f.workdir, redo=f.redo)  # validates, then writes
  distributed.initialize()
  loop.setup_process(f.workdir)  # stages and variants recompile the same programs
  try:
    run.run()
  except workflow.StaleStepError as e:
    raise app.UsageError(str(e)) from None


if __name__ == "__main__":
  config_lib.define_flags()
  flags.DEFINE_list("redo", [], "Finished steps to redo although their settings changed "
                    "(e.g. base,s0/act); the finished ones are kept, moved aside.")
  app.run(main)
