"""Turns per-seed evaluations into the results table and JSON, and draws their figures.

Input: {variant: {seed: {split: {metric: value}}}}. Output keeps every seed's value
and adds the mean and a 95% interval over seeds (Student t; with one seed the
interval is the one the evaluator reported for that run: Wilson over episodes, a
bootstrap over episodes for per-state accuracies), plus paired per-seed deltas of
each ACT variant against its baseline (against θ0, evaluated once, paired per held-out
episode, state or pair instead, so θ0's own sampling noise is in the interval).

`python -m act_jax.results --replot DIR [--out OUT]` redraws a finished run's
results.md and figures (act_jax.figures) from DIR/results.json and the stages' metric
rows under DIR (or DIR/curves.json); with --out it writes them, results.json and
curves.json to OUT, a directory that can then be redrawn alone.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from act_jax import stats, storage, workflow

# The metrics reported per split, and where they sit in an evaluation dict.
METRICS = ("success_rate", "next_action_accuracy", "judgment_accuracy",
           "judgment_forced_accuracy", "judgment_forced_accuracy_A",
           "judgment_forced_accuracy_B", "judgment_format_error_rate", "first_letter_rate",
           "unparsed_action_rate", "truncated_action_rate")
SHORT = {"success_rate": "success", "next_action_accuracy": "next-action acc",
         "judgment_accuracy": "judgment acc (greedy)",
         "judgment_forced_accuracy": "judgment acc (forced choice)",
         "judgment_forced_accuracy_A": "forced choice, expert shown as A",
         "judgment_forced_accuracy_B": "forced choice, expert shown as B",
         "judgment_format_error_rate": "judgment format errors (greedy)",
         "first_letter_rate": "first-letter rate",
         "unparsed_action_rate": "unparsed actions (generate)",
         "truncated_action_rate": "actions cut by the token budget (generate)"}
# Each ACT variant against the baseline it extends, on the metrics the pair is about.
# Both runs of a pair share the seed (data order), so their per-seed difference is paired.
ACTION = ("success_rate", "next_action_accuracy")
# Does a critic stage before IL leave its judgment in the policy? (forced choice: a
# policy that writes actions gives no greedy answer)
ACTION_JUDGMENT = ACTION + ("judgment_forced_accuracy",)
DELTAS = (("il_w_act", "il", ACTION_JUDGMENT),
          ("rl_w_act", "rl", ACTION),
          # The controls: critic training without its signal, then IL or RL
          # (pipeline.CHAINS). Against the replay-only control the critic stage's replay
          # cancels, so what is left is the judgment signal's.
          ("il_w_act", "il_w_replay", ACTION),
          ("il_w_act", "act_shuffled", ACTION_JUDGMENT),
          ("il_w_act", "act_blind", ACTION_JUDGMENT),
          ("il_w_replay", "il", ACTION),
          ("act_shuffled", "il", ACTION),
          ("act_blind", "il", ACTION),
          ("rl_w_act", "rl_w_replay", ACTION),
          ("rl_w_act", "rl_w_act_shuffled", ACTION),
          ("rl_w_act", "rl_w_act_blind", ACTION),
          ("rl_w_replay", "rl", ACTION),
          ("act", "prompt", ("judgment_accuracy", "judgment_forced_accuracy")),
          # The Early Experience baselines (they act in the env; ACT does not) against IL,
          # and ACT against each of them.
          ("ee_iwm", "il", ("success_rate", "next_action_accuracy")),
          ("ee_sr", "il", ("success_rate", "next_action_accuracy")),
          ("il_w_act", "ee_iwm", ("success_rate", "next_action_accuracy")),
          ("il_w_act", "ee_sr", ("success_rate", "next_action_accuracy")))


# A critic stage at the end of its training, from its metric rows: its letter bias (one
# step's batch is small, so the mean over the last CRITIC_TAIL logged steps) and its
# last validation evaluation (`stages.<stage>.eval_every`).
CRITIC_TAIL = 16
CRITIC_VALIDATION = ("val_judgment_forced_accuracy", "val_judgment_forced_accuracy_A",
                     "val_judgment_forced_accuracy_B", "val_first_letter_rate")


def critic_training(curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
  """{stage: {metric: {"mean", "ci95", "per_seed", "seeds"}}} over the seeds' runs
  ("s0/act", "s1/act", ...) of every stage that logged `first_letter_rate`."""
  by_stage: dict[str, dict[str, dict[str, float]]] = {}
  for run, rows in curves.items():
    seed, _, stage = run.partition("/")
    letters = [r["first_letter_rate"] for r in rows if "first_letter_rate" in r]
    if not stage or not letters:
      continue
    end = {"first_letter_rate": float(np.mean(letters[-CRITIC_TAIL:]))}
    evals = [r for r in rows if CRITIC_VALIDATION[0] in r]
    if evals:
      end.update({k: evals[-1][k] for k in CRITIC_VALIDATION if k in evals[-1]},
                 validation_step=evals[-1]["step"])
    by_stage.setdefault(stage, {})[seed] = end
  out: dict[str, Any] = {}
  for stage, seeds in sorted(by_stage.items()):
    names = sorted({k for end in seeds.values() for k in end})
    for metric in names:
      have = sorted(s for s in seeds if metric in seeds[s])
      vals = [seeds[s][metric] for s in have]
      m, lo, hi = stats.mean_ci(vals)
      if metric != "validation_step":  # rates: t-tails leave [0, 1]
        lo, hi = max(lo, 0.0), min(hi, 1.0)
      out.setdefault(stage, {})[metric] = {"mean": m, "ci95": [lo, hi], "per_seed": vals,
                                           "seeds": have}
  return out


def aggregate(per_seed: Mapping[str, Mapping[Any, Mapping[str, Mapping[str, Any]]]]
              ) -> dict[str, Any]:
  """{variant: {seed: {split: metrics}}} -> results.json's `variants` object."""
  out: dict[str, Any] = {}
  for variant, seeds in per_seed.items():
    splits: dict[str, Any] = {}
    names = sorted({s for ev in seeds.values() for s in ev})
    for split in names:
      entry: dict[str, Any] = {}
      for metric in METRICS:
        vals = [ev[split][metric] for ev in seeds.values()
                if split in ev and ev[split].get(metric) is not None]
        if not vals:
          continue
        m, lo, hi = stats.mean_ci(vals)
        lo, hi = max(lo, 0.0), min(hi, 1.0)  # every metric is a rate: t-tails leave [0, 1]
        if len(vals) == 1:  # one seed: fall back to the evaluator's own interval
          ci = seeds[next(iter(seeds))][split].get(metric + "_ci95", [math.nan, math.nan])
          lo, hi = ci
        entry[metric] = {"mean": m, "ci95": [lo, hi], "per_seed": vals,
                         "interval": "t over seeds" if len(vals) > 1 else "evaluator's, one seed"}
      splits[split] = entry
    out[variant] = splits
  return out


