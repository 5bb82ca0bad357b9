"""Compile every program a run executes for a TPU slice or GPU node this host does not have.

  JAX_PLATFORMS=cpu python -m act_jax.aot --config configs/paper_qwen3_8b.py \\
      --topology v5p:4x4x4 [--config.x=y] [--out aot.json] [--find-batch]
  PYTHONPATH=benchmarks/.cuda-plugin/site JAX_PLATFORMS=cpu python -m act_jax.aot \\
      --config configs/paper_qwen3_8b.py --config.mesh_preset=gpu_8 --topology h100:1x1x8

With the `libtpu` wheel installed, `jax.experimental.topologies` describes a real
slice (chips, hosts, ICI coordinates) and XLA compiles for it on the CPU. The mesh is
laid on the topology's chips by the code a run uses (`loop.build_context`), the
parameters, optimiser state and batches are abstract (`ShapeDtypeStruct`s with their
shardings: nothing is materialised), and each program is compiled exactly as the
run jits it. GPUs (`h100:SLICESxHOSTSxGPUS`) are described the same way by jax's
CUDA plugin (`benchmarks/cuda_plugin.sh`, on PYTHONPATH) from `act_jax.gpu_target`.
Per program it reports per-chip memory against the chip's HBM, matmul FLOPs against
the analytic count (`act_jax.flops`), the bytes accessed and the collectives of the
optimised HLO (loop trip counts included: `act_jax.hlo_stats`), and a roofline step
time (`act_jax.chips`). A program that does not fit is refused (`DoesNotFit`), and a
run on TPUs does the same check before its first step (`check_fits`, called from
`loop.run`).

Programs (names in the report):
  il_step          the IL stage's train step (action CE)
  critic_update    the ACT critic's GRPO update (stage `act`), and
  critic_ref_logps its reference model's log-prob pass (when beta > 0)
  rl_update        the RL stage's GRPO update (+ rl_ref_logps)
  prefill          the sampler's prompt pass: B prompts, G samples each, KV cache
  decode_step      one token per row against the full KV cache
  eval_score       the evaluation's scoring forward (`core.score`)

Lengths: prompts are `data.max_state_tokens` (else `train.seq_len`) tokens, an
action `--action_tokens` (64), a completion the stage's `grpo.max_new_tokens`.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import re
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding

from act_jax import chips, config_lib, flops as flops_lib, gpu_target, hlo_stats, loop, models
from act_jax import presets
from act_jax import sharding, step as step_lib
from act_jax.models import ModelConfig
from act_jax.sampling import core
from act_jax.sampling.config import Buckets, SamplingConfig
from act_jax.trainable import Trainable

# Config fields that shrink a program's per-chip memory, named in refusals.
HELPFUL_FIELDS = ("mesh.fsdp / mesh.tensor (split params, moments and activations over "
                  "more chips)", "model.remat=True (keep one activation per layer)",
                  "stages.<stage>.batch_size or train.accum_steps (fewer rows at once)",
                  "data.max_state_tokens, stages.<stage>.grpo.max_new_tokens (shorter rows)",
                  "stages.<stage>.grpo.group_size (fewer samples in the KV cache)")


# --- Topologies and meshes ------------------------------------------------------------


def wraparound(name: str) -> tuple[bool, bool, bool]:
  """Which axes of slice `name` close into rings (ICI wraparound links), as real slices
  have them: all three of a 3-D slice (v4, v5p) made of whole 4x4x4 cubes, the two of a
  whole 16x16 v5e / v6e pod, none otherwise (MaxText's `accelerator_to_spec_map`).

  Why: libtpu describes a slice without them unless told. Without them it cannot run an
  all-gather over a whole cube as a ring: on v5p:4x4x4 with fsdp 64 every FSDP weight
  gather compiled as an all-reduce of a zero-padded buffer (docs/tpu_aot.md, Anchor)."""
  dims = [int(d) for d in re.findall(r"\d+", name.partition(":")[2])]
  if len(dims) == 3 and all(d % 4 == 0 for d in dims):
    return (True, True, True)
  if dims == [16, 16]:
    return (True, True, False)
  return (False, False, False)


@functools.lru_cache(maxsize=None)
def topology(name: str) -> Any:
  """The `TopologyDescription` of a TPU slice such as 'v5e:2x2' or 'v5p:2x2x2', with
  its wraparound links (`wraparound`), or of GPUs such as 'h100:1x1x8' (slices x hosts x
  GPUs per host; `act_jax.gpu_target`)."""
  from jax.experimental import topologies
  kind, _, shape = name.partition(":")
  if kind in gpu_target.TARGETS:
    return gpu_topology(kind, shape)
  # A compile-only client touches no chip: it need not hold libtpu's one-process
  # lock (which any jax process started without JAX_PLATFORMS may be holding).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    return topologies.get_topology_desc(topology_name=name, platform="tpu",
                                        wrap=wraparound(name))
  except Exception as e:  # libtpu's errors carry no hint of the cause
    raise ValueError(f"--topology={name!r}: libtpu cannot describe it ({e}); it needs the "
                     "libtpu wheel (requirements-test.txt) and a name like v5e:2x2, "
                     "v5p:2x2x2 or v6e:8x8 (or a GPU one: "
                     f"{', '.join(k + ':1x1x8' for k in gpu_target.TARGETS)})") from None


def gpu_topology(kind: str, shape: str) -> Any:
  """GPUs described by the CUDA plugin from `gpu_target`'s figures, no GPU attached."""
  from jax.experimental import topologies
  if not re.fullmatch(r"\d+x\d+x\d+", shape):
    raise ValueError(f"--topology={kind}:{shape}: a GPU topology is SLICESxHOSTSxGPUS, "
                     f"e.g. {kind}:1x1x8 (one 8-GPU host)")
  if not gpu_target.plugin_available():
    raise ValueError(f"--topology={kind}:{shape}: jax's CUDA plugin is not importable; "
                     "fetch it with benchmarks/cuda_plugin.sh and put its folder on "
                     "PYTHONPATH (docs/tpu_aot.md, 'GPU without a GPU')")
  return topologies.get_topology_desc(
      platform="cuda", topology=shape,
      target_config=gpu_target.target_config(gpu_target.target(kind)))


def topology_devices(name: str) -> list[Any]:
  return list(topology(name).devices)


def fit_mesh_axes(axes: dict[str, int], n: int) -> dict[str, int]:
  """The config's mesh for `n` chips: as given if it fits, else with `data` filling
  the rest (a config written for one slice, compiled for a larger one)."""
  try:
    sharding.mesh_shape(axes, n)
    return dict(axes)
  except ValueError:
    fitted = {**axes, "data": -1}
    sharding.mesh_shape(fitted, n)  # raises with the config's field named
    return fitted


def with_model(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with its model filled in as the pipeline fills it from
  `pipeline.model_dir` (`config.model`'s fields on top); without the checkpoint on this
  host, from the preset its directory is named after (models/Qwen3-8B: qwen3-8b)."""
  model_dir = config.get("pipeline", {}).get("model_dir")
  if config.get("model_preset") or not model_dir:
    return config
  config = copy.deepcopy(config)
  if os.path.exists(model_dir):
    from act_jax import params as params_lib
    fields = params_lib.model_config(model_dir).to_dict()
  else:
    name = os.path.basename(model_dir.rstrip("/")).lower()
    if name not in presets.MODELS:
      raise ValueError(f"config.pipeline.model_dir={model_dir!r} is not on this host and "
                       f"{name!r} names no preset ({sorted(presets.MODELS)}); set "
                       "--config.model_preset")
    fields = presets.model(name)
  with config.unlocked():
    config.model = ml_collections.ConfigDict({**fields, **config.model.to_dict()})
  return config


def context(config: ml_collections.ConfigDict, devices: Sequence[Any]) -> loop.Context:
  """`loop.build_context` on `devices`, the config's mesh fitted to their number."""
  config = copy.deepcopy(with_model(config))
  with config.unlocked():
    config.mesh = ml_collections.ConfigDict(fit_mesh_axes(config_lib.mesh_axes(config),
                                                          len(devices)))
    config.mesh_preset = "auto"
  return loop.build_context(config, devices)


# --- Compiling one program --------------------------------------------------------------


@dataclasses.dataclass
class Program:
  """One compiled program and what a report needs besides it."""
  name: str
  compiled: Any
  compile_s: float
  analytic_flops: float  # whole program, all chips
  analytic: str  # which count
  chips: int


def abstract(tree: Any, shardings: Any) -> Any:
  """Shape/dtype leaves with their shardings: what `jit(...).lower` takes."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def compile_program(fn: Callable, args: Sequence[Any], *, name: str = "program",
                    in_shardings: Any = None, out_shardings: Any = None,
                    donate_argnums: Sequence[int] = (), static_argnames: Sequence[str] = (),
                    kwargs: dict[str, Any] | None = None, analytic_flops: float = 0.0,
                    analytic: str = "") -> Program:
  """Lowers and compiles `fn(*args, **kwargs)` for the devices of `args`' shardings.

  `fn` may be a plain function or already jitted (then the shardings and donation
  given here are ignored: its own are used). `args` are `ShapeDtypeStruct`s (see
  `abstract`); `kwargs` are static. Stable: benchmarks and other modules call it.
  """
  jitted = fn if hasattr(fn, "lower") else jax.jit(
      fn, in_shardings=in_shardings, out_shardings=out_shardings,
      donate_argnums=tuple(donate_argnums), static_argnames=tuple(static_argnames))
  t0 = time.perf_counter()
  try:
    compiled = jitted.lower(*args, **(kwargs or {})).compile()
  except jax.errors.JaxRuntimeError as e:  # XLA refuses temporaries beyond HBM itself
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    raise DoesNotFit(compile_fit_error(name, str(e), args)) from None
  devices = {d for leaf in jax.tree.leaves(args) if hasattr(leaf, "sharding")
             and leaf.sharding is not None for d in leaf.sharding.device_set}
  return Program(name, compiled, time.perf_counter() - t0, analytic_flops, analytic,
                 max(len(devices), 1))


def collectives(compiled: Any) -> dict[str, dict[str, float]]:
  """{all-gather|reduce-scatter|all-reduce|all-to-all|collective-permute: {count, bytes}}
  of one run, per chip, loops' trip counts included (`hlo_stats.collectives`)."""
  return hlo_stats.collectives(compiled.as_text())


def memory(compiled: Any) -> dict[str, int]:
  """Per-chip bytes; `total` = arguments + outputs - aliased + temp + code."""
  m = compiled.memory_analysis()
  out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
         "aliased": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes,
         "code": m.generated_code_size_in_bytes}
  out["total"] = (out["arguments"] + out["outputs"] - out["aliased"] + out["temp"]
                  + out["code"])
  return out


def device_kind(compiled: Any) -> str:
  leaves = jax.tree.leaves(compiled.input_shardings)
  return next(iter(leaves[0].device_set)).device_kind if leaves else "?"


def report(p: Program, chip: chips.Chip) -> dict[str, Any]:
  """The JSON row of one program."""
  text = p.compiled.as_text()
  mem = memory(p.compiled)
  cost = p.compiled.cost_analysis() or {}  # None for a deviceless GPU program
  coll = hlo_stats.collectives(text)
  hlo_flops = hlo_stats.flops(text)
  # XLA:GPU gives no cost analysis here, and TPU tile padding is not its layout: the
  # HBM term is then missing (None, priced 0).
  bytes_accessed = hlo_stats.bytes_accessed(text) if "bytes accessed" in cost else None
  coll_bytes = sum(c["bytes"] for c in coll.values())
  roof = chips.roofline(chip, hlo_flops, bytes_accessed or 0.0, coll_bytes)
  useful = p.analytic_flops / p.chips
  return {
      "program": p.name, "chip": chip.name, "chips": p.chips,
      "per_chip_bytes": mem, "hbm_bytes": chip.hbm_bytes,
      "fits": mem["total"] <= chip.hbm_bytes,
      "flops": hlo_flops,  # matmul FLOPs per chip, loop trip counts included
      "xla_cost_flops": float(cost.get("flops", 0.0)),  # XLA: each loop body once
      "analytic_flops": useful, "analytic": p.analytic,
      "flops_ratio": hlo_flops / useful if useful else None,
      "bytes_accessed": bytes_accessed,  # per chip, loop trip counts included
      "xla_cost_bytes_accessed": float(cost.get("bytes accessed", 0.0)),  # each loop body once
      "collectives": coll, "collective_bytes": coll_bytes,
      "roofline": roof,
      "mfu": useful / chip.bf16_flops / roof["step_s"] if roof["step_s"] > 0 else None,
      "largest_buffers": hlo_stats.largest_buffers(text),
      "custom_calls": hlo_stats.custom_calls(text),
      "compile_s": p.compile_s,
  }


class DoesNotFit(RuntimeError):
  """A program needs more per-chip memory than the chip has."""


def fit_error(row: dict[str, Any]) -> str:
  m = row["per_chip_bytes"]
  buffers = "; ".join(f"{what}: {b / 2**30:.2f} GiB" for what, b in row["largest_buffers"])
  return (f"program {row['program']} does not fit on {row['chip']}: "
          f"{m['total'] / 2**30:.2f} GiB per chip > {row['hbm_bytes'] / 2**30:.2f} GiB HBM "
          f"(arguments {m['arguments'] / 2**30:.2f}, outputs {m['outputs'] / 2**30:.2f}, "
          f"aliased {m['aliased'] / 2**30:.2f}, temp {m['temp'] / 2**30:.2f} GiB). "
          f"Largest buffers: {buffers}. Config fields that help: "
          + "; ".join(HELPFUL_FIELDS))


def compile_fit_error(name: str, xla_error: str, args: Sequence[Any]) -> str:
  """The refusal when XLA itself finds no room: its words, and the largest arguments."""
  sizes = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(args):
    if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is not None:
      shard = leaf.sharding.shard_shape(leaf.shape)
      sizes.append((f"argument {jax.tree_util.keystr(path)} {leaf.dtype}{list(shard)}",
                    math.prod(shard) * leaf.dtype.itemsize))
  top = sorted(sizes, key=lambda kv: -kv[1])[:3]
  first = xla_error.strip().splitlines()[0]
  return (f"program {name} does not fit: XLA: {first}. Largest buffers (per-chip "
          f"arguments): " + "; ".join(f"{w}: {b / 2**30:.2f} GiB" for w, b in top)
          + ". Config fields that help: " + "; ".join(HELPFUL_FIELDS))


def check_fits(compiled: Any, name: str) -> dict[str, Any] | None:
  """Refuses (`DoesNotFit`) a compiled TPU program larger than its chip's HBM; None off
  TPU or for a chip without published figures."""
  kind = device_kind(compiled)
  if kind not in chips.CHIPS or not kind.startswith("TPU"):
    return None
  row = report(Program(name, compiled, 0.0, 0.0, "", 1), chips.CHIPS[kind])
  if not row["fits"]:
    raise DoesNotFit(fit_error(row))
  return row


# --- The run's programs ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Lengths:
  prompt: int
  action: int

  @classmethod
  def of(cls, config: ml_collections.ConfigDict, action_tokens: int) -> "Lengths":
    state = config.get("data", {}).get("max_state_tokens")
    return cls(int(state or config.train.seq_len), action_tokens)


def stage_configs(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """{il, act, rl} as the pipeline runs them (`pipeline.stage_config`); a single-stage
  config serves as all three, its `grpo` section for both GRPO stages."""
  if "stages" not in config:
    return {s: config for s in ("il", "act", "rl")}
  from act_jax import pipeline  # the pipeline's own view of a stage's settings
  return {s: pipeline.stage_config(config, s, config.seed) for s in ("il", "act", "rl")
          if s in config.stages}


def _train_step_program(ctx: loop.Context, sc: ml_collections.ConfigDict, loss: str,
                        loss_cfg: Any, updates: int, batch: dict[str, Any], name: str,
                        seq_len: int) -> Program:
  """The stage's train step, jitted as `loop.run` jits it (shardings, donation)."""
  stage = loop.Stage()
  stage.updates_per_batch = updates
  optimizer = step_lib.make_optimizer(loop.optimizer_config(sc, stage))
  trainable = Trainable.parse(sc.train.trainable, ctx.model_cfg.num_layers)
  st_shard = loop.state_shardings(ctx, optimizer, trainable)
  state = jax.eval_shape(lambda p: step_lib.init_state(p, optimizer, 0, trainable),
                         models.abstract_params(ctx.model_cfg))
  batch_sh = {k: sharding.batch_sharding(ctx.mesh, len(v.shape)) for k, v in batch.items()}
  fn = sharding.jit_step(
      step_lib.make_train_step(ctx.gdef, loss, optimizer, loss_cfg, sc.train.accum_steps,
                               updates, trainable),
      st_shard, batch_sh, sharding.replicated(ctx.mesh))
  rows = math.prod(next(iter(batch.values())).shape[:-1])
  return compile_program(fn, (abstract(state, st_shard), abstract(batch, batch_sh)), name=name,
                         analytic_flops=flops_lib.flops_per_token(ctx.model_cfg, seq_len)
                         * rows * seq_len, analytic="6N+12LHDhT per token (act_jax.flops)")


def _spec(shape: Sequence[int], dtype: Any) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), dtype)


def forward_flops(cfg: ModelConfig, tokens: int, context: int) -> float:
  """Forward-only FLOPs: a third of `act_jax.flops`' training count, attention over
  `context` keys."""
  return tokens * (2 * flops_lib.matmul_params(cfg)
                   + 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * context)


def il_program(ctx: loop.Context, sc: ml_collections.ConfigDict, lengths: Lengths,
               batch_size: int | None = None, every_position: bool = False) -> Program:
  """The IL step on [B, prompt + action] rows; the loss reads the action's positions
  (`target_index`), or with `every_position` every position, as a language-model
  step does (what MaxText's train step computes)."""
  B = batch_size or sc.train.batch_size
  T, M = lengths.prompt + lengths.action, lengths.action
  batch = {"tokens": _spec((B, T), jnp.int32), "mask": _spec((B, T), jnp.bool_),
           "loss_mask": _spec((B, T), jnp.bool_)}
  if not every_position:
    batch.update(target_index=_spec((B, M), jnp.int32), target_mask=_spec((B, M), jnp.bool_))
  return _train_step_program(ctx, sc, "action_ce", None, 1, batch, "il_step", T)


def grpo_programs(ctx: loop.Context, sc: ml_collections.ConfigDict, lengths: Lengths,
                  prefix: str, batch_size: int | None = None,
                  only: Sequence[str] | None = None) -> list[Program]:
  """The GRPO update on B prompts x G samples, and its reference log-prob pass (when
  beta > 0); with `only`, just those of the two named there (each is minutes to
  compile at 8B)."""
  from act_jax.stages import grpo as grpo_stage
  want = lambda n: only is None or n in only
  g = config_lib.GRPOSection.from_config(sc.grpo, f"config.stages.{prefix}.grpo")
  if g.estimator != "grpo":
    raise ValueError(f"config.stages.{prefix}.grpo.estimator={g.estimator!r}: only the "
                     "sampled 'grpo' estimator is compiled ahead of time")
  N = (batch_size or sc.train.batch_size) * g.group_size
  C, T = g.max_new_tokens, lengths.prompt + g.max_new_tokens
  loss_cfg = grpo_stage.loss_config(g)
  batch = {"tokens": _spec((N, T), jnp.int32), "mask": _spec((N, T), jnp.bool_),
           "completion_mask": _spec((N, C), jnp.bool_),
           "old_logps": _spec((N, C), jnp.float32), "advantages": _spec((N,), jnp.float32)}
  if g.beta > 0:
    batch["ref_logps"] = _spec((N, C), jnp.float32)
  out = []
  if want(f"{prefix}_update"):
    out.append(_train_step_program(ctx, sc, "grpo", loss_cfg, g.updates_per_batch, batch,
                                   f"{prefix}_update", T))
  if g.beta > 0 and want(f"{prefix}_ref_logps"):  # as GRPOStage.reference_logps jits it
    ref = sharding.with_mesh(
        grpo_stage.reference_fn(ctx.gdef, C, g.temperature, sc.train.accum_steps), ctx.mesh)
    rows = sharding.batch_sharding(ctx.mesh)
    out.append(compile_program(
        ref, (abstract(models.abstract_params(ctx.model_cfg), ctx.param_shardings),
              abstract(batch["tokens"], rows), abstract(batch["mask"], rows)),
        name=f"{prefix}_ref_logps", analytic_flops=forward_flops(ctx.model_cfg, N * T, T),
        analytic="2N+4LHDhT per token"))
  return out


def sampler_programs(ctx: loop.Context, sc: ml_collections.ConfigDict, lengths: Lengths,
                     batch_size: int | None = None) -> list[Program]:
  """The sampler's prefill (B prompts forked into G rows each) and one decode step,
  at the GRPO stage's group size and lengths, the KV cache included."""
  g = config_lib.GRPOSection.from_config(sc.grpo, "config.stages.<grpo stage>.grpo")
  cfg, mesh = ctx.model_cfg, ctx.mesh
  buckets = Buckets()
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  B = buckets.batch(batch_size or sc.train.batch_size, shards)
  P = buckets.length(lengths.prompt)
  slots = buckets.slots(P, g.max_new_tokens)
  sampling = SamplingConfig(temperature=g.temperature, eos_ids=g.eos_ids or cfg.eos_ids)
  pad = int(cfg.pad_token_id or 0)
  params = abstract(models.abstract_params(cfg), ctx.param_shardings)
  rows = NamedSharding(mesh, sharding.spec_for(("batch", None), (B, P), mesh))
  rep = sharding.replicated(mesh)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep)
  static = dict(cfg=sampling, n=g.group_size, slots=slots, pad_id=pad, mesh=mesh)
  prefill = compile_program(
      jax.jit(core.prefill, static_argnums=(0,), static_argnames=tuple(static)),
      (cfg, params, _with(_spec((B, P), jnp.int32), rows), _with(_spec((B, P), jnp.bool_), rows),
       key), kwargs=static, name="prefill",
      analytic_flops=forward_flops(cfg, B * P, P), analytic="2N+4LHDhT per prompt token")
  # The decode loop's carry and weights as the prefill leaves them.
  weights = jax.eval_shape(lambda p: core.inference_weights(cfg, p, mesh), params)
  w_shard = jax.jit(lambda p: core.inference_weights(cfg, p, mesh)).lower(
      params).compile().output_shardings
  state = jax.eval_shape(functools.partial(core.prefill, cfg, **static), params,
                         _spec((B, P), jnp.int32), _spec((B, P), jnp.bool_), key)
  state_shard = prefill.compiled.output_shardings
  decode = jax.jit(core.decode, static_argnums=(0,),
                   static_argnames=("cfg", "pad_id", "mesh"), donate_argnums=(2,))
  N = B * g.group_size
  step = compile_program(
      decode, (cfg, abstract(weights, w_shard), abstract(state, state_shard), 1),
      kwargs=dict(cfg=sampling, pad_id=pad, mesh=mesh), name="decode_step",
      analytic_flops=forward_flops(cfg, N, slots), analytic="2N+4LHDh x cache slots per row")
  return [prefill, step]


