"""The one training loop every stage runs: config -> mesh -> model -> data -> step -> checkpoint.

A `Stage` supplies what differs between stages (its batches, the registered loss, an
optional `prepare` that turns a data batch into a loss batch — GRPO generates and scores
there — and an optional evaluation). Everything else is shared: sharded state creation,
restore-or-init, the compiled step, non-finite guards, logging, checkpoints and
preemption handling.

A run directory (`workdir`) holds:

  metrics.jsonl          one JSON row per step: step, time, loss, grad_norm, skipped,
                         no_signal (updates skipped: no loss tokens), nonfinite_total,
                         step_time, tokens_per_s, mfu (with config.train.peak_tflops),
                         ckpt_save_s, and the stage's own metrics (rewards, judgment
                         accuracy, KL, entropy, ...)
  tb/                    TensorBoard events of the same scalars
  checkpoints/<step>/    Orbax steps (see act_jax.checkpoint): state/ (params,
                         optimiser state, step, RNG key), data/ (iterator position),
                         config/ (experiment + model config), loop/ (counters),
                         metrics/ (the step's row; with config.checkpoint.best_metric)
  checkpoints/<step>.orbax-checkpoint-tmp-*   a save in progress (deleted on restart)
  checkpoints/<step>.incomplete|.unreadable   damaged steps set aside, never restored

Rerunning the same command resumes from the newest readable step: same parameters,
optimiser state, RNG key and data position, so the result equals an uninterrupted run
(bitwise on CPU for the same device count). Rows logged after that step by the killed
run are dropped from metrics.jsonl and TensorBoard. SIGTERM (preemption) saves the
current step, waits for the write, and exits with status 143.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from typing import Any, Protocol, Sequence

import jax
import ml_collections
import numpy as np
import optax

from act_jax import (checkpoint, config_lib, console, flops, metrics as metrics_lib, models,
                     params as params_lib, sharding, step as step_lib)
from act_jax.data.replay import Replay
from act_jax.trainable import Trainable

log = logging.getLogger(__name__)


class Batches(Protocol):
  """A host-side batch iterator whose position can be saved in a checkpoint."""

  def __next__(self) -> dict[str, np.ndarray]: ...
  def get_state(self) -> dict[str, Any]: ...
  def set_state(self, state: dict[str, Any]) -> None: ...


class Stage:
  """What one training stage contributes to the shared loop."""
  name = "train"
  loss = "next_token"
  loss_cfg: Any = None
  updates_per_batch = 1

  def batches(self, shard_index: int, shard_count: int) -> Batches:
    raise NotImplementedError

  def prepare(self, ctx: "Context", state: step_lib.TrainState,
              batch: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Turns a data batch into the loss's batch (+ host metrics). Default: unchanged."""
    return batch, {}

  def evaluate(self, ctx: "Context", params: models.Params) -> dict[str, float]:
    return {}


@dataclasses.dataclass
class Context:
  """What a run has built before its first step; stages use it to generate or evaluate."""
  model_cfg: models.ModelConfig
  mesh: jax.sharding.Mesh
  gdef: Any
  param_shardings: Any


def setup_process(workdir: str) -> None:
  """Per-process start-up shared by the entry points: warnings only, a compile cache.

  The persistent cache lives in the workdir, so a run resumed after preemption (and
  every later stage of the pipeline) reuses the programs it already compiled.
  """
  console.quiet_libraries()
  logging.basicConfig(level=logging.WARNING)
  if "://" not in workdir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def build_context(config: ml_collections.ConfigDict,
                  devices: Sequence[jax.Device] | None = None) -> Context:
  """`devices`: default all of this run's; an ahead-of-time compile passes a TPU
  topology's (`act_jax.aot`)."""
  model_cfg = config_lib.model_config(config)
  mesh = sharding.make_mesh(config_lib.mesh_axes(config), devices)
  sharding.check_model_fits(model_cfg, mesh)
  pshard = params_lib.shardings(model_cfg, mesh, config_lib.sharding_rules(config))
  return Context(model_cfg, mesh, models.graphdef(model_cfg), pshard)


def state_shardings(ctx: Context, optimizer: optax.GradientTransformation,
                    trainable: Trainable = Trainable()) -> Any:
  """Optimiser moments (of the trainable params) follow their parameter's sharding;
  scalars are replicated."""
  rep = sharding.replicated(ctx.mesh)
  abstract = jax.eval_shape(lambda p: optimizer.init(trainable.split(p)[0]),
                            models.abstract_params(ctx.model_cfg))
  opt = optax.tree_map_params(optimizer, lambda _, s: s, abstract,
                              trainable.split(ctx.param_shardings, cut=False)[0],
                              transform_non_params=lambda _: rep)
  return {"params": ctx.param_shardings, "opt_state": opt, "step": rep, "rng": rep}


