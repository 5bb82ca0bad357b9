"""Turns per-seed evaluations into the results table, JSON and plots.

Input: {variant: {seed: {split: {metric: value}}}}. Output keeps every seed's value
and adds the mean and a 95% interval over seeds (Student t; with one seed the
interval is the per-run binomial interval the evaluator reported, and says so).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

# Two-sided 97.5% Student t quantiles for 1..30 degrees of freedom.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201,
         2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074,
         2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]

# The metrics reported per split, and where they sit in an evaluation dict.
METRICS = ("success_rate", "next_action_accuracy", "judgment_accuracy")


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
  """Mean and 95% t-interval over seeds."""
  v = np.asarray(values, dtype=np.float64)
  m = float(v.mean())
  if len(v) < 2:
    return m, math.nan, math.nan
  half = _T975[min(len(v) - 1, len(_T975)) - 1] * float(v.std(ddof=1)) / math.sqrt(len(v))
  return m, m - half, m + half


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
        m, lo, hi = mean_ci(vals)
        lo, hi = max(lo, 0.0), min(hi, 1.0)  # every metric is a rate: t-tails leave [0, 1]
        if len(vals) == 1:  # one seed: fall back to the evaluator's binomial interval
          ci = seeds[next(iter(seeds))][split].get(metric + "_ci95", [math.nan, math.nan])
          lo, hi = ci
        entry[metric] = {"mean": m, "ci95": [lo, hi], "per_seed": vals,
                         "interval": "t over seeds" if len(vals) > 1 else "Wilson, one seed"}
      splits[split] = entry
    out[variant] = splits
  return out


def markdown(variants: Mapping[str, Any], order: Sequence[str]) -> str:
  """One row per variant, one column per (split, metric) present."""
  cols = []
  for v in order:
    for split, metrics in variants.get(v, {}).items():
      for metric in metrics:
        if (split, metric) not in cols:
          cols.append((split, metric))
  short = {"success_rate": "success", "next_action_accuracy": "next-action acc",
           "judgment_accuracy": "judgment acc"}
  head = "| variant | " + " | ".join(f"{s} {short[m]}" for s, m in cols) + " |"
  lines = [head, "|" + "---|" * (len(cols) + 1)]
  for v in order:
    cells = []
    for split, metric in cols:
      e = variants.get(v, {}).get(split, {}).get(metric)
      if e is None:
        cells.append("–")
        continue
      lo, hi = e["ci95"]
      ci = "" if math.isnan(lo) else f" [{100 * lo:.1f}, {100 * hi:.1f}]"
      cells.append(f"{100 * e['mean']:.1f}{ci}")
    lines.append(f"| {v} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write(workdir: str, per_seed: Mapping[str, Any], order: Sequence[str],
          extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  variants = aggregate(per_seed)
  doc = {"variants": variants, "order": list(order), **(extra or {})}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(doc, f, indent=2)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write("# Results\n\nPercentages; mean over seeds with a 95% interval.\n\n")
    f.write(markdown(variants, order))
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
  fig.savefig(path, dpi=100)
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
  fig.savefig(path, dpi=100)
  plt.close(fig)