def _with(spec: jax.ShapeDtypeStruct, s: Any) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=s)


def eval_program(ctx: loop.Context, config: ml_collections.ConfigDict, lengths: Lengths,
                 batch_size: int) -> Program:
  """The evaluation's scoring forward (`Sampler.score` -> `core.score`)."""
  from act_jax.sampling import sampler as sampler_lib
  T, C = lengths.prompt + lengths.action, lengths.action
  rows = sharding.batch_sharding(ctx.mesh)
  params = abstract(models.abstract_params(ctx.model_cfg), ctx.param_shardings)
  with sharding.under_mesh(ctx.mesh):  # as `Sampler.score` traces it
    return compile_program(
        sampler_lib._score, (ctx.gdef, params, _with(_spec((batch_size, T), jnp.int32), rows),
                             _with(_spec((batch_size, T), jnp.bool_), rows)),
        kwargs=dict(num_targets=C), name="eval_score",
        analytic_flops=forward_flops(ctx.model_cfg, batch_size * T, T),
        analytic="2N+4LHDhT per token")


def programs(config: ml_collections.ConfigDict, ctx: loop.Context, lengths: Lengths,
             only: Sequence[str] | None = None, batch_size: int | None = None
             ) -> list[Program]:
  """Every program the run compiles (or those named in `only`), deduplicated: the RL
  update is not compiled again when it equals the critic's."""
  scs = stage_configs(with_model(config))
  want = lambda n: only is None or n in only
  out: list[Program] = []
  if "il" in scs and want("il_step"):
    out.append(il_program(ctx, scs["il"], lengths, batch_size))
  seen: dict[str, str] = {}
  for stage, prefix in (("act", "critic"), ("rl", "rl")):
    names = [n for n in (f"{prefix}_update", f"{prefix}_ref_logps") if want(n)]
    if stage not in scs or not names:
      continue
    key = json.dumps([scs[stage].grpo.to_dict(), scs[stage].train.to_dict()], sort_keys=True,
                     default=str)
    done = {p.name: p for p in out}
    twin = {n: done.get(n.replace(prefix, seen[key], 1)) for n in names} if key in seen else {}
    out += [dataclasses.replace(p, name=n) for n, p in twin.items() if p is not None]
    rest = [n for n in names if twin.get(n) is None]
    if rest:
      out += grpo_programs(ctx, scs[stage], lengths, prefix, batch_size, rest)
    seen.setdefault(key, prefix)
  grpo_sc = scs.get("act") or scs.get("rl")
  if grpo_sc is not None and (want("prefill") or want("decode_step")):
    out += [p for p in sampler_programs(ctx, grpo_sc, lengths, batch_size) if want(p.name)]
  if want("eval_score"):
    eval_b = batch_size or (grpo_sc.grpo.eval_batch_size if grpo_sc is not None
                            else config.train.batch_size)
    out.append(eval_program(ctx, config, lengths, eval_b))
  return out


