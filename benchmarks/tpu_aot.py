"""Our Qwen3-8B IL step and GRPO update beside MaxText's and Tunix's, compiled for a TPU slice.

  python benchmarks/tpu_aot.py [--topology v5p:4x4x4] [--batch-per-chip 1] [--seq 4096]
      [--attention splash|xla] [--same-compiler] [--skip-grpo] [--skip-tunix]
      [--layers N] [--vocab-tiling N] [--out rows.json]

Same model (Qwen3-8B, float32 weights and Adam moments, bfloat16 compute, full remat,
scanned layers), same global batch (`--batch-per-chip` x chips rows of `--seq` tokens,
the loss on every position), same topology, all-fsdp meshes on both sides, the same
attention kind (`--attention`: `splash` is MaxText's TPU default, its `flash` = the
Pallas splash kernel, against our `model.attention="splash"`; `xla` is its
`dot_product` against our einsum attention). Per side: per-chip HBM
(`memory_analysis`), matmul FLOPs per chip (`act_jax.hlo_stats`: XLA's cost analysis
counts a scanned layer once; a Pallas kernel's FLOPs are in neither side's count), the
collectives, and the jax / jaxlib / libtpu that compiled it. `--vocab-tiling N` computes
the loss's logits in N chunks of positions on both IL sides (MaxText's
`num_vocab_tiling`, our `model.logits_chunk`); Tunix has no such option. Ours also
compiles the GRPO update (`grpo_update`, not its reference pass), beside Tunix 0.1.7's
(`tunix()`: the step its RL Trainer jits, `grpo_loss_fn` wired as GRPOLearner wires
it) on the same mesh, batch and lengths (`grpo_shape`), in the Tunix venv of
benchmarks/tunix_venv.py (created on first use, libtpu included); `--skip-tunix` leaves
it out.

The anchor is MaxText 0.2.5's `train_compile` (its `jit_and_compile`, patched to hand
back the compiled step) in its own virtualenv (its ~235 packages are not ours; its jax,
jaxlib and libtpu are the versions requirements*.txt pin):
  python3.12 -m venv benchmarks/.venv-maxtext   # any Python >= 3.12
  benchmarks/.venv-maxtext/bin/pip install "maxtext[tpu]==0.2.5"
`--same-compiler` also compiles our step in that venv (act_jax imports there), so the
two sides can be compared with one XLA. Before the last lines,
`grpo_hbm_ratio_vs_tunix=<ours / Tunix per-chip bytes>` for the GRPO update. The last
line is `hbm_ratio_vs_anchor=<ours / MaxText per-chip bytes>` for the IL step, ours
compiled by this interpreter. Each side runs in a child process of its venv
(`run_side`, `--side`), its rows handed back as JSON.
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
import tunix_venv  # noqa: E402  (benchmarks/, standard library only: both venvs import it)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# --attention: ours (model.attention) -> MaxText's `attention`.
MAXTEXT_ATTENTION = {"splash": "flash", "xla": "dot_product"}
GROUP = 8  # GRPO completions per prompt


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


def chip_count(topology: str) -> int:
  chips = 1
  for d in topology.split(":")[1].split("x"):
    chips *= int(d)
  return chips


def grpo_shape(per_chip: int, chips: int, seq: int) -> dict:
  """The GRPO update both sides compile: prompts x G completions (`per_chip` rows per
  chip), each row `seq` tokens, half prompt, half completion; KL to a reference (beta),
  DAPO's clip, token-mean aggregation."""
  return dict(prompts=max(per_chip * chips // GROUP, 1), group=GROUP, prompt=seq // 2,
              completion=seq // 2, beta=1e-3, eps_low=0.2, eps_high=0.28)


def ours(topology: str, per_chip: int, seq: int, attention: str, grpo: bool,
         layers: int | None = None, tiling: int = 1) -> dict:
  from act_jax import aot, config_lib
  c = config_lib.base()
  c.model_preset = "qwen3-8b"
  c.model.update(dict(param_dtype="float32", dtype="bfloat16", remat=True, scan_layers=True,
                      attention=attention, logits_chunk=seq // tiling if tiling > 1 else 0))
  if layers:
    c.model.num_layers = layers
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  devices = aot.topology_devices(topology)
  c.train.batch_size = per_chip * len(devices)
  ctx = aot.context(c, devices)
  out = {"il_step": summary(aot.il_program(ctx, c, aot.Lengths(seq - 64, 64),
                                           every_position=True).compiled, len(devices))}
  if grpo:
    g = grpo_shape(per_chip, len(devices), seq)
    c.grpo = config_lib.grpo(max_new_tokens=g["completion"], group_size=g["group"],
                             beta=g["beta"], eps_low=g["eps_low"], eps_high=g["eps_high"],
                             aggregation="token-mean", kl_estimator="k3")
    for p in aot.grpo_programs(ctx, c, aot.Lengths(g["prompt"], 64), "grpo",
                               batch_size=g["prompts"], only=["grpo_update"]):
      out[p.name] = summary(p.compiled, len(devices))
  return {"versions": versions(), "programs": out}


def tunix_shard(x, s):
  """Tunix's `qwen3.model.shard` with its CPU test on the mesh's chips, not on
  `jax.devices()`: compiling for a TPU slice on a CPU host, the original sees the
  host's CPU and drops every activation sharding constraint of the TPU program."""
  import jax
  from jax.interpreters import pxla
  from jax.sharding import NamedSharding, PartitionSpec
  mesh = pxla.thread_resources.env.physical_mesh
  if mesh.empty or mesh.devices.flat[0].platform == "cpu":
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*s)))


def tunix(topology: str, per_chip: int, seq: int, attention: str,
          layers: int | None = None) -> dict:
  """Runs inside the Tunix venv: Tunix's GRPO update (the actor step its Trainer jits:
  forward, `grpo_loss_fn`, gradient, global norm, optimizer update; wired by
  tunix_baseline.grpo_trainer) for Qwen3-8B, abstract, on an fsdp mesh of the slice."""
  import dataclasses
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from jax.sharding import AxisType, NamedSharding, PartitionSpec
  from tunix.models.qwen3 import model as qwen3_lib
  from tunix.rl.grpo import grpo_learner
  import tunix_baseline  # benchmarks/: the Trainer wiring of the CPU benchmark
  from act_jax import aot  # the slice as ours gets it, wraparound links included

  qwen3_lib.shard = tunix_shard
  devices = aot.topology_devices(topology)
  mesh = jax.make_mesh((len(devices), 1), ("fsdp", "tp"), devices=devices,
                       axis_types=(AxisType.Auto,) * 2)
  cfg = dataclasses.replace(
      qwen3_lib.ModelConfig.qwen3_8b(), dtype=jnp.bfloat16, param_dtype=jnp.float32,
      remat_config=qwen3_lib.RematConfig.DECODER, use_flash_attention=attention == "splash")
  if layers:
    cfg.num_layers = layers
  g = grpo_shape(per_chip, len(devices), seq)
  algo = grpo_learner.GRPOConfig(num_generations=g["group"], num_iterations=1,
                                 beta=g["beta"], epsilon=g["eps_low"],
                                 loss_agg_mode="token-mean", kl_loss_mode="low_var_kl")
  algo.epsilon_high = g["eps_high"]  # read by grpo_loss_fn when present
  algo.temperature = 1.0  # GRPOLearner copies the rollout's here
  built = {}

  def build():
    model = qwen3_lib.Qwen3(cfg, rngs=nnx.Rngs(0))
    built["trainer"] = tunix_baseline.grpo_trainer(model, algo)
    return model, built["trainer"].optimizer

  with mesh:
    model, optimizer = nnx.eval_shape(build)
    gdef, state = nnx.split((model, optimizer))
    state_sh = nnx.get_named_sharding(state, mesh)
    train_step = built["trainer"].create_train_step_fn()

    def step(state, example):
      model, optimizer = nnx.merge(gdef, state)
      loss, aux, grad_norm = train_step(model, optimizer, example)
      return nnx.state((model, optimizer)), loss, aux, grad_norm

    rows = NamedSharding(mesh, PartitionSpec("fsdp"))
    N, P, C = g["prompts"] * g["group"], g["prompt"], g["completion"]
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=rows)
    example = grpo_learner.TrainExample(
        prompt_ids=spec((N, P), jnp.int32), prompt_mask=spec((N, P), jnp.bool_),
        completion_ids=spec((N, C), jnp.int32), completion_mask=spec((N, C), jnp.bool_),
        advantages=spec((N,), jnp.float32), ref_per_token_logps=spec((N, C), jnp.float32),
        old_per_token_logps=spec((N, C), jnp.float32))
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state, state_sh)
    rep = NamedSharding(mesh, PartitionSpec())
    lowered = jax.jit(step, out_shardings=(state_sh, rep, rep, rep),
                      donate_argnums=0).lower(abstract, example)
    print("[tunix] lowered; compiling", flush=True)
    compiled = lowered.compile()
  return {"versions": versions(), "programs": {"grpo_update": summary(compiled, len(devices))}}


