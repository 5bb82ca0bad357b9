"""Model parameters from any source, and the one function that shards them.

`load` recognises what a path holds (`kind`):
  hf                 a Hugging Face dir (config.json + safetensors), converted by act_jax.hf
  params_checkpoint  what `save` (and `python -m act_jax.hf import`) writes:
                       config.json   ModelConfig.to_dict()
                       params/       Orbax StandardCheckpointer of the params pytree
                       tokenizer/    tokenizer files (optional)
  training           a training workdir, its checkpoints/ dir or one step dir: the params
                     of the newest readable step (act_jax.checkpoint)

Every kind reads its arrays straight into `shardings(model_cfg, mesh, rules)`, the
function the training loop shards its state with, so a model is never gathered on one
host and, loaded with the run's rules, needs no resharding before its first step.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding

from act_jax import checkpoint, config_lib, hf, sharding, storage
from act_jax.hf.tokenizer import copy_tokenizer_files, has_tokenizer
from act_jax.models import ModelConfig, Params, abstract_params, logical_axes

log = logging.getLogger(__name__)

Rules = Sequence[tuple[str, Any]]  # logical axis name -> mesh axis (see sharding.py)
HF, PARAMS_CHECKPOINT, TRAINING = "hf", "params_checkpoint", "training"
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"


def shardings(model_cfg: ModelConfig, mesh: Mesh,
              rules: Rules = sharding.DEFAULT_RULES) -> Params:
  """NamedShardings of `model_cfg`'s params: their logical axes mapped by `rules`."""
  is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)
  return jax.tree.map(
      lambda ax, s: NamedSharding(mesh, sharding.spec_for(ax, s.shape, mesh, rules)),
      logical_axes(model_cfg), abstract_params(model_cfg), is_leaf=is_axes)


def kind(source: str | Path) -> str:
  """HF, PARAMS_CHECKPOINT or TRAINING; FileNotFoundError when `source` holds no params."""
  path = epath.Path(source)
  if (path / CONFIG_FILE).is_file():
    return PARAMS_CHECKPOINT if (path / PARAMS_DIR).is_dir() else HF
  if checkpoint.is_training_dir(str(path)):
    return TRAINING
  raise FileNotFoundError(
      f"{source}: no parameters: neither a Hugging Face dir ({CONFIG_FILE} + safetensors), "
      f"an act_jax params checkpoint ({CONFIG_FILE} + {PARAMS_DIR}/, as `python -m "
      "act_jax.hf import` writes) nor a training workdir with a complete step")


def model_config(source: str | Path, *, param_dtype: str | None = None,
                 dtype: str | None = None) -> ModelConfig:
  """`source`'s ModelConfig, read without its arrays (a training run: its newest step's).

  `param_dtype` / `dtype` override an HF config.json's dtypes.
  """
  path, k = _source(source, param_dtype, dtype)
  if k == HF:
    return hf.model_config_from_hf(hf.read_config(path), param_dtype=param_dtype, dtype=dtype)
  if k == PARAMS_CHECKPOINT:
    return ModelConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
  return ModelConfig.from_dict(checkpoint.read_config(str(path))["model"])


def load(source: str | Path, mesh: Mesh | None = None, rules: Rules | None = None, *,
         param_dtype: str | None = None, dtype: str | None = None
         ) -> tuple[Params, ModelConfig]:
  """(params on `shardings(cfg, mesh, rules)`, ModelConfig) from any `kind` of source.

  Without a mesh the arrays land on local device 0. Without rules a training run's
  arrays follow the rules it was saved with, other kinds `sharding.DEFAULT_RULES`.
  `param_dtype` / `dtype`: as in `model_config`.
  """
  t0 = time.perf_counter()
  path, k = _source(source, param_dtype, dtype)
  mesh = mesh or sharding.make_mesh({"data": 1}, jax.local_devices()[:1])
  if k == TRAINING:
    def target(saved: dict) -> Params:
      return _target(ModelConfig.from_dict(saved["model"]), mesh,
                     _saved_rules(saved) if rules is None else rules)
    params, saved = checkpoint.read_params(str(path), target)
    cfg = ModelConfig.from_dict(saved["model"])
  else:
    cfg = model_config(path, param_dtype=param_dtype, dtype=dtype)
    rules = sharding.DEFAULT_RULES if rules is None else rules
    if k == HF:  # safetensors opens OS files: a bucket dir is downloaded first
      params = hf.load_hf_params(storage.local_dir(path), cfg, shardings(cfg, mesh, rules))
    else:
      with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(checkpoint.orbax_path(str(path)) / PARAMS_DIR,
                               _target(cfg, mesh, rules))
  log.info("loaded %s (%s, %s, %.0fM params) in %.1fs", source, k, cfg.arch,
           cfg.num_params() / 1e6, time.perf_counter() - t0)
  return params, cfg


def tokenizer_dir(source: str | Path) -> epath.Path | None:
  """Where `source` keeps tokenizer files (an HF dir itself, a params checkpoint's
  tokenizer/), or None: a training run keeps none."""
  path = epath.Path(source)
  d = {HF: path, PARAMS_CHECKPOINT: path / TOKENIZER_DIR}.get(kind(path))
  return d if d is not None and has_tokenizer(d) else None


def save(ckpt_dir: str | Path, params: Params, model_cfg: ModelConfig,
         tokenizer_dir: str | Path | None = None) -> epath.Path:
  """Writes a params checkpoint; every process calls it and writes its own shards."""
  ckpt_dir = storage.path(ckpt_dir)
  if jax.process_index() == 0:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / CONFIG_FILE).write_text(json.dumps(model_cfg.to_dict(), indent=2) + "\n")
    if tokenizer_dir is not None:
      copy_tokenizer_files(tokenizer_dir, ckpt_dir / TOKENIZER_DIR)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(ckpt_dir / PARAMS_DIR, params, force=True)
    ckptr.wait_until_finished()
  return ckpt_dir


def _source(source: str | Path, param_dtype: str | None,
            dtype: str | None) -> tuple[epath.Path, str]:
  """`source` as a path, and its kind; only an HF config.json's dtypes can be overridden,
  the other kinds store a ModelConfig of their own."""
  path = epath.Path(source)
  k = kind(path)
  if k != HF and (param_dtype or dtype):
    raise ValueError(f"{source}: param_dtype/dtype apply to Hugging Face dirs, not a {k}")
  return path, k


def _target(cfg: ModelConfig, mesh: Mesh, rules: Rules) -> Params:
  """What an Orbax restore fills in: ShapeDtypeStructs carrying their shardings."""
  return checkpoint.abstract_like(abstract_params(cfg), shardings(cfg, mesh, rules))


def _saved_rules(saved: dict) -> Rules:
  """The sharding rules a training run was saved with (runs older than them: defaults)."""
  experiment = saved.get("experiment", {})
  if "sharding_rules" not in experiment:
    return sharding.DEFAULT_RULES
  return config_lib.sharding_rules(ml_collections.ConfigDict(experiment))
