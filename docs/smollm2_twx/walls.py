"""The transfer run's budget table (docs/smollm2.md, part 3): wall seconds per step.

A step's `done.json` holds the seconds of the process that finished it, so a critic
stage resumed across sessions records only its last segment; for a stage with a
`metrics.jsonl` the sum of its rows' intervals (gaps over --gap seconds, the time between
sessions, left out) is taken where it is longer. Reads a workdir or its record:

  python docs/smollm2_twx/walls.py runs/smollm2_twx      # or docs/smollm2_twx/run
"""
import argparse
import collections

from act_jax import metrics, storage


def step_seconds(done: str, gap: float) -> float:
  seconds = storage.read_json(done)["seconds"]
  rows_path = done.replace("done.json", "metrics.jsonl")
  if storage.exists(rows_path):
    rows = metrics.read_jsonl(rows_path)
    if rows and "time" in rows[0]:
      t = [r["time"] for r in rows]
      run = rows[0].get("step_time", 0.0) + sum(b - a for a, b in zip(t, t[1:]) if b - a < gap)
      seconds = max(seconds, run)
  return seconds


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("workdir")
  ap.add_argument("--gap", type=float, default=600.0)
  args = ap.parse_args()
  root = storage.path(args.workdir)
  by_step = collections.defaultdict(list)
  for done in sorted([*root.glob("*/done.json"), *root.glob("s*/*/done.json")]):
    by_step[done.parent.name].append(step_seconds(str(done), args.gap))
  print("| step | runs | wall s each (mean) | min–max | total s |\n|---|---|---|---|---|")
  for name, s in sorted(by_step.items()):
    print(f"| {name} | {len(s)} | {sum(s) / len(s):.0f} | {min(s):.0f}–{max(s):.0f} | {sum(s):.0f} |")
  total = sum(map(sum, by_step.values()))
  print(f"\ntotal {total:.0f} s = {total / 3600:.1f} process-hours")


if __name__ == "__main__":
  main()
