"""The critics alone, on the same pairs (docs/smollm2.md, the critic study): forced choice
over both A/B orders, each order alone and the first-letter rate, for θ0 and any trained
critic stage, on the validation split and, with --splits, the held-out ones; each critic
minus --reference, paired pair by pair (a bootstrap over episodes). On a workdir whose
data steps have finished (the critics' stage directories may lie in other workdirs):

  PYTHONPATH=. python docs/smollm2_twx/critic_eval.py --config configs/smollm2_twx.py:cpu \\
      --workdir WORKDIR --critics theta0=WORKDIR/base,real=CELL/s0/act,blind=CELL2/s0/act_blind \\
      --reference blind [--splits validation,id,ood_test_fold] [--out DIR] \\
      [--config.stages.act.trainable=top:K]

A critic directory with `{seed}` in it (`real=WORKDIR/s{seed}/act`) is scored once per
--seeds entry: its accuracy is then the mean over seeds with a t-interval, and its delta
against the reference is paired seed by seed (a critic without `{seed}`, θ0, is the same
model in every seed). With one seed the interval is the bootstrap over episodes.

All critics are scored with the act stage's trainable depth (its frozen prefix's cache),
which must be at least the depth any of them was trained at. --out DIR gets critics.json,
critics.png (each critic's accuracy per split) and critic_deltas.png (the paired deltas),
and keeps every score in DIR/scores/ (a rerun scores only critics or seeds not scored yet).
"""
import json
import os
from typing import Sequence

import numpy as np
from absl import app, flags

from act_jax import config_lib, evaluation, figures, stats, storage, workflow
from act_jax.chains import stage_config
from act_jax.data import builders
from act_jax.pipeline import Pipeline
from act_jax.trainable import Trainable

flags.DEFINE_string("critics", None, "name=stage_dir,... (a stage directory holds a "
                    "checkpoint; the workdir's base is θ0)", required=True)
flags.DEFINE_string("reference", None, "the critic every other one is compared with")
flags.DEFINE_list("splits", ["validation"], "validation and/or held-out env splits")
flags.DEFINE_string("out", None, "write critics.json and the two figures into this folder")
flags.DEFINE_list("seeds", ["0"], "the seeds put into a critic directory's {seed}")
METRIC = "judgment_forced_accuracy"
# What a critic's score is averaged over: the seeds' runs, or each pair's A/B orders.
MEANS = (METRIC, METRIC + "_A", METRIC + "_B", "first_letter_rate")


def split_pairs(p: Pipeline, split: str) -> list:
  """Every validation pair (what the sweep was read on), or the held-out pairs the
  pipeline's own evaluation scores (`eval.critic_pairs`, evenly spaced)."""
  if split == "validation":
    src = builders.load_source(p.local("datasets", split), "critic_pairs")
    return [src[i] for i in range(len(src))]
  pairs = evaluation.critic_pairs(p.local("datasets", split), p.c.eval.critic_pairs)
  if not pairs:
    raise ValueError(f"--splits: {split!r} has no critic pairs under "
                     f"{p.local('datasets', split)}")
  return pairs


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  critics = dict(kv.split("=", 1) for kv in f.critics.split(","))
  if f.reference is not None and f.reference not in critics:
    raise ValueError(f"--reference={f.reference!r} is not one of --critics {list(critics)}")
  p = Pipeline(f.config, f.workdir)
  depth = stage_config(p.c, "act", 0).train.trainable
  trainable = Trainable.parse(depth, p.ctx.model_cfg.num_layers)
  scorers = {s: p.forced_choice(split_pairs(p, s), trainable) for s in f.splits}
  report = {"trainable": depth, "critics": dict(critics), "seeds": f.seeds, "splits": {}}
  runs = {}  # {split: {critic: {seed or None: score}}}
  for name, stage_dir in critics.items():
    for seed in ([int(s) for s in f.seeds] if "{seed}" in stage_dir else [None]):
      scored = Scored(p, stage_dir.format(seed=seed), f.out, name, seed)
      for split, score in scorers.items():
        r = runs.setdefault(split, {}).setdefault(name, {})[seed] = scored(split, score)
        print(f"{split:15s} {name:10s} {'' if seed is None else f's{seed}':3s} {100 * r[METRIC]:5.1f} "
              f"[A {100 * r[METRIC + '_A']:5.1f} / B {100 * r[METRIC + '_B']:5.1f}] "
              f"first-letter {r['first_letter_rate']:.2f}", flush=True)
  seeded = any(len(by_seed) > 1 for by_critic in runs.values() for by_seed in by_critic.values())
  report["interval"] = ("t over seeds" if seeded else "bootstrap over episodes")
  for split, by_critic in runs.items():
    report["splits"][split] = {name: summary(by_seed) for name, by_seed in by_critic.items()}
  if f.reference is not None:
    for split, by_critic in runs.items():
      ref = by_critic[f.reference]
      deltas = {name: delta(by_seed, ref, f.seeds) for name, by_seed in by_critic.items()
                if name != f.reference}
      report.setdefault("deltas", {})[split] = {"reference": f.reference, **deltas}
      for name, d in deltas.items():
        print(f"{split:15s} {name} - {f.reference}: {100 * d['mean']:+.1f} "
              f"[{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]", flush=True)
  if f.out:
    write(f.out, report, list(critics))