def maxtext(topology: str, per_chip: int, seq: int, attention: str,
            layers: int | None = None, tiling: int = 1) -> dict:
  """Runs inside the MaxText venv: its train_compile, the compiled step captured."""
  from maxtext.trainers.pre_train import train_compile as tc
  captured = {}
  original = tc.jit_and_compile

  def capture(*args, **kwargs):
    captured["compiled"] = original(*args, **kwargs)
    return captured["compiled"]

  tc.jit_and_compile = capture
  version = topology.split(":")[0]
  chips = chip_count(topology)
  cores = chips * (2 if version in ("v4", "v5p") else 1)  # v4/v5p names count TensorCores
  base = Path(tc.__file__).resolve().parents[2] / "configs" / "base.yml"
  tc.main(["train_compile", str(base), f"compile_topology={version}-{cores}",
           "compile_topology_num_slices=1", "model_name=qwen3-8b",
           f"per_device_batch_size={per_chip}", f"max_target_length={seq}",
           "remat_policy=full", "weight_dtype=float32", "dtype=bfloat16",
           "ici_fsdp_parallelism=-1", "enable_checkpointing=false", "base_output_directory=/tmp",
           f"attention={MAXTEXT_ATTENTION[attention]}", "scan_layers=true",
           f"num_vocab_tiling={tiling}"]
          + ([f"base_num_decoder_layers={layers}", "override_model_config=true"] if layers
             else []))
  return {"versions": versions(),
          "programs": {"il_step": summary(captured["compiled"], chips)}}


