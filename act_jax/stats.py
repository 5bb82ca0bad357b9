"""Intervals for the numbers the pipeline publishes.

Three kinds, each for the dependence structure of what it summarises:
  t over seeds         runs of one variant (or paired per-seed deltas of two)
  cluster bootstrap    one run's per-state outcomes, resampled by episode: states of
                       one episode share its history and objects, so they are not
                       independent draws and a binomial interval would be too narrow
  Wilson               independent trials (episodes)
The t quantiles and the Wilson interval come from scipy.stats; the episode-clustered
bootstrap is ours (no library resamples whole clusters).
"""
from __future__ import annotations

import math
from typing import Any, Hashable, Sequence

import numpy as np
from scipy import stats as sps


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
  """Mean and 95% t-interval; the interval is NaN with fewer than two values."""
  v = np.asarray(values, dtype=np.float64)
  m = float(v.mean())
  if len(v) < 2:
    return m, math.nan, math.nan
  half = float(sps.t.ppf(0.975, len(v) - 1)) * float(v.std(ddof=1)) / math.sqrt(len(v))
  return m, m - half, m + half


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
  """Wilson score interval for k successes in n independent trials; (0, 1) when n = 0."""
  if n == 0:
    return (0.0, 1.0)
  ci = sps.binomtest(k, n).proportion_ci(confidence, method="wilson")
  return (float(ci.low), float(ci.high))


def cluster_bootstrap_ci(outcomes: Sequence[float], clusters: Sequence[Hashable],
                         n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
  """95% percentile interval of a mean, resampling whole clusters with replacement.

  Each resample draws as many clusters as there are and pools their outcomes, so a
  large episode weighs as much as it does in the point estimate.
  """
  y = np.asarray(outcomes, dtype=np.float64)
  if len(y) == 0:
    return (0.0, 1.0)
  _, idx = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
  sums = np.bincount(idx, weights=y)
  counts = np.bincount(idx).astype(np.float64)
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, len(sums), size=(n_boot, len(sums)))
  means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
  lo, hi = np.percentile(means, [2.5, 97.5])
  return (float(lo), float(hi))


def paired_outcome_deltas(treated: dict[Any, dict[str, float]], baseline: dict[str, float],
                          clusters: dict[str, Hashable], n_boot: int = 2000, seed: int = 0
                          ) -> dict[str, Any] | None:
  """Treated − baseline paired item by item (e.g. held-out pairs), for a baseline
  evaluated once (θ0): its score is a sample of the same items, not a constant.

  treated: {seed: {item: outcome}}; baseline: {item: outcome}; clusters: {item: episode}.
  The estimate is the mean over seeds of each seed's mean per-item difference over the
  items both have. The interval is a percentile bootstrap that resamples seeds and, shared
  by both arms (the pairing), whole episodes of items, so it carries θ0's own sampling
  noise as well as the seeds'.
  """
  seeds = sorted(s for s in treated if set(treated[s]) & set(baseline))
  if not seeds:
    return None
  items = sorted(set(baseline).intersection(*(treated[s] for s in seeds)))
  if not items:
    return None
  _, idx = np.unique(np.asarray([str(clusters[k]) for k in items]), return_inverse=True)
  diff = np.asarray([[treated[s][k] - baseline[k] for k in items] for s in seeds], np.float64)
  sums = np.stack([np.bincount(idx, weights=d) for d in diff])  # [seeds, clusters]
  counts = np.bincount(idx).astype(np.float64)
  per_seed = sums.sum(1) / counts.sum()
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, len(counts), size=(n_boot, len(counts)))
  seed_draws = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
  by_seed = sums[:, draws].sum(-1) / counts[draws].sum(-1)  # [seeds, n_boot]
  means = np.take_along_axis(by_seed.T, seed_draws, axis=1).mean(1)
  lo, hi = np.percentile(means, [2.5, 97.5])
  return {"mean": float(per_seed.mean()), "ci95": [float(lo), float(hi)],
          "per_seed": per_seed.tolist(), "seeds": seeds, "items": len(items),
          "interval": "bootstrap over seeds and episodes, paired by item"}


def paired_deltas(treated: dict[Any, float], baseline: dict[Any, float]
                  ) -> dict[str, Any] | None:
  """Per-seed differences treated − baseline over the seeds both have, with a t-interval.

  A baseline with a single entry (θ0, evaluated once) is subtracted from every seed.
  """
  if len(baseline) == 1:
    (only,) = baseline.values()
    pairs = {s: v - only for s, v in treated.items()}
  else:
    pairs = {s: treated[s] - baseline[s] for s in treated if s in baseline}
  if not pairs:
    return None
  seeds = sorted(pairs)
  m, lo, hi = mean_ci([pairs[s] for s in seeds])
  return {"mean": m, "ci95": [lo, hi], "per_seed": [pairs[s] for s in seeds],
          "seeds": seeds}
