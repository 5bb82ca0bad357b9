"""The critic sweep's curves (docs/smollm2.md): every cell's training and validation
metrics on one figure, and its validation table as JSON; cells of several sweep
directories (e.g. two step budgets) side by side, each named with its budget.

  PYTHONPATH=. python docs/smollm2_twx/sweep_figure.py docs/smollm2_twx/sweep SWEEP_DIR...
"""
import json
import os
import sys

from act_jax import figures, results, storage


def main(out: str, *sweep_dirs: str) -> None:
  curves = {}
  for sweep_dir in sweep_dirs:
    for cell in sorted(os.listdir(sweep_dir)):
      for run, rows in results.read_curves(os.path.join(sweep_dir, cell)).items():
        if any("val_judgment_pairs" in r for r in rows):  # the critic's run, not a later IL
          # "act_blind_lr3e-4_top4" -> "blind lr3e-4 top4, 64 steps"
          name = cell.removeprefix("act_").replace("_", " ")
          curves[f"{name}, {rows[-1]['step']} steps"] = rows
  storage.makedirs(out)
  figures.plot_curves(os.path.join(out, "curves.png"), curves)
  table = {run: [{k: r[k] for k in r if k == "step" or k.startswith("val_")}
                 for r in rows if "val_judgment_pairs" in r] for run, rows in curves.items()}
  storage.write_text(os.path.join(out, "validation.json"), json.dumps(table, indent=1))


if __name__ == "__main__":
  main(*sys.argv[1:])
