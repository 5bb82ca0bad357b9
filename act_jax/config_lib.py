"""The experiment ConfigDict: shared defaults, and resolving it into typed pieces.

Every experiment file in `configs/` starts from `base()` and changes what it needs;
the command line overrides any field (`--config.optim.lr=1e-6`).
"""
from __future__ import annotations

from typing import Any

import ml_collections

from act_jax import presets
from act_jax.models import ModelConfig
from act_jax.sharding import DEFAULT_RULES


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Either a named preset (act_jax.presets.MODELS) or explicit fields in c.model; explicit
  # fields override the preset's.
  c.model_preset = ""
  c.model = ml_collections.ConfigDict()
  c.mesh_preset = "auto"
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.sharding_rules = [list(r) if not isinstance(r[1], tuple) else [r[0], list(r[1])]
                      for r in DEFAULT_RULES]
  c.optim = ml_collections.ConfigDict(dict(
      # warmup_steps and total_steps count optimiser updates (train.steps x GRPO's mu);
      # total_steps 0 = the whole run, so the decay ends at the last step whatever
      # train.steps is (see loop.optimizer_config).
      lr=3e-4, warmup_steps=10, total_steps=0, schedule="cosine", final_lr_frac=0.1,
      weight_decay=0.0, grad_clip=1.0, b1=0.9, b2=0.95, eps=1e-8))
  c.train = ml_collections.ConfigDict(dict(
      steps=100, batch_size=8, seq_len=64, accum_steps=1, loss="next_token",
      log_every=1, eval_every=0,
      # Stop after this many non-finite (skipped) updates in a row; 0 never stops.
      max_nonfinite=5,
      # Per-device peak TFLOP/s for the logged MFU (e.g. 989 H100 bf16 dense, 459 TPU
      # v5p bf16); 0 leaves MFU out (model_tflops_per_s is always logged).
      peak_tflops=0.0))
  c.checkpoint = ml_collections.ConfigDict(dict(
      every=50, keep=3, async_save=True, best_metric="", best_mode="max"))
  c.data = ml_collections.ConfigDict(dict(kind="synthetic"))
  return c


def model_config(c: ml_collections.ConfigDict) -> ModelConfig:
  """The ModelConfig named by `c.model_preset` with `c.model`'s fields on top."""
  fields: dict[str, Any] = presets.model(c.model_preset) if c.get("model_preset") else {}
  fields.update(c.model.to_dict() if isinstance(c.model, ml_collections.ConfigDict)
                else dict(c.model))
  return ModelConfig.from_dict(fields)


def mesh_axes(c: ml_collections.ConfigDict) -> dict[str, int]:
  """`c.mesh_preset` if set to a named layout other than 'auto', else `c.mesh`."""
  if c.get("mesh_preset") and c.mesh_preset != "auto":
    return presets.mesh(c.mesh_preset)
  return dict(c.mesh)


def sharding_rules(c: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
  return tuple((name, tuple(t) if isinstance(t, (list, tuple)) else t)
               for name, t in c.sharding_rules)


def define_flags() -> None:
  """`--config FILE[:ARG] [--config.x=y]` and `--workdir DIR` for the entry points.

  Called from `if __name__ == "__main__"` only, so the modules stay importable together.
  """
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Experiment config file.")
  flags.DEFINE_string("workdir", None, "Run directory (local path or gs://).")
  flags.mark_flags_as_required(["config", "workdir"])
