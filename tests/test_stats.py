"""Intervals against published reference values (t tables, Wilson's formula by hand)."""
import math

import numpy as np
import pytest

from act_jax import stats


@pytest.mark.parametrize("df,quantile", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423),
                                         (100, 1.9840)])
def test_t_interval_uses_the_student_quantile(df, quantile):
  # Symmetric samples: mean 0, so the interval is ± t(df) · sd / sqrt(n).
  n = df + 1
  v = np.linspace(-1.0, 1.0, n)
  m, lo, hi = stats.mean_ci(v)
  sd = float(np.std(v, ddof=1))
  assert m == pytest.approx(0.0, abs=1e-12)
  assert hi == pytest.approx(quantile * sd / math.sqrt(n), rel=1e-4)
  assert lo == pytest.approx(-hi)


def test_t_interval_needs_two_values():
  m, lo, hi = stats.mean_ci([0.3])
  assert m == 0.3 and math.isnan(lo) and math.isnan(hi)


def _wilson_by_hand(k, n, z=1.959963984540054):
  p = k / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(5, 10), (68, 100), (1, 20), (19, 20), (3, 7)])
def test_wilson_interval_matches_the_formula(k, n):
  assert stats.wilson_interval(k, n) == pytest.approx(_wilson_by_hand(k, n), abs=1e-9)


def test_wilson_interval_edges():
  assert stats.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
  assert stats.wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
  assert stats.wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
  assert stats.wilson_interval(0, 0) == (0.0, 1.0)