def run_side(python: Path, side: str, a: argparse.Namespace) -> dict:
  """`side` ("maxtext", "tunix" or "ours", the last without its GRPO update) compiled
  by `python` in a subprocess."""
  with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / f"{side}.json"
    cmd = [str(python), __file__, "--side", side, "--side-out", str(out),
           "--topology", a.topology, "--batch-per-chip", str(a.batch_per_chip),
           "--seq", str(a.seq), "--attention", a.attention, "--skip-grpo",
           "--vocab-tiling", str(a.vocab_tiling)]
    if a.layers:
      cmd += ["--layers", str(a.layers)]
    print(f"[{side}]", " ".join(cmd), flush=True)
    # Importing libtpu sets TPU_LIBRARY_PATH to this interpreter's libtpu.so: the other
    # venv's jax must load its own (else it runs ours, whatever the two versions).
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
  ap.add_argument("--skip-grpo", action="store_true", help="IL step only (no Tunix side)")
  ap.add_argument("--layers", type=int, help="fewer decoder layers (all sides), for a quick "
                  "check; default the model's 36")
  ap.add_argument("--vocab-tiling", type=int, default=1,
                  help="the loss's logits in this many chunks of each row (MaxText's "
                  "num_vocab_tiling; ours model.logits_chunk = seq / N; not Tunix's)")
  tunix_venv.add_arguments(ap)
  ap.add_argument("--out", help="also write every side's rows (largest buffers too) here")
  ap.add_argument("--side", choices=("maxtext", "ours", "tunix"), help=argparse.SUPPRESS)
  ap.add_argument("--side-out", help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.side:
    sides = {"maxtext": lambda: maxtext(a.topology, a.batch_per_chip, a.seq, a.attention,
                                        a.layers, a.vocab_tiling),
             "ours": lambda: ours(a.topology, a.batch_per_chip, a.seq, a.attention,
                                  not a.skip_grpo, a.layers, a.vocab_tiling),
             "tunix": lambda: tunix(a.topology, a.batch_per_chip, a.seq, a.attention,
                                    a.layers)}
    Path(a.side_out).write_text(json.dumps(sides[a.side]()))
    return
  python = ROOT / a.maxtext_python
  if not python.exists():
    sys.exit(f"{python} not found: see this file's docstring for the MaxText venv")
  theirs = run_side(python, "maxtext", a)
  mine = ours(a.topology, a.batch_per_chip, a.seq, a.attention, not a.skip_grpo, a.layers,
              a.vocab_tiling)
  print(f"Qwen3-8B{f' ({a.layers} layers)' if a.layers else ''}, {a.topology}, "
        f"{a.batch_per_chip} x {a.seq} tokens per chip, "
        f"attention {a.attention} (MaxText {MAXTEXT_ATTENTION[a.attention]}), "
        f"vocabulary tiling {a.vocab_tiling}")
  sides = [("maxtext", theirs), ("ours", mine)]
  il = lambda r, key: r["programs"]["il_step"][key]
  grpo = lambda r, key: r["programs"]["grpo_update"][key]
  tunix_side = None
  if not (a.skip_grpo or a.skip_tunix):
    try:
      tunix_side = run_side(tunix_venv.python(a.tunix_venv), "tunix", a)
      sides.append(("tunix", tunix_side))
    except subprocess.CalledProcessError:  # its error is above; the IL anchor still stands
      print("tunix: failed to compile (error above)")
  same = None
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
  if same:
    print(f"same_compiler: flops_ratio={il(same, 'flops') / il(theirs, 'flops'):.3f} "
          f"hbm_ratio={il(same, 'per_chip_bytes') / il(theirs, 'per_chip_bytes'):.3f}")
  if tunix_side:
    g = grpo_shape(a.batch_per_chip, grpo(mine, "chips"), a.seq)
    print(f"GRPO update: {g['prompts']} prompts x G {g['group']}, {g['prompt']} + "
          f"{g['completion']} tokens, beta {g['beta']}")
    print(f"grpo_flops_ratio_vs_tunix={grpo(mine, 'flops') / grpo(tunix_side, 'flops'):.3f}")
    print(f"grpo_hbm_ratio_vs_tunix="
          f"{grpo(mine, 'per_chip_bytes') / grpo(tunix_side, 'per_chip_bytes'):.3f}")
  print(f"flops_ratio_vs_anchor={il(mine, 'flops') / il(theirs, 'flops'):.3f}")
  print(f"hbm_ratio_vs_anchor={il(mine, 'per_chip_bytes') / il(theirs, 'per_chip_bytes'):.3f}")


if __name__ == "__main__":
  main()
