"""The paper's stage budgets priced from `act_jax.aot` reports: a wall-time bound.

Prints each program's row (docs/tpu_aot.md's columns), then the stages whose programs
are all in the reports:

  python benchmarks/aot_price.py --config configs/paper_qwen3_8b.py \\
      docs/aot/v5p_base.json docs/aot/v5p_4x4x4_rest.json docs/aot/v5p_ref_logps_fixed.json

Reports given later replace earlier rows of the same program. A report's HBM term
counts loop trip counts (`hlo_stats.bytes_accessed`) when its rows have
`xla_cost_bytes_accessed`; rows of older reports took XLA's count, a scanned layer loop
once, and are named below the table (whole only for unrolled compiles and the sampler's
programs): give an unrolled compile's report after them
(`--config.model.scan_layers=False`), or rerun them. A step's time is its roofline
bound (`roofline.step_s`: the largest of compute, HBM and ICI time), so the totals
ignore the host, the data pipeline, environment rollouts, evaluation and overlap
losses, and take every GRPO completion to run its whole `max_new_tokens`:

  il step    il_step
  GRPO step  <p>_update + <p>_ref_logps (beta > 0) + prefill + max_new_tokens x decode_step

(p = critic for the act stage, rl for rl; rl takes the critic's rows when the two
stages' GRPO and train settings are equal: `act_jax.aot` then compiles them once and
copies its rows).
A seed runs each distinct chain prefix of `pipeline.variants` once (`act_jax.chains`):
the act stage shared by act, il_w_act and rl_w_act is run once.
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def load_rows(paths: list[str]) -> dict[str, dict[str, Any]]:
  """{program: row}, later files winning."""
  rows: dict[str, dict[str, Any]] = {}
  for path in paths:
    for r in json.loads(Path(path).read_text())["programs"]:
      rows[r["program"]] = r
  return rows


def stage_runs(config) -> dict[str, int]:
  """{section: runs per seed}: each distinct chain prefix of the config's variants once."""
  from act_jax import chains
  prefixes = {chains.CHAINS[v][:i + 1] for v in chains.variants(config)
              for i in range(len(chains.CHAINS[v]))}
  out: dict[str, int] = {}
  for p in prefixes:
    section = chains.SECTION.get(p[-1], p[-1])
    out[section] = out.get(section, 0) + 1
  return out


def step_seconds(config, stage: str, rows: dict[str, dict[str, Any]]) -> tuple[float, str]:
  """One step's roofline seconds and how it was summed."""
  from act_jax import aot
  t = lambda name: rows[name]["roofline"]["step_s"]
  if stage == "il":
    return t("il_step"), f"il_step {t('il_step') * 1e3:.0f} ms"
  scs = aot.stage_configs(config)
  prefix = {"act": "critic", "rl": "rl"}[stage]
  same = lambda a, b: (scs[a].grpo.to_dict() == scs[b].grpo.to_dict()
                       and scs[a].train.to_dict() == scs[b].train.to_dict())
  if prefix == "rl" and "act" in scs and same("act", "rl"):
    prefix = "critic"
  g = scs[stage].grpo
  parts = [(f"{prefix}_update", t(f"{prefix}_update"))]
  if g.beta > 0:
    parts.append((f"{prefix}_ref_logps", t(f"{prefix}_ref_logps")))
  parts.append(("prefill", t("prefill")))
  parts.append((f"{g.max_new_tokens} x decode_step ({t('decode_step') * 1e3:.1f} ms)",
                g.max_new_tokens * t("decode_step")))
  total = sum(s for _, s in parts)
  return total, " + ".join(f"{n} {s:.2f} s" for n, s in parts) + f" = {total:.1f} s"


def fmt(seconds: float) -> str:
  return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def program_row(r: dict[str, Any]) -> str:
  """| program | mesh | GiB/chip (temp) | TFLOP/chip (/analytic) | coll GB: top two |
  roofline ms (bound) | MFU |, as docs/tpu_aot.md's tables have them."""
  m, mesh = r["per_chip_bytes"], "x".join(str(v) for v in r["mesh"].values())
  top = sorted(((v["bytes"], k, v["count"]) for k, v in r["collectives"].items()
                if v["count"]), reverse=True)[:2]
  coll = f"{r['collective_bytes'] / 1e9:.1f}: " + ", ".join(
      f"{k} {int(n)}x {b / 1e9:.1f}" for b, k, n in top)
  ratio = f" ({r['flops_ratio']:.2f})" if r.get("flops_ratio") else ""
  return (f"| {r['program']} | {mesh} | {m['total'] / 2**30:.2f} ({m['temp'] / 2**30:.2f}) "
          f"of {r['hbm_bytes'] / 2**30:.0f} | {r['flops'] / 1e12:.1f}{ratio} | {coll} | "
          f"{r['roofline']['step_s'] * 1e3:.0f} ({r['roofline']['bound']}) | "
          f"{(r['mfu'] or 0):.0%} | {r['compile_s']:.0f} s |")


def price(config, rows: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, float]]:
  """(stage, steps, per step, seconds) rows, then one seed and all seeds."""
  runs = stage_runs(config)
  out, seed = [], 0.0
  for stage in ("il", "act", "rl"):
    if stage not in runs:
      continue
    steps = int(config.stages[stage].steps)
    per, how = step_seconds(config, stage, rows)
    out.append((stage, str(steps), how, steps * per))
    seed += runs[stage] * steps * per
  what = ", ".join(f"{s} x{n}" for s, n in sorted(runs.items()))
  out.append((f"one seed ({what})", "", "", seed))
  seeds = int(config.pipeline.seeds)
  out.append((f"{seeds} seeds", "", "", seeds * seed))
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", required=True, help="an experiment config file")
  ap.add_argument("reports", nargs="+", help="act_jax.aot --out JSON files")
  a = ap.parse_args()
  config = runpy.run_path(a.config)["get_config"]()
  rows = load_rows(a.reports)
  chips = {(r["topology"], r["chip"]) for r in rows.values()}
  print(f"{' / '.join(f'{t} ({c})' for t, c in sorted(chips))}")
  print("| program | mesh | GiB/chip (temp) of HBM | TFLOP/chip (/analytic) | coll GB/step: top "
        "| roofline ms (bound) | MFU | compile |\n|---|---|---|---|---|---|---|---|")
  for r in rows.values():
    print(program_row(r))
  body_once = [r["program"] for r in rows.values() if "xla_cost_bytes_accessed" not in r]
  if body_once:
    print(f"\nHBM bytes from XLA's count, each loop body once (reports before act_jax.aot "
          f"counted trip counts; whole only if unrolled or loop-free): {', '.join(body_once)}")
  try:
    priced = price(config, rows)
  except KeyError as e:
    print(f"\nstages not priced: no {e.args[0]} row in the reports")
    return
  print("\n| stage | steps | per step | wall (bound) |\n|---|---|---|---|")
  for r in priced:
    print("| " + " | ".join((*r[:3], fmt(r[3]))) + " |")


if __name__ == "__main__":
  main()