class _Preemption:
  """Turns SIGTERM (what a TPU/spot preemption sends) into a decision to save and exit.

  One process: a handler (installed from the main thread) sets a flag the loop checks
  after each step. Several processes: all must save the same step, so the decision is
  JAX's preemption sync point, whose own SIGTERM notifier must not be replaced.
  """

  def __init__(self):
    self._flag = False
    self._old = None
    self._multi = jax.process_count() > 1

  def __enter__(self):
    if self._multi:
      return self
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # signal handlers can only be installed from the main thread
      log.warning("loop.run is not on the main thread: SIGTERM will not save a checkpoint")
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self._flag = True

  def requested(self, step: int) -> bool:
    if self._multi:
      from jax.experimental import multihost_utils
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # preemption service disabled
        return False
    return self._flag

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


class Preempted(SystemExit):
  """Raised after the preemption checkpoint is written; exit status 143 like SIGTERM."""

  def __init__(self, step: int):
    super().__init__(143)
    self.step = step


def optimizer_config(config: ml_collections.ConfigDict, stage: Stage) -> dict[str, Any]:
  """`config.optim` with the schedule's length in optimiser updates.

  `optim.total_steps` None (the default) means the whole run: `train.steps` x the
  stage's updates per batch (GRPO's mu), so the decay ends with the run whatever
  `train.steps` is. Set it only to pin the schedule while changing `train.steps`.
  """
  optim = dict(config.optim)
  if optim.get("total_steps") is None:
    optim["total_steps"] = config.train.steps * stage.updates_per_batch
  return optim


