#!/usr/bin/env python
"""A model's per-chip bytes, FLOPs and collectives at full depth, from two shallow compiles.

When the full model's compile is out of reach (minutes per program on a busy host),
compile it with two depths (`python -m act_jax.aot --layers 2 --out a.json`, then
`--layers 4 --out b.json`) and extend each program's numbers linearly in the depth:
with scanned, rematerialised layers every layer adds the same parameters, optimiser
state, saved activations, matmuls and collectives, and what does not grow with depth
(embedding, head, one layer's working set) is the intercept.

    python benchmarks/aot_depth.py a.json b.json --depths 2 4 --layers 36
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from act_jax import chips  # noqa: E402


def extend(a: float, b: float, la: int, lb: int, layers: int) -> float:
  return a + (b - a) * (layers - la) / (lb - la)


def extrapolate(rows_a: list[dict[str, Any]], la: int, rows_b: list[dict[str, Any]], lb: int,
                layers: int) -> list[dict[str, Any]]:
  """Per program (present in both): total GiB per chip, FLOPs, collective bytes, and
  the roofline of those at `layers` (no HBM term where the reports have none)."""
  by_name = {r["program"]: r for r in rows_b}
  out = []
  for a in rows_a:
    b = by_name.get(a["program"])
    if b is None:
      continue
    f = lambda get: extend(get(a), get(b), la, lb, layers)
    chip = next(c for c in chips.CHIPS.values() if c.name == a["chip"])
    acc = (f(lambda r: r["bytes_accessed"]) if a["bytes_accessed"] is not None else 0.0)
    total = f(lambda r: r["per_chip_bytes"]["total"])
    flops = f(lambda r: r["flops"])
    coll = f(lambda r: r["collective_bytes"])
    out.append({"program": a["program"], "gib": total / 2**30, "fits": total <= a["hbm_bytes"],
                "tflop": flops / 1e12, "coll_gb": coll / 1e9,
                "roofline": chips.roofline(chip, flops, acc, coll)})
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("shallow", help="aot --out JSON of the shallower compile")
  p.add_argument("deeper", help="aot --out JSON of the deeper compile")
  p.add_argument("--depths", type=int, nargs=2, required=True,
                 help="the two compiles' --layers")
  p.add_argument("--layers", type=int, required=True, help="the depth to extend to")
  args = p.parse_args()
  reports = [json.loads(Path(x).read_text()) for x in (args.shallow, args.deeper)]
  depths = args.depths
  print(f"{'program':<18}{'GiB/chip':>9}{'fits':>6}{'TFLOP/chip':>11}{'coll GB':>9}"
        f"{'step ms':>9}{'bound':>8}")
  for r in extrapolate(reports[0]["programs"], depths[0], reports[1]["programs"], depths[1],
                       args.layers):
    print(f"{r['program']:<18}{r['gib']:>9.1f}{'yes' if r['fits'] else 'NO':>6}"
          f"{r['tflop']:>11.1f}{r['coll_gb']:>9.2f}{r['roofline']['step_s'] * 1e3:>9.0f}"
          f"{r['roofline']['bound']:>8}")


if __name__ == "__main__":
  main()
