"""Our Qwen3-8B train step beside MaxText's, both compiled ahead of time for one TPU slice.

  python benchmarks/tpu_aot.py [--topology v5p:4x4x4] [--batch-per-chip 1] [--seq 4096]

Same model (Qwen3-8B, float32 weights and Adam moments, bfloat16 compute, full remat),
same global batch (`--batch-per-chip` x chips rows of `--seq` tokens, the loss on every
position), same topology, all-fsdp meshes on both sides. Per side: per-chip HBM
(`memory_analysis`), matmul FLOPs per chip (`act_jax.hlo_stats`: XLA's cost analysis
counts a scanned layer once) and the collectives. Ours also compiles the GRPO update.

The anchor is MaxText 0.2.5's `train_compile` (its `jit_and_compile`, patched to hand
back the compiled step) in its own virtualenv, since it needs Python >= 3.12 and a
newer jax/libtpu than ours:
  python3.12 -m venv benchmarks/.venv-maxtext   # any Python >= 3.12
  benchmarks/.venv-maxtext/bin/pip install "maxtext[tpu]==0.2.5"
The last line is `hbm_ratio_vs_anchor=<ours / MaxText per-chip bytes>` for the IL step.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def summary(compiled, chips: int) -> dict:
  """Per-chip bytes, matmul FLOPs and collectives of one compiled program."""
  from act_jax import hlo_stats
  text = compiled.as_text()
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
           + m.temp_size_in_bytes + m.generated_code_size_in_bytes)
  return {"per_chip_bytes": total, "arguments": m.argument_size_in_bytes,
          "temp": m.temp_size_in_bytes, "flops": hlo_stats.flops(text), "chips": chips,
          "collectives": hlo_stats.collectives(text)}


def ours(topology: str, per_chip: int, seq: int, grpo: bool) -> dict:
  from act_jax import aot, config_lib
  c = config_lib.base()
  c.model_preset = "qwen3-8b"
  c.model.update(dict(param_dtype="float32", dtype="bfloat16", remat=True))
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  devices = aot.topology_devices(topology)
  c.train.batch_size = per_chip * len(devices)
  ctx = aot.context(c, devices)
  out = {"il_step": summary(aot.il_program(ctx, c, aot.Lengths(seq - 64, 64),
                                           every_position=True).compiled, len(devices))}
  if grpo:
    c.grpo = config_lib.grpo(max_new_tokens=seq // 2, group_size=8, beta=1e-3)
    rows = max(per_chip * len(devices) // 8, 1)
    for p in aot.grpo_programs(ctx, c, aot.Lengths(seq // 2, 64), "grpo", batch_size=rows):
      out[p.name] = summary(p.compiled, len(devices))
  return out


def maxtext_side(topology: str, per_chip: int, seq: int, out_path: str) -> None:
  """Runs inside the MaxText venv: its train_compile, the compiled step captured."""
  from maxtext.trainers.pre_train import train_compile as tc
  captured = {}
  original = tc.jit_and_compile

  def capture(*args, **kwargs):
    captured["compiled"] = original(*args, **kwargs)
    return captured["compiled"]

  tc.jit_and_compile = capture
  version, dims = topology.split(":")
  chips = 1
  for d in dims.split("x"):
    chips *= int(d)
  cores = chips * (2 if version in ("v4", "v5p") else 1)  # v4/v5p names count TensorCores
  base = Path(tc.__file__).resolve().parents[2] / "configs" / "base.yml"
  tc.main(["train_compile", str(base), f"compile_topology={version}-{cores}",
           "compile_topology_num_slices=1", "model_name=qwen3-8b",
           f"per_device_batch_size={per_chip}", f"max_target_length={seq}",
           "remat_policy=full", "weight_dtype=float32", "dtype=bfloat16",
           "ici_fsdp_parallelism=-1", "enable_checkpointing=false", "base_output_directory=/tmp"])
  Path(out_path).write_text(json.dumps({"il_step": summary(captured["compiled"], chips)}))


def run_maxtext(python: Path, topology: str, per_chip: int, seq: int) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "maxtext.json"
    cmd = [str(python), __file__, "--maxtext-side", str(out), "--topology", topology,
           "--batch-per-chip", str(per_chip), "--seq", str(seq)]
    print("[maxtext]", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def line(name: str, r: dict) -> str:
  coll = " ".join(f"{k}:{int(v['count'])}/{v['bytes'] / 1e9:.1f}GB"
                  for k, v in r["collectives"].items() if v["count"])
  return (f"{name:<22}{r['per_chip_bytes'] / 2**30:>9.2f} GiB/chip "
          f"(args {r['arguments'] / 2**30:.2f}, temp {r['temp'] / 2**30:.2f})"
          f"{r['flops'] / 1e12:>9.1f} TFLOP/chip  {coll}")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--topology", default="v5p:4x4x4")
  ap.add_argument("--batch-per-chip", type=int, default=1)
  ap.add_argument("--seq", type=int, default=4096)
  ap.add_argument("--maxtext-python", default="benchmarks/.venv-maxtext/bin/python")
  ap.add_argument("--skip-grpo", action="store_true")
  ap.add_argument("--maxtext-side", help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.maxtext_side:
    maxtext_side(a.topology, a.batch_per_chip, a.seq, a.maxtext_side)
    return
  python = ROOT / a.maxtext_python
  if not python.exists():
    sys.exit(f"{python} not found: see this file's docstring for the MaxText venv")
  theirs = run_maxtext(python, a.topology, a.batch_per_chip, a.seq)
  mine = ours(a.topology, a.batch_per_chip, a.seq, not a.skip_grpo)
  print(f"Qwen3-8B, {a.topology}, {a.batch_per_chip} x {a.seq} tokens per chip")
  print(line("maxtext train_step", theirs["il_step"]))
  for name, r in mine.items():
    print(line(f"ours {name}", r))
  flops_ratio = mine["il_step"]["flops"] / theirs["il_step"]["flops"]
  print(f"flops_ratio_vs_anchor={flops_ratio:.3f}")
  print(f"hbm_ratio_vs_anchor="
        f"{mine['il_step']['per_chip_bytes'] / theirs['il_step']['per_chip_bytes']:.3f}")


if __name__ == "__main__":
  main()