def run(config: ml_collections.ConfigDict, workdir: str, stage: Stage,
        init_params: models.Params | None = None, ctx: Context | None = None,
        replay: Replay | None = None, label: str | None = None) -> step_lib.TrainState:
  """Trains `stage` for `config.train.steps` steps, resuming from `workdir` if possible.

  `replay`: supervised records mixed into every step (`act_jax.data.replay`);
  `label`: what progress lines are tagged with (default the stage's name)."""
  config_lib.validate(config)
  ctx = ctx or build_context(config)
  tc = config.train
  optimizer = step_lib.make_optimizer(optimizer_config(config, stage))
  trainable = Trainable.parse(tc.trainable, ctx.model_cfg.num_layers)
  st_shard = state_shardings(ctx, optimizer, trainable)
  # The rows this process feeds follow from the mesh, not from the process index alone.
  shard_index, shard_count = sharding.batch_shard(ctx.mesh)
  if tc.batch_size % shard_count:
    raise ValueError(f"{stage.name}: config.train.batch_size={tc.batch_size} is not divisible "
                     f"by the {shard_count} data shards of the mesh (process row blocks)")
  batches = stage.batches(shard_index, shard_count)
  parts = tc.accum_steps * stage.updates_per_batch
  slots = ctx.mesh.shape["data"] * ctx.mesh.shape["fsdp"]
  if replay is not None and replay.batch_size % slots:
    raise ValueError(f"{stage.name}: config.train.replay_batch_size={replay.batch_size} is "
                     f"not divisible by the mesh's {slots} data x fsdp slots")
  if replay is not None and (replay.batch_size // shard_count) % parts:
    raise ValueError(f"{stage.name}: config.train.replay_batch_size={replay.batch_size} per "
                     f"data shard is not divisible into {parts} microbatches "
                     "(accum_steps x GRPO's updates_per_batch)")
  saved_config = {"experiment": config.to_dict(), "model": ctx.model_cfg.to_dict(),
                  "stage": stage.name}

  ck = config.checkpoint
  ckpt_dir = os.path.join(workdir, checkpoint.CHECKPOINTS_SUBDIR)
  mgr = checkpoint.Manager(ckpt_dir, keep=ck.keep, every=ck.every,
                           best_metric=ck.best_metric, best_mode=ck.best_mode,
                           async_save=ck.async_save)
  writer = None
  try:
    init = jax.jit(lambda p: step_lib.init_state(p, optimizer, config.seed, trainable),
                   out_shardings=st_shard)
    nonfinite_total = 0
    if mgr.latest_step() is not None:
      abstract = checkpoint.abstract_like(
          jax.eval_shape(init, models.abstract_params(ctx.model_cfg)), st_shard)
      restored = mgr.restore(abstract, check_config=lambda saved: _check_compatible(
          saved, ctx.model_cfg, ckpt_dir, tc.trainable))
      state = restored.state
      batches.set_state(restored.data)
      nonfinite_total = int(restored.loop.get("nonfinite_total", 0))
      print(f"[{stage.name}] resumed from step {restored.step}", flush=True)
    else:
      params = init_params if init_params is not None else models.init_params(
          ctx.model_cfg, config.seed, ctx.param_shardings)
      state = init(params)

    start = int(jax.device_get(state["step"]))
    writer = metrics_lib.Writer(workdir, tc.steps, desc=label or stage.name, start_step=start)
    step_fn = None
    bad_in_row = 0
    save_seconds = None
    with _Preemption() as preempt:
      for step in range(start + 1, tc.steps + 1):
        t0 = time.perf_counter()
        batch, host_metrics = stage.prepare(ctx, state, next(batches))
        if replay is not None:
          batch = {**batch, **replay.batch(step, shard_index, shard_count)}
        if step_fn is None:
          batch_sh = {k: sharding.batch_sharding(ctx.mesh, np.ndim(v)) for k, v in batch.items()}
          step_fn = sharding.jit_step(
              step_lib.make_train_step(ctx.gdef, stage.loss, optimizer, stage.loss_cfg,
                                       tc.accum_steps, stage.updates_per_batch, trainable),
              st_shard, batch_sh, sharding.replicated(ctx.mesh))
        device_batch = sharding.shard_batch(batch, ctx.mesh)
        if step == start + 1 and ctx.mesh.devices.flat[0].platform == "tpu":
          from act_jax import aot  # refuse a step larger than HBM before running it
          aot.check_fits(step_fn.lower(state, device_batch).compile(), f"{stage.name}_step")
        with jax.transfer_guard("disallow"):
          state, m = step_fn(state, device_batch)
        m = jax.device_get(m)
        dt = time.perf_counter() - t0
        nonfinite_total += int(m["skipped"])
        m.update(host_metrics, step_time=dt, nonfinite_total=nonfinite_total)
        m.update(_throughput(batch, ctx.model_cfg, dt, tc.peak_tflops, shard_count))
        if save_seconds is not None:  # the previous step's checkpoint, blocking part
          m["ckpt_save_s"], save_seconds = save_seconds, None
        bad_in_row = bad_in_row + 1 if m["skipped"] else 0
        if tc.eval_every and step % tc.eval_every == 0:
          m.update(stage.evaluate(ctx, state["params"]))
        row = writer.write(step, m)
        if tc.max_nonfinite > 0 and bad_in_row >= tc.max_nonfinite:
          raise FloatingPointError(
              f"{stage.name} step {step}: loss or gradient non-finite for {bad_in_row} "
              f"steps in a row (config.train.max_nonfinite={tc.max_nonfinite}); the updates "
              f"were skipped and the last checkpoint, step {mgr.latest_step()}, is intact")
        preempted = preempt.requested(step)
        if preempted or mgr.should_save(step) or step == tc.steps:
          mgr.save(step, state, batches.get_state(), saved_config, row,
                   {"nonfinite_total": nonfinite_total})
          save_seconds = mgr.last_save_seconds
          writer.flush()  # a resume from this step finds its rows
        if preempted:
          mgr.close()  # waits until the step is fully written
          log.warning("%s: preempted (SIGTERM); saved step %d", stage.name, step)
          raise Preempted(step)
  finally:
    if writer is not None:
      writer.close()
    mgr.close()
  return state


def _throughput(batch: dict[str, np.ndarray], model_cfg: models.ModelConfig, seconds: float,
                peak_tflops: float | None, shard_count: int = 1) -> dict[str, float]:
  """tokens/s counts real (mask) tokens; MFU counts every position the model computes."""
  out = {}
  n = shard_count  # distinct process batch blocks (hosts sharing rows count once)
  if "mask" in batch:
    out["tokens_per_s"] = float(np.sum(batch["mask"])) * n / seconds
  elif "attention" in batch:  # packed rows: a real token is one that attends to itself
    real = np.diagonal(batch["attention"], axis1=-2, axis2=-1)
    out["tokens_per_s"] = float(np.sum(real)) * n / seconds
  if "tokens" in batch and np.ndim(batch["tokens"]) >= 2:  # [rows, T] or [P, S, T]
    *lead, length = np.shape(batch["tokens"])
    rows = int(np.prod(lead))
    step_flops = flops.flops_per_token(model_cfg, length) * rows * length * n
    out["model_tflops_per_s"] = step_flops / seconds / 1e12
    u = flops.mfu(step_flops, seconds, peak_tflops, jax.device_count())
    if u is not None:
      out["mfu"] = u
  return out


def _check_compatible(saved: dict, model_cfg: models.ModelConfig, where: str,
                      trainable: str = "all") -> None:
  """Fails before training when the checkpoint holds a differently shaped model."""
  saved_model = saved.get("model", {})
  now = model_cfg.to_dict()
  shape_fields = ("arch", "vocab_size", "hidden_size", "intermediate_size", "num_layers",
                  "num_heads", "num_kv_heads", "head_dim", "tie_embeddings", "qkv_bias",
                  "qk_norm")
  diff = {f: (saved_model.get(f), now[f]) for f in shape_fields if saved_model.get(f) != now[f]}
  saved_trainable = saved.get("experiment", {}).get("train", {}).get("trainable", "all")
  if saved_trainable != trainable:  # the optimiser state's shapes follow it
    diff["train.trainable"] = (saved_trainable, trainable)
  if diff:
    raise checkpoint.CheckpointMismatchError(
        f"{where}: checkpoint does not match the config (field: (checkpoint, config)) "
        f"{diff}; use a new --workdir or the checkpoint's config")