def deltas(per_seed: Mapping[str, Mapping[Any, Mapping[str, Mapping[str, Any]]]]
           ) -> dict[str, Any]:
  """{"il_w_act - il": {split: {metric: paired delta}}} for the pairs in DELTAS present."""
  out: dict[str, Any] = {}
  for treated, base, metrics in DELTAS:
    if treated not in per_seed or base not in per_seed:
      continue
    splits: dict[str, Any] = {}
    names = sorted({s for ev in per_seed[treated].values() for s in ev})
    for split in names:
      for metric in metrics:
        values = lambda v: {seed: ev[split][metric] for seed, ev in per_seed[v].items()
                            if ev.get(split, {}).get(metric) is not None}
        d = (_per_item_delta(per_seed[treated], per_seed[base], split, metric)
             if len(per_seed[base]) == 1 else None)
        if d is None:
          d = stats.paired_deltas(values(treated), values(base))
        if d is not None:
          splits.setdefault(split, {})[metric] = d
    if splits:
      out[f"{treated} - {base}"] = splits
  return out


def _per_item_delta(treated: Mapping[Any, Mapping[str, Any]], base: Mapping[Any, Any],
                    split: str, metric: str) -> dict[str, Any] | None:
  """Against a baseline evaluated once (θ0): paired unit by unit (episode, state or
  critic pair: the evaluations' `<metric>_per_unit` outcomes, in one fixed order, and
  `<metric>_unit_cluster` episodes), so θ0's own sampling noise is in the interval;
  None when an evaluation lacks them."""
  def outcomes(ev: Mapping[str, Any]) -> dict[int, float] | None:
    units = ev.get(split, {}).get(metric + "_per_unit")
    return dict(enumerate(units)) if units is not None else None
  (b_ev,) = base.values()
  b = outcomes(b_ev)
  t = {seed: outcomes(ev) for seed, ev in treated.items()}
  if b is None or not t or any(v is None or len(v) != len(b) for v in t.values()):
    return None
  clusters = dict(enumerate(b_ev[split][metric + "_unit_cluster"]))
  return stats.paired_outcome_deltas(t, b, clusters)