# --- Reports ---------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, topology_name: str, action_tokens: int = 64,
        only: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """Compiles the run's programs for the topology and returns one row per program."""
  devices = topology_devices(topology_name)
  ctx = context(config, devices)
  chip = chips.chip(devices[0].device_kind)
  rows = []
  for p in programs(config, ctx, Lengths.of(config, action_tokens), only):
    row = report(p, chip)
    row.update(topology=topology_name, mesh=dict(ctx.mesh.shape),
               hosts=len({d.process_index for d in devices}))
    rows.append(row)
  return rows


def find_batch(config: ml_collections.ConfigDict, topology_name: str, action_tokens: int = 64,
               only: Sequence[str] | None = None) -> dict[str, int]:
  """Per stage, the largest per-chip batch (rows of the data batch's shards; prompts for
  the GRPO stages and the sampler) whose programs fit: doubling, then bisection, in
  multiples of the batch shards. `only` (program names) searches just those programs'
  stages, with just those programs: each search costs ~10 compiles."""
  devices = topology_devices(topology_name)
  ctx = context(config, devices)
  chip = chips.chip(devices[0].device_kind)
  lengths = Lengths.of(config, action_tokens)
  shards = ctx.mesh.shape["data"] * ctx.mesh.shape["fsdp"]
  groups = {"il": ["il_step"], "act": ["critic_update", "critic_ref_logps"],
            "rl": ["rl_update", "rl_ref_logps"], "sampler": ["prefill", "decode_step"]}
  if only:
    groups = {s: [n for n in names if n in only] for s, names in groups.items()}
    groups = {s: names for s, names in groups.items() if names}

  def fits(names, per_chip):
    try:
      ps = programs(config, ctx, lengths, names, per_chip * shards)
    except Exception as e:  # XLA refuses programs far beyond HBM
      if "RESOURCE_EXHAUSTED" in str(e) or "memory" in str(e).lower():
        return False
      raise
    return all(report(p, chip)["fits"] for p in ps)

  out = {}
  for stage, names in groups.items():
    lo, hi = 0, 1
    while fits(names, hi):
      lo, hi = hi, hi * 2
      if hi > 4096:
        break
    while hi - lo > 1:
      mid = (lo + hi) // 2
      lo, hi = (mid, hi) if fits(names, mid) else (lo, mid)
    out[stage] = lo
  return out


