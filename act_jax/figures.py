"""The pipeline's figures, drawn from results.json's objects and the stages' metric rows.

  variants.png  one panel per metric: every variant, every split side by side, with its
                95% interval
  deltas.png    one panel per metric: every paired delta of results.json, per split,
                with its interval and a zero line
  curves.png    one panel per kind of training metric (imitation cross-entropy, GRPO
                loss, reward, accuracy, ...), only the kinds some stage logged

Nothing here knows the variant names: the figures hold whatever results.json holds.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from act_jax import results, storage

# Kinds of training metric, one panel each: (title, metric keys, which runs, y range).
# A run "is GRPO" when it logs a reward; its loss is a policy-gradient surrogate (it can
# go far below 0) and never shares an axis with cross-entropy.
CURVE_PANELS = (
    ("imitation loss (cross-entropy)", ("loss",), "ce", None),
    ("GRPO loss", ("loss",), "grpo", None),
    ("reward (in batch)", ("reward", "expected_reward"), "all", None),
    ("held-out reward", ("eval_reward",), "all", None),
    ("accuracy", ("eval_accuracy", "forced_accuracy"), "all", (0.0, 1.0)),
    ("answer mass", ("answer_mass",), "all", (0.0, 1.0)),
    ("first-letter rate", ("first_letter_rate",), "all", (0.0, 1.0)),
    ("validation forced choice (both orders)", ("val_judgment_forced_accuracy",), "all",
     (0.0, 1.0)),
    ("validation first-letter rate", ("val_first_letter_rate",), "all", (0.0, 1.0)),
)
_GRPO_KEYS = ("reward", "expected_reward")
SMOOTH = 10  # curves are drawn as running means over this many logged steps


def _pyplot():
  import matplotlib  # lazy: only the results step and replots draw
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _forest(ax: Any, rows: Sequence[str], splits: Sequence[str],
            cell: Callable[[str, str], Mapping[str, Any] | None], colors: Mapping[str, Any]
            ) -> None:
  """One horizontal row per label, one marker per split (offset), interval as a bar."""
  step = 0.7 / max(len(splits), 1)
  for j, split in enumerate(splits):
    ys, xs, lo, hi = [], [], [], []
    for i, row in enumerate(rows):
      e = cell(row, split)
      if e is None:
        continue
      m = 100 * e["mean"]
      a, b = (100 * x if x is not None and np.isfinite(x) else m for x in e["ci95"])
      ys.append(i - 0.35 + step * (j + 0.5))
      xs.append(m)
      lo.append(m - a)
      hi.append(b - m)
    if xs:
      ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", ms=4, capsize=2, lw=1,
                  color=colors[split], label=split)
  ax.set_yticks(range(len(rows)), rows)
  ax.set_ylim(len(rows) - 0.5, -0.5)
  ax.grid(axis="x", alpha=0.3)


def _grid(plt: Any, n: int, rows: int) -> tuple[Any, list[Any]]:
  cols = 2 if n > 1 else 1
  nrow = -(-n // cols)
  fig, axes = plt.subplots(nrow, cols, squeeze=False,
                           figsize=(6.2 * cols, 0.9 + nrow * (0.8 + 0.32 * rows)))
  axes = list(axes.ravel())
  for ax in axes[n:]:
    fig.delaxes(ax)
  return fig, axes[:n]


def _split_colors(splits: Sequence[str]) -> dict[str, Any]:
  cmap = _pyplot().get_cmap("tab10")
  return {s: cmap(i % 10) for i, s in enumerate(splits)}


def _finish(plt: Any, fig: Any, path: str, handles_from: Any, title: str) -> None:
  handles, labels = handles_from.get_legend_handles_labels()
  fig.suptitle(title, fontsize=10)
  fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8,
             frameon=False)
  h = fig.get_figheight()
  fig.tight_layout(rect=(0, 0.45 / h, 1, 1 - 0.35 / h))  # room for the legend and title
  _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: str) -> None:
  """A PNG through the storage layer (a gs:// run directory too)."""
  with storage.open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)


def plot_variants(path: str, variants: Mapping[str, Any], order: Sequence[str],
                  title: str = "mean over seeds, 95% interval") -> None:
  """variants.png: one panel per metric held, variants as rows, splits side by side.

  A greedy judgment `results.no_answer` says was never given is not drawn (the
  table shows "—").
  """
  order = [v for v in order if v in variants]
  splits = sorted({s for v in order for s in variants[v]})
  metrics = results.metric_order({m for v in order for ms in variants[v].values() for m in ms})
  plt = _pyplot()
  fig, axes = _grid(plt, len(metrics), len(order))
  colors = _split_colors(splits)
  for ax, metric in zip(axes, metrics):
    def cell(v: str, split: str) -> Mapping[str, Any] | None:
      if metric == "judgment_accuracy" and results.no_answer(variants[v].get(split, {})):
        return None
      return variants[v].get(split, {}).get(metric)
    _forest(ax, order, splits, cell, colors)
    if metric == "judgment_accuracy":
      for i, v in enumerate(order):
        if any(results.no_answer(e) for e in variants[v].values() if metric in e):
          ax.text(1, i, "never answered", va="center", fontsize=7, color="grey")
    ax.set_xlim(-3, 103)
    ax.set_xlabel("%")
    ax.set_title(results.label(metric), fontsize=10)
  if metrics:
    _finish(plt, fig, path, _legend_source(axes), title)
  else:
    plt.close(fig)