def _cell(mean: float, ci: Sequence[float]) -> str:
  lo, hi = ci
  return f"{100 * mean:.1f}" + ("" if math.isnan(lo) else f" [{100 * lo:.1f}, {100 * hi:.1f}]")


def metric_order(names: set[str]) -> list[str]:
  """METRICS' order first, then any metric this module has no entry for, by name."""
  return [m for m in METRICS if m in names] + sorted(names - set(METRICS))


def label(metric: str) -> str:
  return SHORT.get(metric, metric)


def no_answer(split: Mapping[str, Any]) -> bool:
  """Whether a variant never gave a parseable greedy judgment on this split, in any seed.

  Such a model writes actions, not `Answer: X` (it was never trained as a critic, or an
  action stage came after its critic stage): its greedy judgment accuracy is not 0%, it
  is not measured, and tables show "—". Read from
  the format-error rate when the results hold it, else from a greedy accuracy of exactly
  0 in every seed (a model that answers at all is right on some of the held-out pairs).
  """
  fmt, acc = split.get("judgment_format_error_rate"), split.get("judgment_accuracy")
  if fmt is not None:
    return all(x >= 1.0 for x in fmt["per_seed"])
  return acc is not None and all(x == 0.0 for x in acc["per_seed"])


def markdown(variants: Mapping[str, Any], order: Sequence[str]) -> str:
  """One table per split: a row per variant, a column per metric present."""
  splits = sorted({s for v in order for s in variants.get(v, {})})
  out = []
  for split in splits:
    cols = metric_order({m for v in order for m in variants.get(v, {}).get(split, {})})
    lines = [f"### {split}", "", "| variant | " + " | ".join(label(m) for m in cols) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for v in order:
      e = variants.get(v, {}).get(split, {})
      cells = ["—" if m not in e or (m == "judgment_accuracy" and no_answer(e))
               else _cell(e[m]["mean"], e[m]["ci95"]) for m in cols]
      lines.append(f"| {v} | " + " | ".join(cells) + " |")
    out.append("\n".join(lines) + "\n")
  return "\n".join(out)


def deltas_markdown(paired: Mapping[str, Any]) -> str:
  """One row per (pair, split, metric): mean delta in points, t-interval, per seed."""
  lines = ["| pair | split | metric | mean delta [95% CI] | per seed |",
           "|---|---|---|---|---|"]
  for pair, splits in paired.items():
    for split, metrics in splits.items():
      for metric, d in metrics.items():
        per = " / ".join(f"{100 * x:+.1f}" for x in d["per_seed"])
        lines.append(f"| {pair} | {split} | {label(metric)} | {_cell(d['mean'], d['ci95'])} "
                     f"| {per} |")
  return "\n".join(lines) + "\n"


def critic_markdown(critics: Mapping[str, Any]) -> str:
  cols = ("first_letter_rate",) + CRITIC_VALIDATION
  lines = ["| stage | " + " | ".join(c.replace("val_", "validation ").replace("_", " ")
                                       for c in cols) + " |", "|" + "---|" * (len(cols) + 1)]
  for stage, ms in critics.items():
    cells = [_cell(ms[c]["mean"], ms[c]["ci95"]) if c in ms else "—" for c in cols]
    lines.append(f"| {stage} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write(workdir: str, per_seed: Mapping[str, Any], order: Sequence[str],
          extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  variants = aggregate(per_seed)
  paired = deltas(per_seed)
  doc = {"variants": variants, "deltas": paired, "order": list(order), **(extra or {})}
  with storage.open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(doc, f, indent=2)
  write_markdown(os.path.join(workdir, "results.md"), doc)
  return doc


def write_markdown(path: str, doc: Mapping[str, Any]) -> None:
  with storage.open(path, "w") as f:
    f.write("# Results\n\nPercentages; mean over seeds with a 95% interval (t over seeds; "
            "with one seed, the run's own interval). \"—\": not measured (greedy judgment: "
            "the model never gave a parseable answer; it writes actions).\n\n")
    f.write(markdown(doc["variants"], doc["order"]))
    if doc["deltas"]:
      f.write("\n## Paired deltas (points; per-seed differences, t-interval over seeds; "
              "against θ0, evaluated once, paired per episode, state or pair with a "
              "bootstrap over seeds and episodes)\n\n")
      f.write(deltas_markdown(doc["deltas"]))
    if doc.get("critic_training"):
      f.write(f"\n## Critic stages at the end of training (mean over seeds, 95% t-interval; "
              f"in-batch first-letter rate over the last {CRITIC_TAIL} steps, then the last "
              f"validation evaluation)\n\n")
      f.write(critic_markdown(doc["critic_training"]))


def draw(out: str, doc: Mapping[str, Any],
         curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
  """variants.png, deltas.png (when the results hold deltas) and curves.png (when some
  stage logged metrics) in `out`; returns the files written."""
  from act_jax import figures  # lazy: matplotlib
  written = ["variants.png"]
  figures.plot_variants(os.path.join(out, "variants.png"), doc["variants"], doc["order"])
  if doc.get("deltas"):
    figures.plot_deltas(os.path.join(out, "deltas.png"), doc["deltas"])
    written.append("deltas.png")
  if curves:
    figures.plot_curves(os.path.join(out, "curves.png"), curves)
    written.append("curves.png")
  return written


def read_curves(workdir: str) -> dict[str, list[dict[str, Any]]]:
  """{run: metric rows}: the metrics.jsonl of every finished stage under `workdir` (run
  = its path relative to it, e.g. "s0/il"), or, where there are none,
  `workdir/curves.json`. A stage without its done.json is still running (or was cut
  off): its last rows are not the end of its training, so it is left out."""
  from act_jax import metrics  # lazy: jax
  curves = {}
  root = storage.path(workdir)  # stage dirs: "base", "s0/il" (no recursive glob on GCS)
  found = [*root.glob("*/metrics.jsonl"), *root.glob("*/*/metrics.jsonl")]
  for f in sorted(found, key=str):
    run = os.path.relpath(str(f.parent), str(workdir))
    if storage.exists(workflow.Step(run, str(f.parent)).done_path):
      curves[run] = metrics.read_jsonl(str(f))
  saved = os.path.join(workdir, "curves.json")
  if not curves and storage.exists(saved):
    curves = storage.read_json(saved)
  return curves


def replot(src: str, out: str | None = None) -> list[str]:
  """Redraws results.md and the figures of the run (or copy) in `src` into `out`."""
  from act_jax import figures
  out = out or src
  path = os.path.join(src, "results.json")
  if not storage.exists(path):
    raise FileNotFoundError(f"{path}: no results.json (the pipeline's results step writes it)")
  doc = storage.read_json(path)
  for key in ("variants", "deltas", "order"):
    if key not in doc:
      raise ValueError(f"{path}: no {key!r} object")
  curves = read_curves(src)
  if critic_training(curves):  # derived from the stages' rows, so redrawn with them
    doc["critic_training"] = critic_training(curves)
  storage.makedirs(out)
  write_markdown(os.path.join(out, "results.md"), doc)
  written = ["results.md", *draw(out, doc, curves)]
  if os.path.abspath(out) != os.path.abspath(src):
    storage.write_json(os.path.join(out, "results.json"), doc, indent=2)
    written.append("results.json")
    if curves:  # only what the figure draws, so `out` redraws alone
      keys = {"step", "first_letter_rate", *CRITIC_VALIDATION,
              *(k for _, ks, _, _ in figures.CURVE_PANELS for k in ks)}
      slim = {run: [{k: v for k, v in r.items() if k in keys} for r in rows]
              for run, rows in curves.items()}
      storage.write_text(os.path.join(out, "curves.json"),
                         json.dumps(slim, separators=(",", ":")))
      written.append("curves.json")
  return written


def main(argv: Sequence[str] | None = None) -> None:
  from act_jax import cli
  ap = cli.parser("results", "Redraw a finished run's results.md and figures from its "
                  "results.json.")
  ap.add_argument("--replot", required=True, metavar="DIR",
                  help="a pipeline workdir, or a copy of its results (results.json, "
                       "optionally curves.json), e.g. docs/embedded")
  ap.add_argument("--out", default=None, metavar="DIR",
                  help="where to write (default: --replot's DIR); also copies "
                       "results.json and writes curves.json there")
  args = ap.parse_args(argv)
  for name in replot(args.replot, args.out):
    print(os.path.join(args.out or args.replot, name))


if __name__ == "__main__":
  main()