def table(rows: list[dict[str, Any]]) -> str:
  """The console table."""
  head = (f"{'program':<18}{'GiB/chip':>9}{'of HBM':>8}{'TFLOP/chip':>11}{'/analytic':>10}"
          f"{'GB acc':>8}{'coll GB':>8}{'step ms':>9}{'bound':>8}{'MFU':>6}  collectives")
  lines = [head]
  for r in rows:
    m = r["per_chip_bytes"]["total"]
    coll = " ".join(f"{k}:{int(v['count'])}" for k, v in r["collectives"].items() if v["count"])
    ratio = f"{r['flops_ratio']:.2f}" if r["flops_ratio"] else "-"
    acc = f"{r['bytes_accessed'] / 1e9:.1f}" if r["bytes_accessed"] is not None else "-"
    lines.append(f"{r['program']:<18}{m / 2**30:>9.2f}{m / r['hbm_bytes']:>7.0%} "
                 f"{r['flops'] / 1e12:>10.2f}{ratio:>10}{acc:>8}"
                 f"{r['collective_bytes'] / 1e9:>8.2f}{r['roofline']['step_s'] * 1e3:>9.1f}"
                 f"{r['roofline']['bound']:>8}{(r['mfu'] or 0):>6.0%}  {coll}"
                 + ("" if r["fits"] else "  DOES NOT FIT"))
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  from absl import flags
  del argv
  f = flags.FLAGS
  if f.layers:
    with f.config.unlocked():
      f.config.model.num_layers = f.layers
  rows = (run(f.config, f.topology, f.action_tokens, f.programs or None))
  print(table(rows))
  if f.out:
    kind = f.topology.partition(":")[0]
    target = ({"gpu_target_source": gpu_target.target(kind).source}
              if kind in gpu_target.TARGETS else {})
    with open(f.out, "w") as fh:
      json.dump({"topology": f.topology, "chip_source": chips.chip(
          topology_devices(f.topology)[0].device_kind).source, **target, "programs": rows},
                fh, indent=1)
  if f.find_batch:
    print("largest per-chip batch that fits:", find_batch(f.config, f.topology,
                                                          f.action_tokens, f.programs or None))
  bad = [r for r in rows if not r["fits"]]
  if bad:
    raise SystemExit("\n".join(fit_error(r) for r in bad))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  if not os.environ.get("JAX_PLATFORMS"):  # compile for the topology on this host's CPU
    jax.config.update("jax_platforms", "cpu")
  config_flags.DEFINE_config_file("config", None, "Experiment config file.")
  flags.DEFINE_string("topology", None, "TPU slice, e.g. v5e:2x2, v5p:4x4x4, v6e:8x8, or "
                      "GPUs (slices x hosts x GPUs per host), e.g. h100:1x1x8.")
  flags.DEFINE_string("out", None, "Write the per-program JSON here.")
  flags.DEFINE_bool("find_batch", False, "Also search the largest per-chip batch per stage "
                    "(of the --programs named, if any).")
  flags.DEFINE_integer("action_tokens", 64, "Tokens of an action (IL targets, eval scoring).")
  flags.DEFINE_list("programs", [], "Compile only these programs (default: all).")
  flags.DEFINE_integer("layers", 0, "Compile with this many decoder layers (0: the "
                       "model's), to extrapolate per-chip bytes and FLOPs in the depth.")
  flags.mark_flags_as_required(["config", "topology"])
  app.run(main)