def plot_deltas(path: str, paired: Mapping[str, Any],
                title: str = "paired per-seed deltas, mean and 95% t-interval over seeds"
                ) -> None:
  """deltas.png: a forest plot per metric, one row per pair, splits side by side."""
  pairs = list(paired)
  splits = sorted({s for p in pairs for s in paired[p]})
  metrics = results.metric_order({m for p in pairs for ms in paired[p].values() for m in ms})
  if not metrics:
    return
  plt = _pyplot()
  fig, axes = _grid(plt, len(metrics), len(pairs))
  colors = _split_colors(splits)
  for ax, metric in zip(axes, metrics):
    rows = [p for p in pairs if any(metric in paired[p].get(s, {}) for s in splits)]
    cell = lambda p, split: paired[p].get(split, {}).get(metric)
    _forest(ax, rows, splits, cell, colors)
    ax.axvline(0.0, color="black", lw=0.8)
    lo, hi = ax.get_xlim()
    span = max(abs(lo), abs(hi), 5.0)
    ax.set_xlim(max(-span, -105), min(span, 105))  # a difference of rates lies in ±100
    ax.set_xlabel("difference, points")
    ax.set_title(results.label(metric), fontsize=10)
  _finish(plt, fig, path, _legend_source(axes), title)


def _legend_source(axes: Sequence[Any]) -> Any:
  """The panel whose legend names the most splits (every panel uses the same colours)."""
  return max(axes, key=lambda ax: len(ax.get_legend_handles_labels()[1]))


def _running_mean(y: np.ndarray, w: int) -> np.ndarray:
  if len(y) < 2 * w:
    return y
  c = np.cumsum(np.insert(y, 0, 0.0))
  head = c[1:w] / np.arange(1, w)
  return np.concatenate([head, (c[w:] - c[:-w]) / w])


def _stage_name(run: str) -> str:
  """"s2/act_il" -> "act_il": seeds of one stage share a colour and a legend entry."""
  head, _, tail = run.partition("/")
  return tail if tail and head[:1] == "s" and head[1:].isdigit() else run


def plot_curves(path: str, curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
  """curves.png: one panel per kind of metric some run logged; empty kinds are left out."""
  grpo = {run for run, rows in curves.items() if any(k in r for r in rows for k in _GRPO_KEYS)}
  which = {"ce": lambda r: r not in grpo, "grpo": lambda r: r in grpo, "all": lambda r: True}
  panels = []
  for title, keys, runs, ylim in CURVE_PANELS:
    series = [(run, key) for run in curves if which[runs](run) for key in keys
              if any(key in r for r in curves[run])]
    if series:
      panels.append((title, series, ylim))
  if not panels:
    return
  names = sorted({_stage_name(r) for r in curves})
  cmap = _pyplot().get_cmap("tab20")  # dark shades first, then the light ones
  color = {n: cmap((2 * i) % 20 + (2 * i // 20) % 2) for i, n in enumerate(names)}
  last = max(r["step"] for rows in curves.values() for r in rows)
  plt = _pyplot()
  cols = min(len(panels), 3)
  nrow = -(-len(panels) // cols)
  fig, axes = plt.subplots(nrow, cols, squeeze=False,
                           figsize=(4.6 * cols + 1.8, 3.0 * nrow + 0.4))
  axes = list(axes.ravel())
  for ax in axes[len(panels):]:
    fig.delaxes(ax)
  seen: dict[str, Any] = {}
  for ax, (title, series, ylim) in zip(axes, panels):
    many_keys = len({k for _, k in series}) > 1
    for run, key in series:
      pts = np.asarray([(r["step"], r[key]) for r in curves[run] if key in r], np.float64)
      name = _stage_name(run)
      line, = ax.plot(pts[:, 0], _running_mean(pts[:, 1], SMOOTH), lw=0.9, alpha=0.8,
                      color=color[name], ls="--" if many_keys and key != series[0][1] else "-")
      seen.setdefault(name, line)
    ax.set_title(title if not many_keys else
                 f"{title}: " + ", ".join(f"{k} ({'solid' if i == 0 else 'dashed'})"
                                          for i, k in enumerate(dict.fromkeys(k for _, k in series))),
                 fontsize=9)
    if ylim:
      ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.set_xlim(0, last)  # one step axis for every panel
    ax.set_xlabel("step")
  fig.legend(list(seen.values()), list(seen), loc="center right", fontsize=8, frameon=False,
             title="stage (all seeds)", title_fontsize=8)
  fig.suptitle(f"training curves (running mean over {SMOOTH} logged steps)", fontsize=10)
  fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 0.96))
  _save(plt, fig, path)
