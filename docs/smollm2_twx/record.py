"""A run's record: the small files of its finished steps, without any weights.

The transfer run outlived its machines (docs/smollm2.md, part 3): a session's machine,
and every file under `runs/` on it, is gone when the session ends. What a later session
needs to go on is each finished step's `done.json` (what it was built from),
`metrics.jsonl` (its curves) and `eval.json` (its per-state and per-pair outcomes):

  PYTHONPATH=. python docs/smollm2_twx/record.py --config configs/smollm2_twx.py:cpu \\
      --workdir runs/smollm2_twx --out docs/smollm2_twx/run

copies them for every *closed* step: an evaluation that finished, and a training stage
every one of whose evaluations finished (a stage with a dependent still to run needs its
checkpoint, which the record does not hold, so it is left to be redone). Copied back
(`cp -r docs/smollm2_twx/run/. runs/smollm2_twx/`), the pipeline rebuilds the data and
θ0 as the same steps (`workflow.run_step(reproducible=True)`) and skips every recorded
one; `results.json` is written from the recorded evaluations.
"""
import os
from typing import Sequence

from absl import app, flags

from act_jax import config_lib, storage, workflow
from act_jax.chains import CHAINS, chain_key, variants

flags.DEFINE_string("out", None, "the record directory", required=True)

FILES = ("done.json", "metrics.jsonl", "eval.json")


def closed_steps(workdir: str, names: Sequence[str], seeds: Sequence[int]) -> list[str]:
  """Every finished evaluation, and every finished stage all of whose variants'
  evaluations finished (θ0's is seed 0's only)."""
  done = lambda key: storage.exists(workflow.Step(key, os.path.join(workdir, key)).done_path)
  closed = []
  for seed in seeds:
    evals = {v: f"s{seed}/eval_{v}" for v in names if CHAINS[v] or seed == 0}
    closed += [e for e in evals.values() if done(e)]
    uses = {v: {chain_key(seed, CHAINS[v][:i + 1]) for i in range(len(CHAINS[v]))}
            for v in evals}
    for key in sorted(set().union(*uses.values())):
      if done(key) and all(done(evals[v]) for v in evals if key in uses[v]):
        closed.append(key)
  return sorted(closed)


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  c = f.config
  first = c.pipeline.get("first_seed", 0)
  keys = closed_steps(f.workdir, variants(c), range(first, first + c.pipeline.seeds))
  for key in keys:
    for name in FILES:
      src = os.path.join(f.workdir, key, name)
      if storage.exists(src):
        storage.makedirs(os.path.join(f.out, key))
        storage.write_text(os.path.join(f.out, key, name), storage.read_text(src))
  print("\n".join(keys))


if __name__ == "__main__":
  config_lib.define_flags()
  app.run(main)