class Scored:
  """One critic's scores, each kept in `out/scores/` with the id of the stage run it
  scored (its done.json), so a rerun with more seeds or critics scores only what is new,
  and a retrained stage is scored again."""

  def __init__(self, p: Pipeline, stage_dir: str, out: str | None, name: str,
               seed: int | None):
    self.p, self.dir, self.params = p, stage_dir, None
    self.id = workflow.Step(name, stage_dir).id
    self.prefix = out and os.path.join(out, "scores", name + ("" if seed is None else f"-s{seed}"))

  def __call__(self, split: str, score) -> dict:
    path = self.prefix and f"{self.prefix}-{split}.json"
    if path and storage.exists(path) and storage.read_json(path)["stage_id"] == self.id:
      return storage.read_json(path)["score"]
    if self.params is None:
      self.params = self.p.params_of(self.dir)
    r = score(self.params)
    if path:
      storage.makedirs(os.path.dirname(path))
      storage.write_json(path, {"stage_id": self.id, "stage_dir": self.dir, "score": r})
    return r


def summary(by_seed: dict) -> dict:
  """One run's score as it is; several seeds' as their means, with a t-interval for the
  accuracy and every seed's score kept."""
  if len(by_seed) == 1:
    (only,) = by_seed.values()
    return only
  scores = [by_seed[s] for s in sorted(by_seed)]
  out = {k: float(np.mean([r[k] for r in scores])) for k in MEANS}
  out[METRIC + "_ci95"] = list(stats.mean_ci([r[METRIC] for r in scores])[1:])
  out["per_seed"] = {str(s): by_seed[s] for s in sorted(by_seed)}
  return out


def delta(by_seed: dict, ref: dict, seeds: list[str]) -> dict:
  """critic − reference. With one run each, paired pair by pair (a bootstrap over
  episodes); with seeds, paired seed by seed (a t-interval), a seedless critic (θ0)
  being the same model in each."""
  if len(by_seed) == 1 and len(ref) == 1:
    (r,), (base,) = by_seed.values(), ref.values()
    units = lambda x: dict(enumerate(x[METRIC + "_per_unit"]))
    return stats.paired_outcome_deltas({0: units(r)}, units(base),
                                       dict(enumerate(base[METRIC + "_unit_cluster"])))
  per_seed = lambda runs: {int(s): runs.get(int(s), runs.get(None))[METRIC] for s in seeds}
  return stats.paired_deltas(per_seed(by_seed), per_seed(ref))


def write(out: str, report: dict, order: list[str]) -> None:
  """critics.json, and the critics' accuracy and paired deltas drawn as the results'
  figures are (`figures.plot_variants`, `figures.plot_deltas`)."""
  storage.makedirs(out)
  storage.write_text(os.path.join(out, "critics.json"), json.dumps(report, indent=1))
  variants = {name: {split: {METRIC: {"mean": by[name][METRIC],
                                      "ci95": by[name][METRIC + "_ci95"]}}
                     for split, by in report["splits"].items()} for name in order}
  what = f"seeds {', '.join(report['seeds'])}; 95% interval: {report['interval']}"
  figures.plot_variants(os.path.join(out, "critics.png"), variants, order, what)
  paired = {}
  for split, d in report.get("deltas", {}).items():
    for name, delta in d.items():
      if name != "reference":
        paired.setdefault(f"{name} − {d['reference']}", {})[split] = {METRIC: delta}
  if paired:
    figures.plot_deltas(os.path.join(out, "critic_deltas.png"), paired,
                        "forced choice, paired; " + what)


if __name__ == "__main__":
  config_lib.define_flags()
  app.run(main)
