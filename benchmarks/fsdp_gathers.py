"""Why FSDP weight gathers became all-reduces: a two-matmul scanned stack, compiled
ahead of time for a TPU slice at several fsdp sizes, with and without the slice's
wraparound links.

  python benchmarks/fsdp_gathers.py [--topology v5p:4x4x4] [--fsdp 64,32,16]

Each layer multiplies batch-split activations [rows, T, D] by float32 weights stacked
on a leading layer axis and split on D over `fsdp` (our `embed` rule), cast to bf16
inside the layer, as `act_jax.models.decoder` does; the forward only, no remat. Per
fsdp size (data fills the rest of the slice) and per slice description (with the
wraparound links `act_jax.aot.topology` now gives it, and without them, libtpu's
default) it prints the all-gathers and all-reduces of the HLO just before and just
after XLA:TPU's `all_gather_decomposer` pass (read from an `--xla_dump_to` dump) and of
the optimised program. The SPMD partitioner gathers the weights with all-gathers every
time; without wraparound, at fsdp = all 64 chips of v5p:4x4x4, that pass rewrites each
into an all-reduce of a zero-padded buffer (docs/tpu_aot.md, Anchor: MaxText).
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
DUMP = tempfile.mkdtemp(prefix="fsdp_gathers_")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={DUMP}"
                           " --xla_dump_hlo_pass_re=all_gather_decomposer")

import jax  # noqa: E402  (after XLA_FLAGS)
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from act_jax import aot, hlo_stats, sharding  # noqa: E402

LAYERS, T, D, F = 2, 512, 1024, 4096


def forward(w, x):
  def layer(x, w):
    w1, w2 = (a.astype(jnp.bfloat16) for a in w)
    h = jax.nn.silu(jnp.einsum("btd,df->btf", sharding.constrain_rows(x), w1))
    return sharding.constrain_rows(x + jnp.einsum("btf,fd->btd", h, w2)), None

  x, _ = jax.lax.scan(layer, x, w)
  return jnp.mean(jnp.square(x.astype(jnp.float32)))


def counts(hlo: str) -> str:
  c = hlo_stats.collectives(hlo)
  return " ".join(f"{k} {int(c[k]['count'])}" for k in ("all-gather", "all-reduce"))


def compile_one(devices: list, fsdp: int, name: str) -> str:
  """The collectives before / after the decomposer and in the optimised program."""
  mesh = sharding.make_mesh({"data": -1, "fsdp": fsdp, "tensor": 1}, devices)
  spec = lambda shape, p: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(mesh, p))
  w = (spec((LAYERS, D, F), P(None, "fsdp")), spec((LAYERS, F, D), P(None, None, "fsdp")))
  x = jax.ShapeDtypeStruct((len(devices), T, D), jnp.bfloat16,
                           sharding=sharding.batch_sharding(mesh, 3))
  body = sharding.with_mesh(forward, mesh)
  body.__name__ = name  # names the HLO module, hence its dump files
  text = jax.jit(body).lower(w, x).compile().as_text()
  passes = sorted(glob.glob(f"{DUMP}/*jit_{name}.*all_gather_decomposer*.txt"))
  before = Path(next(p for p in passes if "before_all_gather_decomposer" in p)).read_text()
  after = Path(next(p for p in passes if "after_all_gather_decomposer" in p)).read_text()
  return (f"mesh {dict(mesh.shape)}: before the decomposer {counts(before)}; after it "
          f"{counts(after)}; optimised {counts(text)}")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--topology", default="v5p:4x4x4")
  ap.add_argument("--fsdp", default="64,32,16", help="comma-separated fsdp sizes")
  a = ap.parse_args()
  from jax.experimental import topologies
  slices = {"wraparound": aot.topology_devices(a.topology),
            "no wraparound": topologies.get_topology_desc(
                topology_name=a.topology, platform="tpu", wrap=(False,) * 3).devices}
  try:
    for fsdp in (int(s) for s in a.fsdp.split(",")):
      for i, (links, devices) in enumerate(slices.items()):
        print(f"{a.topology} {links}: {compile_one(list(devices), fsdp, f'fsdp{fsdp}_{i}')}",
              flush=True)
  finally:
    shutil.rmtree(DUMP, ignore_errors=True)


if __name__ == "__main__":
  main()
