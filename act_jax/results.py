"""Turns per-seed evaluations into the results table, JSON and plots.

Input: {variant: {seed: {split: {metric: value}}}}. Output keeps every seed's value
and adds the mean and a 95% interval over seeds (Student t; with one seed the
interval is the one the evaluator reported for that run: Wilson over episodes, a
bootstrap over episodes for per-state accuracies), plus paired per-seed deltas of
each ACT variant against its baseline.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from act_jax import stats, storage

# The metrics reported per split, and where they sit in an evaluation dict.
METRICS = ("success_rate", "next_action_accuracy", "judgment_accuracy",
           "judgment_forced_accuracy", "unparsed_action_rate")
SHORT = {"success_rate": "success", "next_action_accuracy": "next-action acc",
         "judgment_accuracy": "judgment acc (greedy)",
         "judgment_forced_accuracy": "judgment acc (forced choice)",
         "unparsed_action_rate": "unparsed actions (generate)"}
# Each ACT variant against the baseline it extends, on the metrics the pair is about.
# Both runs of a pair share the seed (data order), so their per-seed difference is paired.
DELTAS = (("il_w_act", "il", ("success_rate", "next_action_accuracy")),
          ("rl_w_act", "rl", ("success_rate", "next_action_accuracy")),
          # The controls: critic training without its signal, then IL (pipeline.CHAINS).
          ("act_shuffled", "il", ("success_rate", "next_action_accuracy")),
          ("act_blind", "il", ("success_rate", "next_action_accuracy")),
          ("il_w_act", "act_shuffled", ("success_rate", "next_action_accuracy")),
          ("il_w_act", "act_blind", ("success_rate", "next_action_accuracy")),
          ("act", "prompt", ("judgment_accuracy", "judgment_forced_accuracy")),
          # The Early Experience baselines (they act in the env; ACT does not) against IL,
          # and ACT against each of them.
          ("ee_iwm", "il", ("success_rate", "next_action_accuracy")),
          ("ee_sr", "il", ("success_rate", "next_action_accuracy")),
          ("il_w_act", "ee_iwm", ("success_rate", "next_action_accuracy")),
          ("il_w_act", "ee_sr", ("success_rate", "next_action_accuracy")))


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
        d = stats.paired_deltas(values(treated), values(base))
        if d is not None:
          splits.setdefault(split, {})[metric] = d
    if splits:
      out[f"{treated} - {base}"] = splits
  return out


def _cell(mean: float, ci: Sequence[float]) -> str:
  lo, hi = ci
  return f"{100 * mean:.1f}" + ("" if math.isnan(lo) else f" [{100 * lo:.1f}, {100 * hi:.1f}]")


def markdown(variants: Mapping[str, Any], order: Sequence[str]) -> str:
  """One row per variant, one column per (split, metric) present."""
  cols = []
  for v in order:
    for split, metrics in variants.get(v, {}).items():
      for metric in metrics:
        if (split, metric) not in cols:
          cols.append((split, metric))
  head = "| variant | " + " | ".join(f"{s} {SHORT[m]}" for s, m in cols) + " |"
  lines = [head, "|" + "---|" * (len(cols) + 1)]
  for v in order:
    cells = []
    for split, metric in cols:
      e = variants.get(v, {}).get(split, {}).get(metric)
      cells.append("–" if e is None else _cell(e["mean"], e["ci95"]))
    lines.append(f"| {v} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def deltas_markdown(paired: Mapping[str, Any]) -> str:
  """One row per (pair, split, metric): mean delta in points, t-interval, per seed."""
  lines = ["| pair | split | metric | mean delta [95% t-CI] | per seed |",
           "|---|---|---|---|---|"]
  for pair, splits in paired.items():
    for split, metrics in splits.items():
      for metric, d in metrics.items():
        per = " / ".join(f"{100 * x:+.1f}" for x in d["per_seed"])
        lines.append(f"| {pair} | {split} | {SHORT[metric]} | {_cell(d['mean'], d['ci95'])} "
                     f"| {per} |")
  return "\n".join(lines) + "\n"


def write(workdir: str, per_seed: Mapping[str, Any], order: Sequence[str],
          extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  variants = aggregate(per_seed)
  paired = deltas(per_seed)
  doc = {"variants": variants, "deltas": paired, "order": list(order), **(extra or {})}
  with storage.open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(doc, f, indent=2)
  with storage.open(os.path.join(workdir, "results.md"), "w") as f:
    f.write("# Results\n\nPercentages; mean over seeds with a 95% interval (t over seeds; "
            "with one seed, the run's own interval).\n\n")
    f.write(markdown(variants, order))
    if paired:
      f.write("\n## Paired deltas (points; per-seed differences, t-interval over seeds)\n\n")
      f.write(deltas_markdown(paired))
  return doc


def plot_variants(path: str, variants: Mapping[str, Any], order: Sequence[str],
                  metric: str = "success_rate") -> None:
  """Bar chart: each variant's `metric` on every split (ID vs OOD side by side)."""
  import matplotlib  # lazy: only the pipeline's last step draws
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  splits = sorted({s for v in order for s, m in variants.get(v, {}).items() if metric in m})
  fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(order), 3.6))
  width = 0.8 / max(len(splits), 1)
  for j, split in enumerate(splits):
    means = [variants.get(v, {}).get(split, {}).get(metric, {}).get("mean", 0.0) for v in order]
    ax.bar(np.arange(len(order)) + j * width, [100 * m for m in means], width, label=split)
  ax.set_xticks(np.arange(len(order)) + width * (len(splits) - 1) / 2, order, rotation=20)
  ax.set_ylabel(f"{metric} (%)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  with storage.open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)


def plot_curves(path: str, curves: Mapping[str, Sequence[Mapping[str, Any]]],
                keys: Sequence[str] = ("loss", "reward")) -> None:
  """Learning curves: one panel per metric key, one line per stage run."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.4))
  for ax, key in zip(np.atleast_1d(axes), keys):
    for name, rows in curves.items():
      pts = [(r["step"], r[key]) for r in rows if key in r]
      if pts:
        ax.plot(*zip(*pts), label=name)
    ax.set_title(key)
    ax.set_xlabel("step")
    if ax.lines:  # a metric no stage logged gets an empty panel, not a warning
      ax.legend(fontsize=7)
  fig.tight_layout()
  with storage.open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)
