"""The critic sweep's curves (docs/smollm2.md): every cell's training and validation
metrics on one figure, and its validation table as JSON.

  PYTHONPATH=. python docs/smollm2_twx/sweep_figure.py SWEEP_DIR docs/smollm2_twx/sweep
"""
import json
import os
import sys

from act_jax import figures, results, storage


def main(sweep_dir: str, out: str) -> None:
  curves = {}
  for cell in sorted(os.listdir(sweep_dir)):
    for run, rows in results.read_curves(os.path.join(sweep_dir, cell)).items():
      if any("val_judgment_pairs" in r for r in rows):  # the critic's run, not a later IL
        # "act_blind_lr3e-4_top4" -> "blind lr3e-4 top4"
        curves[cell.removeprefix("act_").replace("_", " ")] = rows
  storage.makedirs(out)
  figures.plot_curves(os.path.join(out, "curves.png"), curves)
  table = {run: [{k: r[k] for k in r if k == "step" or k.startswith("val_")}
                 for r in rows if "val_judgment_pairs" in r] for run, rows in curves.items()}
  storage.write_text(os.path.join(out, "validation.json"), json.dumps(table, indent=1))


if __name__ == "__main__":
  main(*sys.argv[1:])
