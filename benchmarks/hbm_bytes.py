"""Our HBM bytes per step (`hlo_stats.bytes_accessed`, loop trip counts included)
against XLA's own figure (`cost_analysis()["bytes accessed"]`, each loop body once),
on programs compiled for v5e:2x2 on this host (docs/tpu_aot.md, finding 4):

  JAX_PLATFORMS=cpu python benchmarks/hbm_bytes.py

Rows: single-op programs on one chip and a scanned matmul chain (no loop, or counted
with each loop body once: ours should equal XLA's), then the tests' tiny pipeline
(4 layers) compiled with scanned and unrolled layers (unrolled: no loop, so ours
against XLA's; scanned: ours against the unrolled program's).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from act_jax import aot, hlo_stats  # noqa: E402


def single_chip_programs() -> dict[str, tuple]:
  """{name: (fn, args)} on one v5e chip, shapes whole tiles except where named."""
  chip = jax.sharding.SingleDeviceSharding(aot.topology_devices("v5e:2x2")[0])
  s = lambda *shape, d=jnp.float32: jax.ShapeDtypeStruct(shape, d, sharding=chip)
  bf = jnp.bfloat16
  return {
      "elementwise": (lambda x: x * 2 + 1, (s(2048, 2048),)),
      "elementwise, padded tiles [4,40,4,32]": (lambda x: x * 2 + 1, (s(4, 40, 4, 32),)),
      "transpose": (lambda x: x.T + 1, (s(4096, 2048),)),
      "reduce": (lambda x: x.sum(0), (s(4096, 2048),)),
      "matmul": (lambda x, y: x @ y, (s(2048, 2048, d=bf), s(2048, 2048, d=bf))),
      "dynamic slice": (lambda x, i: jax.lax.dynamic_slice_in_dim(x, i, 1, 0) * 2,
                        (s(16, 1024, 1024), s(d=jnp.int32))),
      "dynamic update slice": (lambda x, y, i: jax.lax.dynamic_update_slice_in_dim(x, y, i, 0),
                               (s(16, 1024, 1024), s(1, 1024, 1024), s(d=jnp.int32))),
      "gather": (lambda e, i: e[i] * 2, (s(4096, 256), s(512, d=jnp.int32))),
      "scatter-add": (lambda e, i, u: e.at[i].add(u), (s(4096, 256), s(512, d=jnp.int32),
                                                      s(512, 256))),
      "log-softmax + take_along_axis [16,40,256]": (
          lambda h, w, t: jnp.take_along_axis(jax.nn.log_softmax(
              (h @ w).astype(jnp.float32), -1), t[..., None], -1),
          (s(16, 40, 32, d=bf), s(32, 256, d=bf), s(16, 40, d=jnp.int32))),
      "scanned matmul chain (8 layers)": (
          lambda w, x: jax.lax.scan(lambda h, wl: (jnp.tanh(h @ wl), None), x, w)[0],
          (s(8, 1024, 1024, d=bf), s(1024, 1024, d=bf))),
  }


def row(name: str, text: str, xla: float, against: float | None = None) -> str:
  ours = hlo_stats.bytes_accessed(text)
  once = hlo_stats.bytes_accessed(text, each_loop_once=True)
  ref = xla if against is None else against
  return (f"| {name} | {ours / 1e6:.3f} | {once / 1e6:.3f} | {xla / 1e6:.3f} | "
          f"{once / xla:.4f} | {ours / ref:.3f} |")


def main() -> None:
  from test_aot import tiny_config  # the tests' tiny pipeline
  print("| program | ours MB | ours, each loop once | XLA MB | once / XLA | ours / reference |\n"
        "|---|---|---|---|---|---|")
  for name, (fn, args) in single_chip_programs().items():
    c = aot.compile_program(fn, args).compiled
    print(row(name, c.as_text(), c.cost_analysis()["bytes accessed"]), flush=True)
  unrolled: dict[str, float] = {}
  for scan in (False, True):  # unrolled first: the scanned rows compare with it
    config = tiny_config(num_layers=4, scan_layers=scan)
    ctx = aot.context(config, aot.topology_devices("v5e:2x2"))
    for p in aot.programs(config, ctx, aot.Lengths.of(config, 8),
                          only=["il_step", "critic_update", "critic_ref_logps", "eval_score"]):
      text = p.compiled.as_text()
      if not scan:
        unrolled[p.name] = hlo_stats.bytes_accessed(text)
      print(row(f"tiny {p.name}, {'scanned (ours / unrolled ours)' if scan else 'unrolled'}",
                text, p.compiled.cost_analysis()["bytes accessed"],
                unrolled[p.name] if scan else None), flush=True)


if __name__ == "__main__":
  main()
