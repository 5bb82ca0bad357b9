#!/usr/bin/env python
"""`il` against `il_w_act` as expert data shrinks, from scratch.

    python benchmarks/data_efficiency.py                      # 25 / 50 / 100 / 300 per game
    python benchmarks/data_efficiency.py --sizes 25,100 --seeds 2 --workdir runs/de

For each size N the README's embedded config runs as one pipeline
(`act_jax.pipeline`, resumable: rerun the command to continue) with
`env.train_per_game=N` and variants `il,il_w_act`, in `<workdir>/n<N>`: its own
trajectories, tokenizer, datasets, random-play θ0 and seeds, the stage budgets
(steps x batch) of the embedded config unchanged, so smaller N means more epochs over
less data. `--reuse N=DIR` takes size N's results from a finished pipeline workdir of
the same config (e.g. the main job's 300), instead of recomputing them.

Writes `<workdir>/data_efficiency.{json,md,png}`: per size, each variant's ID and OOD
next-action accuracy and success (mean and 95% t-interval over seeds) and the paired
per-seed delta `il_w_act - il` with its t-interval; and each IL stage's final training
loss and the step at which it crossed the copy plateau (`il_losses`). The ACT paper's claim is that
ACT helps most out of distribution; the table says whether the delta grows as expert
data shrinks.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from act_jax import loop, pipeline, stats  # noqa: E402
from act_jax.metrics import read_jsonl  # noqa: E402

METRICS = ("next_action_accuracy", "success_rate")
PAIR = "il_w_act - il"
WINDOW, CROSSED = 20, 0.05  # running mean over 20 steps; "crossed" the copy plateau below 0.05


def load_config(path: Path, size: int, seeds: int, overrides: list[str]):
  import importlib.util
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.env.train_per_game = size
  c.pipeline.update(dict(variants="il,il_w_act", seeds=seeds, export=False))
  for o in overrides:  # field=value, parsed as the command line would
    key, value = o.split("=", 1)
    *parents, leaf = key.removeprefix("config.").split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(json.loads(value)) if not isinstance(node[leaf], str) else value
  return c


def summary(results: dict) -> dict:
  """One size's row: each variant's metrics and the paired delta, ID / OOD, rank mode."""
  row = {}
  for split, entry in results["variants"]["il"].items():
    if "[" in split:  # another policy mode
      continue
    row[split] = {}
    for m in METRICS:
      row[split][m] = {v: results["variants"][v][split].get(m) for v in ("il", "il_w_act")}
      row[split][m]["delta"] = results["deltas"][PAIR][split].get(m)
  return row


def il_losses(workdir: Path, seeds: int) -> dict:
  """Per variant and seed, the IL stage's training loss: its mean over the last
  WINDOW steps, and the first step at which its running mean fell below CROSSED.

  From scratch, IL sits on a plateau (~0.2: the action's form without its object) until
  the model learns to copy the object from the observation; when that happens varies
  by seed, so success alone cannot tell a slower start from a worse model."""
  out = {}
  for v in ("il", "il_w_act"):
    out[v] = {"final": {}, "crossed": {}}
    for seed in range(seeds):
      step = pipeline.chain_key(seed, pipeline.CHAINS[v])  # the chain ends in its IL stage
      rows = [r for r in read_jsonl(str(workdir / step / "metrics.jsonl"))
              if "loss" in r]
      loss = np.asarray([r["loss"] for r in rows])
      run = np.convolve(loss, np.ones(WINDOW) / WINDOW, "valid")
      below = np.flatnonzero(run < CROSSED)
      out[v]["final"][seed] = float(loss[-WINDOW:].mean())
      out[v]["crossed"][seed] = int(rows[below[0] + WINDOW - 1]["step"]) if len(below) else None
  out["delta_final"] = stats.paired_deltas(out["il_w_act"]["final"], out["il"]["final"])
  return out


def pct(x: dict | None) -> str:
  if not x:
    return "-"
  lo, hi = x["ci95"]
  return f"{100 * x['mean']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def markdown(rows: dict[int, dict]) -> str:
  lines = ["| trajectories / game | split | metric | il | il_w_act | il_w_act - il (paired) "
           "| per seed |", "|---|---|---|---|---|---|---|"]
  for n, row in sorted(rows.items()):
    for split, metrics in row.items():
      if split == "il_loss":
        continue
      for m, cells in metrics.items():
        d = cells["delta"]
        per = " / ".join(f"{100 * x:+.1f}" for x in d["per_seed"]) if d else "-"
        lines.append(f"| {n} | {split} | {m.replace('_', ' ')} | {pct(cells['il'])} | "
                     f"{pct(cells['il_w_act'])} | {pct(d)} | {per} |")
  lines += ["", f"IL stage's training loss (mean of its last {WINDOW} steps; the step at which "
            f"its {WINDOW}-step running mean first fell below {CROSSED}, per seed, - = never):",
            "", "| trajectories / game | il final loss | il_w_act final loss | il_w_act - il "
            "(paired) | il crossed at | il_w_act crossed at |", "|---|---|---|---|---|---|"]
  for n, row in sorted(rows.items()):
    il = row["il_loss"]
    cell = lambda v: f"{np.mean(list(il[v]['final'].values())):.3f}"
    crossed = lambda v: " / ".join("-" if x is None else str(x) for x in il[v]["crossed"].values())
    d = il["delta_final"]
    lines.append(f"| {n} | {cell('il')} | {cell('il_w_act')} | {d['mean']:+.3f} "
                 f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | {crossed('il')} | "
                 f"{crossed('il_w_act')} |")
  return "\n".join(lines) + "\n"


def plot(path: Path, rows: dict[int, dict]) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  sizes = sorted(rows)
  splits = [k for k in rows[sizes[0]] if k != "il_loss"]
  fig, axes = plt.subplots(2, len(splits), figsize=(5 * len(splits), 7), squeeze=False)
  for j, split in enumerate(splits):
    for v, style in (("il", "o-"), ("il_w_act", "s-")):
      y = [100 * rows[n][split]["next_action_accuracy"][v]["mean"] for n in sizes]
      lo = [100 * rows[n][split]["next_action_accuracy"][v]["ci95"][0] for n in sizes]
      hi = [100 * rows[n][split]["next_action_accuracy"][v]["ci95"][1] for n in sizes]
      axes[0, j].plot(sizes, y, style, label=v)
      axes[0, j].fill_between(sizes, lo, hi, alpha=0.15)
    axes[0, j].set_title(f"{split}: next-action accuracy (%)")
    d = [rows[n][split]["next_action_accuracy"]["delta"] for n in sizes]
    axes[1, j].errorbar(sizes, [100 * x["mean"] for x in d],
                        yerr=[[100 * (x["mean"] - x["ci95"][0]) for x in d],
                              [100 * (x["ci95"][1] - x["mean"]) for x in d]], fmt="o-", capsize=4)
    axes[1, j].axhline(0, color="gray", lw=0.8)
    axes[1, j].set_title(f"{split}: il_w_act - il, paired (points)")
    for ax in axes[:, j]:
      ax.set_xscale("log")
      ax.minorticks_off()
      ax.set_xticks(sizes, [str(n) for n in sizes])
      ax.set_xlabel("expert trajectories per game")
  axes[0, 0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default=str(ROOT / "configs" / "embedded.py"))
  ap.add_argument("--sizes", default="25,50,100,300")
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--workdir", default="runs/data_efficiency")
  ap.add_argument("--reuse", action="append", default=[],
                  help="N=DIR: size N's results.json from a finished pipeline workdir")
  ap.add_argument("--set", action="append", default=[],
                  help="config override field=value (JSON value), e.g. eval.episodes_per_game=5")
  args = ap.parse_args()
  work = Path(args.workdir)
  reuse = {int(k): Path(v) for k, v in (r.split("=", 1) for r in args.reuse)}
  work.mkdir(parents=True, exist_ok=True)
  loop.setup_process(str(work))
  rows = {}
  for n in (int(s) for s in args.sizes.split(",")):
    run_dir = reuse.get(n, work / f"n{n}")
    if n in reuse:
      results = json.loads((run_dir / "results.json").read_text())
    else:
      c = load_config(Path(args.config), n, args.seeds, args.set)
      print(f"== {n} expert trajectories per game -> {run_dir}", flush=True)
      results = pipeline.Pipeline(c, str(run_dir)).run()
    rows[n] = {**summary(results), "il_loss": il_losses(run_dir, args.seeds)}
  (work / "data_efficiency.json").write_text(json.dumps(rows, indent=2))
  table = markdown(rows)
  (work / "data_efficiency.md").write_text(table)
  plot(work / "data_efficiency.png", rows)
  print(table)


if __name__ == "__main__":
  main()
