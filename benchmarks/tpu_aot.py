"""Our Qwen3-8B train step beside MaxText's, both compiled ahead of time for one TPU slice.

  python benchmarks/tpu_aot.py [--topology v5p:4x4x4] [--batch-per-chip 1] [--seq 4096]
      [--attention splash|xla] [--same-compiler] [--skip-grpo] [--out rows.json]

Same model (Qwen3-8B, float32 weights and Adam moments, bfloat16 compute, full remat,
scanned layers), same global batch (`--batch-per-chip` x chips rows of `--seq` tokens,
the loss on every position), same topology, all-fsdp meshes on both sides, the same
attention kind (`--attention`: `splash` is MaxText's TPU default, its `flash` = the
Pallas splash kernel, against our `model.attention="splash"`; `xla` is its
`dot_product` against our einsum attention). Per side: per-chip HBM
(`memory_analysis`), matmul FLOPs per chip (`act_jax.hlo_stats`: XLA's cost analysis
counts a scanned layer once; a Pallas kernel's FLOPs are in neither side's count), the
collectives, and the jax / jaxlib / libtpu that compiled it. Ours also compiles the
GRPO update (`grpo_update`, not its reference pass).

The anchor is MaxText 0.2.5's `train_compile` (its `jit_and_compile`, patched to hand
back the compiled step) in its own virtualenv, since it needs Python >= 3.12 and a
newer jax/libtpu than ours:
  python3.12 -m venv benchmarks/.venv-maxtext   # any Python >= 3.12
  benchmarks/.venv-maxtext/bin/pip install "maxtext[tpu]==0.2.5"
`--same-compiler` also compiles our step in that venv (act_jax imports there), so the
two sides can be compared with one XLA. The last line is
`hbm_ratio_vs_anchor=<ours / MaxText per-chip bytes>` for the IL step, ours compiled
by this interpreter.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# --attention: ours (model.attention) -> MaxText's `attention`.
MAXTEXT_ATTENTION = {"splash": "flash", "xla": "dot_product"}


def versions() -> str:
  """The packages that compiled a side (its XLA is jaxlib's, the TPU compiler libtpu's),
  and whether the libtpu.so loaded (TPU_LIBRARY_PATH, set on import) is this venv's."""
  loaded = os.environ.get("TPU_LIBRARY_PATH")
  own = not loaded or Path(loaded).resolve().is_relative_to(Path(sys.prefix).resolve())
  return (" ".join(f"{p} {metadata.version(p)}" for p in ("jax", "jaxlib", "libtpu"))
          + ("" if own else " (but ANOTHER venv's libtpu.so loaded)"))


def summary(compiled, chips: int) -> dict:
  """Per-chip bytes, matmul FLOPs and collectives of one compiled program."""
  from act_jax import hlo_stats
  text = compiled.as_text()
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
           + m.temp_size_in_bytes + m.generated_code_size_in_bytes)
  return {"per_chip_bytes": total, "arguments": m.argument_size_in_bytes,
          "temp": m.temp_size_in_bytes, "flops": hlo_stats.flops(text), "chips": chips,
          "collectives": hlo_stats.collectives(text),
          "largest_buffers": hlo_stats.largest_buffers(text, 8)}


def ours(topology: str, per_chip: int, seq: int, attention: str, grpo: bool) -> dict:
  from act_jax import aot, config_lib
  c = config_lib.base()
  c.model_preset = "qwen3-8b"
  c.model.update(dict(param_dtype="float32", dtype="bfloat16", remat=True, scan_layers=True,
                      attention=attention))
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  devices = aot.topology_devices(topology)
  c.train.batch_size = per_chip * len(devices)
  ctx = aot.context(c, devices)
  out = {"il_step": summary(aot.il_program(ctx, c, aot.Lengths(seq - 64, 64),
                                           every_position=True).compiled, len(devices))}
  if grpo:
    c.grpo = config_lib.grpo(max_new_tokens=seq // 2, group_size=8, beta=1e-3)
    rows = max(per_chip * len(devices) // 8, 1)
    for p in aot.grpo_programs(ctx, c, aot.Lengths(seq // 2, 64), "grpo", batch_size=rows,
                               only=["grpo_update"]):
      out[p.name] = summary(p.compiled, len(devices))
  return {"versions": versions(), "programs": out}


def maxtext(topology: str, per_chip: int, seq: int, attention: str) -> dict:
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
           "ici_fsdp_parallelism=-1", "enable_checkpointing=false", "base_output_directory=/tmp",
           f"attention={MAXTEXT_ATTENTION[attention]}", "scan_layers=true"])
  return {"versions": versions(),
          "programs": {"il_step": summary(captured["compiled"], chips)}}


def run_side(python: Path, side: str, a: argparse.Namespace) -> dict:
  """`side` ("maxtext" or "ours") compiled by `python` in a subprocess."""
  with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / f"{side}.json"
    cmd = [str(python), __file__, "--side", side, "--side-out", str(out),
           "--topology", a.topology, "--batch-per-chip", str(a.batch_per_chip),
           "--seq", str(a.seq), "--attention", a.attention, "--skip-grpo"]
    print(f"[{side}]", " ".join(cmd), flush=True)
    # Importing libtpu sets TPU_LIBRARY_PATH to this interpreter's libtpu.so: the other
    # venv's jax must load its own (else jax 0.12 runs our libtpu 0.0.42.1).
    env = {k: v for k, v in os.environ.items() if k != "TPU_LIBRARY_PATH"}
    subprocess.run(cmd, check=True, env=env)
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
  ap.add_argument("--attention", choices=sorted(MAXTEXT_ATTENTION), default="splash")
  ap.add_argument("--maxtext-python", default="benchmarks/.venv-maxtext/bin/python")
  ap.add_argument("--same-compiler", action="store_true",
                  help="also compile ours with the MaxText venv's jax/libtpu")
  ap.add_argument("--skip-grpo", action="store_true")
  ap.add_argument("--out", help="also write every side's rows (largest buffers too) here")
  ap.add_argument("--side", choices=("maxtext", "ours"), help=argparse.SUPPRESS)
  ap.add_argument("--side-out", help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.side:
    r = (maxtext(a.topology, a.batch_per_chip, a.seq, a.attention) if a.side == "maxtext"
         else ours(a.topology, a.batch_per_chip, a.seq, a.attention, False))
    Path(a.side_out).write_text(json.dumps(r))
    return
  python = ROOT / a.maxtext_python
  if not python.exists():
    sys.exit(f"{python} not found: see this file's docstring for the MaxText venv")
  theirs = run_side(python, "maxtext", a)
  mine = ours(a.topology, a.batch_per_chip, a.seq, a.attention, not a.skip_grpo)
  print(f"Qwen3-8B, {a.topology}, {a.batch_per_chip} x {a.seq} tokens per chip, "
        f"attention {a.attention} (MaxText {MAXTEXT_ATTENTION[a.attention]})")
  sides = [("maxtext", theirs), ("ours", mine)]
  il = lambda r, key: r["programs"]["il_step"][key]
  if a.same_compiler:
    try:
      same = run_side(python, "ours", a)
      sides.append(("ours@maxtext-venv", same))
    except subprocess.CalledProcessError:  # its error is above; the two sides still stand
      print("ours@maxtext-venv: failed to compile (error above)")
  for side, r in sides:
    print(f"{side}: {r['versions']}")
    for name, row in r["programs"].items():
      print(line(f"{side} {name}", row))
  if a.out:
    Path(a.out).write_text(json.dumps(dict(sides), indent=1))
  if len(sides) == 3:
    print(f"same_compiler: flops_ratio={il(same, 'flops') / il(theirs, 'flops'):.3f} "
          f"hbm_ratio={il(same, 'per_chip_bytes') / il(theirs, 'per_chip_bytes'):.3f}")
  print(f"flops_ratio_vs_anchor={il(mine, 'flops') / il(theirs, 'flops'):.3f}")
  print(f"hbm_ratio_vs_anchor={il(mine, 'per_chip_bytes') / il(theirs, 'per_chip_bytes'):.3f}")


if __name__ == "__main__":
  main()
